import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error, photo_store
from PIL import Image

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data.augment import center_crop, ten_crop
from alexnet.data.store import Store
from alexnet.evaluate import Errors, PerClass, evaluate, probabilities, wrong
from alexnet.inference import load_networks
from alexnet.training import Trainer, open_data


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return photo_store(tmp_path_factory, train=4, val=5)


@pytest.fixture(scope="module")
def checkpoints(store, tmp_path_factory):
    """Two freshly initialized networks saved as real checkpoints (different seeds), and a 10-class one."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (1, 2):
        cfg = TrainConfig(data=str(store), seed=seed, epochs=1, progress=False)
        trainer = Trainer(cfg, open_data(cfg), out)
        paths.append(out / f"net{seed}.pt")
        checkpoint.save(paths[-1], trainer.snapshot())
    cfg = TrainConfig(data=None, epochs=1, progress=False)
    trainer = Trainer(cfg, open_data(cfg), out)
    checkpoint.save(out / "ten_classes.pt", trainer.snapshot())
    yield paths, out / "ten_classes.pt"
    shutil.rmtree(out)  # about 700 MB: freed when the module is done, not at the end of the session


def cli(capsys, *args: str) -> str:
    """`alexnet ARGS` in this process, which must succeed: what it printed."""
    capsys.readouterr()
    main(list(args))
    return capsys.readouterr().out


def members(paths):
    return load_networks([str(p) for p in paths], "cpu", "fp32")


def test_ensemble_and_ten_crops_average_the_softmax_outputs(store, checkpoints):
    paths, _ = checkpoints
    nets = members(paths)
    images = torch.from_numpy(Store(store).split("val").read(np.arange(6)))
    with torch.no_grad():
        by_hand = sum(F.softmax(n.model(center_crop(images, n.recipe)), 1) for n in nets) / 2
        assert torch.allclose(probabilities(nets, images, crops=1), by_hand, atol=1e-6)
        views = ten_crop(images, nets[0].recipe)
        by_hand = sum(F.softmax(nets[0].model(v), 1) for v in views) / 10
        assert torch.allclose(probabilities(nets[:1], images, crops=10), by_hand, atol=1e-6)


def test_top_k_errors_count_correctly():
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05], [0.1, 0.5, 0.1, 0.1, 0.1, 0.1],
                          [0.01, 0.02, 0.03, 0.04, 0.4, 0.5]])
    assert wrong(probs, torch.tensor([0, 0, 0])) == (2, 1)  # 2nd: label 0 in top-5; 3rd: label 0 ranks last


def test_eval_command_counts_every_image_and_matches_the_library(store, checkpoints, capsys):
    paths, _ = checkpoints
    report = json.loads(cli(capsys, "eval", str(paths[0]), "--data", str(store), "--json"))
    split = Store(store).split("val")
    assert report["images"] == len(split) == 20
    from alexnet.data.loader import Loader

    errors = evaluate(members(paths[:1]), Loader(split, 7, shuffle=False).epoch(0))
    assert report["top1_error"] == pytest.approx(errors.top1) and report["top5_error"] == pytest.approx(errors.top5)
    assert json.loads(cli(capsys, "eval", str(paths[0]), "--json")) == report  # the data set it records
    assert "top-5 error 0.00% (of 4 classes, all are in the top 5) on 20 images" in cli(
        capsys, "eval", str(paths[0]), "--data", str(store))
    assert "classes" not in Errors(0.5, 0.25, 20, 10).line()
    assert "an ensemble of 2, ten crops" in cli(capsys, "eval", *map(str, paths), "--data", str(store), "--crops", "10")


def test_predict_prints_top5_names_with_probabilities(store, checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    image = Store(store).split("val").files[0]
    (entry,) = json.loads(cli(capsys, "predict", str(paths[0]), image, "--json"))
    probs = [c["probability"] for c in entry["top5"]]
    assert len(probs) == 4  # four classes in this set: the top-5 is all of them
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
    assert {c["class"] for c in entry["top5"]} == set(checkpoint.load(paths[0])["network"].names)
    text = cli(capsys, "predict", str(paths[0]), image, "--crops", "1").splitlines()
    assert text[0] == image and text[1].strip().endswith(entry["top5"][0]["class"])
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9\nnew.jpg"))  # not UTF-8, and a newline
    shutil.copy(image, odd)
    shown = subprocess.run([sys.executable, "-m", "alexnet", "predict", str(paths[0]), odd, "--crops", "1"],
                           capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=300)
    assert shown.returncode == 0 and shown.stdout.decode().splitlines()[0] == repr(odd), shown.stderr[-2000:]


def test_bad_inputs_are_one_line_errors(store, checkpoints, tmp_path, capsys):
    paths, ten = checkpoints
    one_line_error(capsys, ["eval", str(paths[0]), "--data", str(tmp_path / "nowhere")], "data folder not found")
    one_line_error(capsys, ["eval", str(ten), "--data", str(store)], "has 10 classes; the data has 4")
    state = checkpoint.load(paths[0])
    checkpoint.save(tmp_path / "four.pt", {k: v for k, v in state.items() if k not in ("format", "path", "config")})
    one_line_error(capsys, ["eval", str(tmp_path / "four.pt")],  # a network that records no data set
                   "four.pt has 4 classes; the built-in photos have 10; give --data")
    one_line_error(capsys, ["eval", str(paths[0]), str(ten), "--data", str(store)],
                   "an ensemble needs the same classes")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(paths[0].read_bytes()[: os.path.getsize(paths[0]) // 3])
    one_line_error(capsys, ["eval", str(cut), "--data", str(store)], "not a readable checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    one_line_error(capsys, ["predict", str(foreign), Store(store).split("val").files[0]], "not an alexnet checkpoint")
    state = checkpoint.load(paths[0])
    state["network"] = dataclasses.replace(state["network"], arch="owt", lrn="none")  # `paper`'s weights as another
    checkpoint.save(tmp_path / "mislabelled.pt", {k: v for k, v in state.items() if k not in ("format", "path")})
    one_line_error(capsys, ["eval", str(tmp_path / "mislabelled.pt"), "--data", str(store)],
                   "do not fit a 'owt' network")
    junk = tmp_path / "junk.JPEG"
    junk.write_text("not a photo")
    one_line_error(capsys, ["predict", str(paths[0]), str(junk)], "junk.JPEG")
    one_line_error(capsys, ["predict", str(paths[0]), str(tmp_path / "nope.jpg")], "nope.jpg: no such file")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["predict", str(paths[0]), str(tmp_path / "empty")], "empty: no image files in this folder")
    # the same through `python -m alexnet`, in a process of its own
    argv = ["eval", str(tmp_path / "missing.pt"), "--data", str(store)]
    result = subprocess.run([sys.executable, "-m", "alexnet", *argv], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "no checkpoint at" in lines[0], result.stderr


def test_a_reader_that_goes_away_stops_predict_quietly(store, checkpoints):
    """`alexnet predict ... | head`: the pipe closes before the output is written; no traceback."""
    paths, _ = checkpoints
    image = Store(store).split("val").files[0]
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "predict", str(paths[0]), image, "--crops", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `head` does once it has its lines, here before any
    errors = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=300) == 1 and errors == "", errors


def test_per_class_counts_agree_with_a_hand_count():
    # 3 classes; rows: the true class, columns: the top-1 class
    counts = PerClass(["a", "b", "c"], ["ant", "bee", "cat"], np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]]),
                      np.array([0, 1, 0]))
    a, b, c = counts.rows()
    assert (a["images"], a["predicted"], a["precision"], a["recall"], a["top1_error"], a["top5_error"]) == \
        (4, 3, 1.0, 0.75, 0.25, 0.0)
    assert (b["precision"], b["recall"], b["top1_error"], b["top5_error"]) == (2 / 3, 0.5, 0.5, 0.25)
    assert (c["images"], c["predicted"], c["precision"], c["recall"], c["top5_error"]) == (0, 2, 0.0, None, None)


def test_eval_per_class_writes_the_counts_of_the_evaluated_probabilities_and_the_confusion_matrix(
        store, checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    out = tmp_path / "per-class.csv"
    report = json.loads(cli(capsys, "eval", *map(str, paths), "--data", str(store), "--precision", "fp32", "--json",
                            "--per-class", str(out)))
    rows = list(csv.DictReader(out.open()))
    split = Store(store).split("val")
    # by hand: the ensemble's probabilities of every validation image, counted by class
    probs = probabilities(members(paths), torch.from_numpy(split.read(np.arange(len(split)))))
    labels, top = split.labels, probs.topk(4, dim=1).indices.numpy()
    names = checkpoint.load(paths[0])["network"].names
    for c, row in enumerate(rows):
        mine, called = labels == c, top[:, 0] == c
        assert (row["index"], row["name"], row["images"], row["predicted"]) == \
            (str(c), names[c], str(mine.sum()), str(called.sum()))
        assert float(row["recall"]) == pytest.approx((mine & called).sum() / mine.sum(), abs=1e-6)
        assert row["precision"] == "" if not called.any() else \
            float(row["precision"]) == pytest.approx((mine & called).sum() / called.sum(), abs=1e-6)
        assert float(row["top5_error"]) == 0  # 4 classes: every label is in the top 5
    assert sum((1 - float(r["recall"])) * int(r["images"]) for r in rows) / 20 == pytest.approx(report["top1_error"])
    assert report["confusion"] == str(out.with_suffix(".png"))
    assert Image.open(report["confusion"]).size[0] > 300
    one_line_error(capsys, ["eval", str(paths[0]), "--per-class", str(tmp_path / "table.txt")], "ending in .csv")


def test_predict_csv_walks_folders_writes_a_row_per_image_and_a_rerun_continues_a_torn_file(
        store, checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    files = Store(store).split("val").files
    photos = tmp_path / "photos"
    for i, where in enumerate(["", "a", "a/b", "a/b", "c"]):
        (photos / where).mkdir(parents=True, exist_ok=True)
        shutil.copy(files[i], photos / where / f"{i}.jpg")
    (photos / "a" / "broken.jpg").write_text("not a photo")
    (photos / "a" / "notes.txt").write_text("not an image's name")
    out = tmp_path / "out.csv"
    argv = ["predict", str(paths[0]), str(photos), "--csv", str(out), "--batch-size", "2", "--crops", "1",
            "--precision", "fp32"]
    assert "wrote 6 rows" in cli(capsys, *argv)
    whole = out.read_text()
    rows = list(csv.reader(whole.splitlines()))
    assert rows[0] == ["file", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3",
                       "class_4", "probability_4", "error"]
    found = sorted(str(p) for p in photos.rglob("*.jpg"))
    assert [row[0] for row in rows[1:]] == found  # every image once, the bad one too, and no other file
    broken = rows[1 + found.index(str(photos / "a" / "broken.jpg"))]
    assert broken[1:] == [""] * 8 + ["not an image"]
    (entry,) = json.loads(cli(capsys, "predict", str(paths[0]), found[-1], "--crops", "1", "--precision", "fp32",
                              "--json"))
    assert rows[-1][1:3] == [entry["top5"][0]["class"], f"{entry['top5'][0]['probability']:.6f}"]
    lines = whole.splitlines(keepends=True)
    out.write_text("".join(lines[:-2]) + lines[-2][:len(lines[-2]) // 2])  # killed while it wrote a row
    assert "wrote 2 rows to" in cli(capsys, *argv)  # the torn row again, then the last
    again = list(csv.reader(out.read_text().splitlines()))
    assert [row[0] for row in again] == [row[0] for row in rows] and [r[1::2] for r in again] == [r[1::2] for r in rows]
    assert "wrote 0 rows" in cli(capsys, *argv)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    one_line_error(capsys, [*argv[:3], "--csv", str(other), "--precision", "fp32"],
                   "not the CSV file of an `alexnet predict`")
    assert other.read_text() == "a,b\n1,2\n"
