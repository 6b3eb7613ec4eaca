import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_when, one_line_error, photo_folder
from fastapi.testclient import TestClient
from PIL import Image

import alexnet.features
from alexnet import checkpoint
from alexnet.cli import _parser, main
from alexnet.config import TrainConfig
from alexnet.data.augment import center_crop
from alexnet.data.folders import preprocess
from alexnet.data.store import Store, prepare
from alexnet.draw import LINE, shown
from alexnet.features import Features, extract_features
from alexnet.figures import BARS, CAPTION
from alexnet.inference import load_network
from alexnet.neighbors import nearest, open_features
from alexnet.serve import Predictor, make_app
from alexnet.training import Trainer, open_data

RED = (230, 85, 13)  # figures.CORRECT, #e6550d
WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos in ImageNet's folder layout: 4 classes, 10 training and 2 validation images each."""
    return photo_folder(tmp_path_factory.mktemp("photos"), train=10, val=2)


@pytest.fixture(scope="module")
def store(photos, tmp_path_factory):
    return prepare(photos, tmp_path_factory.mktemp("store") / "store", workers=2, progress=False).path


@pytest.fixture(scope="module")
def ckpts(store, tmp_path_factory):
    """Freshly initialized networks saved as real checkpoints: two `paper` (seeds 1, 2) and one `owt`."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, kw in (("paper", {"seed": 1}), ("other", {"seed": 2}), ("owt", {"arch": "owt"})):
        cfg = TrainConfig(data=str(store), epochs=1, progress=False, **kw)
        trainer = Trainer(cfg, open_data(cfg), out)
        paths[name] = out / f"{name}.pt"
        checkpoint.save(paths[name], trainer.snapshot())
    yield paths
    shutil.rmtree(out)  # about 700 MB: freed when the module is done, not at the end of the session


@pytest.fixture(scope="module")
def features(store, ckpts, tmp_path_factory):
    """The fc7 features of the training split (40 images), extracted in batches of 7 (the last one short)."""
    out = tmp_path_factory.mktemp("features") / "train"
    extract_features(str(ckpts["paper"]), str(store), out, "train", batch_size=7, precision="fp32", progress=False)
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=300)


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def crop_of(image: str | Path, crop: int = 224) -> np.ndarray:
    mid = (256 - crop) // 2
    return preprocess(image)[mid:mid + crop, mid:mid + crop]


def fc7(path: Path, pixels: np.ndarray) -> torch.Tensor:
    net = load_network(str(path), "cpu", "fp32")  # as the commands set a checkpoint up
    with torch.no_grad():
        return net.model.forward_fc7(center_crop(torch.from_numpy(pixels), net.recipe, net.crop))


def brute_force(features: np.ndarray, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distance at once, in float64, without the matrix-product shortcut."""
    d = torch.cdist(queries.double(), torch.from_numpy(np.asarray(features, np.float64)),
                    compute_mode="donot_use_mm_for_euclid_dist")
    values, indices = d.topk(k, dim=1, largest=False)
    return values.numpy(), indices.numpy()


def test_filters_draws_each_kernel_min_max_scaled_in_one_block_per_tower(ckpts, tmp_path):
    result = cli("filters", str(ckpts["paper"]), "--out", str(tmp_path / "conv1.png"), "--zoom", "2", "--gap", "3")
    assert result.returncode == 0, result.stderr
    image = png(tmp_path / "conv1.png")
    # margin 8, two towers of 48 kernels in 3 rows of 16, each under a 20-pixel label; tiles 22×22, 3 apart
    block = 20 + 3 * 22 + 2 * 3
    assert image.shape == (8 + block + 8 + block + 8, 8 + 16 * 22 + 15 * 3 + 8, 3)
    weights = checkpoint.load(ckpts["paper"])["model"]["conv1.weight"]
    for n, kernel in enumerate(weights):
        tower, i = divmod(n, 48)
        top = 8 + tower * (block + 8) + 20 + (i // 16) * 25
        left = 8 + (i % 16) * 25
        k = kernel.double().numpy().transpose(1, 2, 0)
        expected = np.rint((k - k.min()) / (k.max() - k.min()) * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
        assert np.array_equal(image[top:top + 22, left:left + 22], expected), n
        assert (image[top:top + 22, left + 22:left + 25] == 255).all()  # a white gap to the right
    # one tower (owt: 64 kernels) makes one block of 4 rows
    result = cli("filters", str(ckpts["owt"]), "--out", str(tmp_path / "owt.png"))
    assert result.returncode == 0, result.stderr
    block = 20 + 4 * 44 + 3 * 2
    assert png(tmp_path / "owt.png").shape == (8 + block + 8, 8 + 16 * 44 + 15 * 2 + 8, 3)


def test_predict_plot_shows_centre_crops_and_top5_bars_with_the_true_class_in_red(photos, ckpts, tmp_path):
    known = sorted((photos / "val").glob("*/*.JPEG"))[::3][:3]
    unknown = tmp_path / "misc" / "mystery.JPEG"  # a folder that names no class
    unknown.parent.mkdir()
    shutil.copy(known[0], unknown)
    images = [*map(str, known), str(unknown)]
    result = cli("predict", str(ckpts["paper"]), *images, "--crops", "1", "--json", "--plot", str(tmp_path / "p.png"),
                 "--plot-columns", "3")
    assert result.returncode == 0, result.stderr
    plain = cli("predict", str(ckpts["paper"]), *images, "--crops", "1", "--json")
    assert json.loads(result.stdout) == json.loads(plain.stdout)  # --plot leaves the printed result alone
    image = png(tmp_path / "p.png")
    panel = 224 + CAPTION + BARS
    assert image.shape == (8 + 2 * LINE + 2 * panel + 12 + 8, 8 + 3 * 224 + 2 * 12 + 8, 3)
    for n, path in enumerate(images):
        top, left = 8 + 2 * LINE + (n // 3) * (panel + 12), 8 + (n % 3) * (224 + 12)
        assert np.array_equal(image[top:top + 224, left:left + 224], crop_of(path)), path
        bars = image[top + 224 + 2 + CAPTION:top + panel, left:left + 224]
        red = (bars == RED).all(-1).sum()
        # four classes: the true class is always among the top 5 and its bar is red; no red without a class
        assert (red > 100) if path != str(unknown) else (red == 0), (path, red)


def test_features_are_fc7_of_the_centre_crops_with_labels_and_files(store, ckpts, features):
    f = Features(features)
    split = Store(store).split("train")
    assert f.features.shape == (40, 4096) and f.features.dtype == np.float32
    expected = fc7(ckpts["paper"], split.read(np.arange(40)))
    assert torch.allclose(torch.from_numpy(np.array(f.features)), expected, rtol=1e-5, atol=1e-5)
    assert (np.asarray(f.features) >= 0).all()  # after the ReLU
    assert np.array_equal(f.labels, split.labels) and f.files == [os.path.abspath(p) for p in split.files]
    assert f.meta["batch_size"] == 7 and f.bad == [] and f.names == split.names
    # a second run finds the work done
    assert extract_features(str(ckpts["paper"]), str(store), features, "train", precision="fp32",
                            progress=False) == features


def test_a_narrower_network_has_features_of_its_fc7_size_and_a_failed_first_batch_leaves_a_folder_a_rerun_finishes(
        store, tmp_path, monkeypatch):
    cfg = TrainConfig(data=str(store), epochs=1, width=0.125, progress=False)
    narrow = tmp_path / "narrow.pt"
    checkpoint.save(narrow, Trainer(cfg, open_data(cfg), tmp_path).snapshot())

    def out_of_memory(*args):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(alexnet.features, "fc7", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):
            extract_features(str(narrow), str(store), tmp_path / "f", "train", batch_size=40, precision="fp32",
                             progress=False)
    # the rerun, with a smaller batch, is not held to the batch size of a first batch that never finished
    f = Features(extract_features(str(narrow), str(store), tmp_path / "f", "train", batch_size=16,
                                  precision="fp32", progress=False))
    assert f.features.shape == (40, 512) and f.meta["dim"] == 512 and f.meta["batch_size"] == 16
    expected = fc7(narrow, Store(store).split("train").read(np.arange(40)))
    assert torch.allclose(torch.from_numpy(np.array(f.features)), expected, rtol=1e-5, atol=1e-5)


def test_an_undecodable_image_in_a_folder_is_a_bad_row_that_no_search_returns(photos, ckpts, tmp_path):
    root = tmp_path / "photos"
    for folder in sorted((photos / "train").iterdir()):
        (root / "train" / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:2]:
            shutil.copy(f, root / "train" / folder.name / f.name)
    first = sorted((root / "train").iterdir())[0]
    (first / "zzz.JPEG").write_bytes(b"\xff\xd8 a broken JPEG")  # the third image of the first class
    out = extract_features(str(ckpts["paper"]), str(root), tmp_path / "f", batch_size=4, workers=0, progress=False)
    f = Features(out)
    assert len(f) == 9 and f.bad == [2] and f.files[2].endswith("zzz.JPEG")
    assert not np.asarray(f.features[2]).any() and np.asarray(f.features[[0, 1, 3]]).any(1).all()
    d, i = nearest(f.features, torch.from_numpy(np.array(f.features[:2])), 9, chunk=4, skip=f.bad)
    assert i.shape == (2, 8) and 2 not in i


def test_nearest_equals_brute_force_across_chunk_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    stored = (rng.random((1000, 64)) + 5).astype(np.float32)  # a large common offset: cancellation-prone
    queries = torch.from_numpy((rng.random((7, 64)) + 5).astype(np.float32))
    want_d, want_i = brute_force(stored, queries, 5)
    np.save(tmp_path / "f.npy", stored)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")  # read with file reads, not through the map
    for chunk in (1, 37, 999, 1000, 4096):
        for features in (stored, mapped):
            d, i = nearest(features, queries, 5, chunk=chunk)
            assert np.array_equal(i, want_i), chunk
            assert np.allclose(d, want_d, rtol=1e-12)
    # a slice of a memory map keeps its parent's file name: it must still be read as the slice
    d, i = nearest(mapped[100:600], queries, 5, chunk=64)
    assert np.array_equal(i, brute_force(stored[100:600], queries, 5)[1])
    # rows to skip for everyone, and one row left out for one query (itself)
    skip = [int(want_i[0, 0]), int(want_i[3, 1])]
    exclude = [-1, int(want_i[1, 0]), -1, -1, -1, -1, -1]
    d, i = nearest(stored, queries, 5, chunk=37, skip=skip, exclude=exclude)
    brute = torch.cdist(queries.double(), torch.from_numpy(stored).double(),
                        compute_mode="donot_use_mm_for_euclid_dist")
    brute[:, skip] = np.inf
    brute[1, exclude[1]] = np.inf
    assert np.array_equal(i, brute.topk(5, largest=False).indices.numpy())
    # fewer rows than k: all of them
    d, i = nearest(stored[:3], queries, 5, chunk=2)
    assert i.shape == (7, 3) and (np.sort(i, 1) == [0, 1, 2]).all()


def test_neighbors_command_matches_brute_force_and_draws_the_grid(photos, store, ckpts, features, tmp_path):
    queries = [str(p) for p in sorted((photos / "val").glob("*/*.JPEG"))[:2]]
    out = tmp_path / "grid.png"
    result = cli("neighbors", str(ckpts["paper"]), *queries, "--features", str(features), "--k", "3", "--out",
                 str(out), "--json", "--chunk", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    stored = Features(features)
    want_d, want_i = brute_force(stored.features, fc7(ckpts["paper"], np.stack([preprocess(q) for q in queries])), 3)
    for q, record in enumerate(report):
        assert record["query"] == queries[q]
        assert record["class"] == stored.names[stored.meta["classes"].index(Path(queries[q]).parent.name)]
        assert [n["row"] for n in record["neighbors"]] == want_i[q].tolist()
        assert np.allclose([n["distance"] for n in record["neighbors"]], want_d[q], rtol=1e-9)
        assert [n["file"] for n in record["neighbors"]] == [stored.files[i] for i in want_i[q]]
        assert [n["label"] for n in record["neighbors"]] == stored.labels[want_i[q]].tolist()
    # the grid: a row per query, the query then its 3 neighbors, each tile its centre crop
    image = png(out)
    assert image.shape == (8 + 2 * LINE + 2 * (224 + CAPTION) + 6 + 8, 8 + 4 * 224 + 3 * 6 + 8, 3)
    split = Store(store).split("train")
    for q in range(2):
        top = 8 + 2 * LINE + q * (224 + CAPTION + 6)
        assert np.array_equal(image[top:top + 224, 8:8 + 224], crop_of(queries[q]))
        for n, row in enumerate(want_i[q], 1):
            left = 8 + n * (224 + 6)
            tile = split.read(np.array([row]))[0, 16:240, 16:240]
            assert np.array_equal(image[top:top + 224, left:left + 224], tile)
    # text output; a query that is one of the stored images is not its own neighbor
    own = stored.files[5]
    result = cli("neighbors", str(ckpts["paper"]), own, "--features", str(features), "--k", "40")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(own) and len(lines) == 1 + 39 and own not in result.stdout.split("\n", 1)[1]


def test_resumed_extraction_after_kill_equals_an_uninterrupted_one(store, ckpts, features, tmp_path):
    args = [sys.executable, "-m", "alexnet", "features", str(ckpts["paper"]), "--data", str(store), "--batch-size",
            "2", "--precision", "fp32", "--no-progress", "--out"]
    straight = subprocess.run([*args, str(tmp_path / "straight")], capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / "killed"
    kill_when("alexnet.features", "write_json", "args[0].name == 'progress.json' and args[1]['rows'] >= 4",
              *args[3:], str(killed))
    assert 4 <= json.loads((killed / "progress.json").read_text())["rows"] < 40, "the kill should land mid-way"
    assert not (killed / "done.json").exists()
    with pytest.raises(ValueError, match="unfinished"):
        Features(killed)
    resumed = subprocess.run([*args, str(killed), "--batch-size", "8"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "with its batch size 2" in resumed.stdout
    a, b = Features(tmp_path / "straight"), Features(killed)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels) and a.files == b.files
    batched = torch.from_numpy(np.array(Features(features).features))  # batches of 7: equal up to rounding
    assert torch.allclose(torch.from_numpy(np.array(b.features)), batched, atol=1e-5)


def test_bad_inputs_are_one_line_errors(photos, store, ckpts, features, tmp_path, capsys):
    ckpt, other = str(ckpts["paper"]), str(ckpts["other"])
    query = str(sorted((photos / "val").glob("*/*.JPEG"))[0])
    one_line_error(capsys, ["filters", str(tmp_path / "missing.pt")], "no checkpoint at")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(ckpt).read_bytes()[:1000])
    one_line_error(capsys, ["filters", str(cut), "--out", str(tmp_path / "x.png")], "not a readable checkpoint")
    one_line_error(capsys, ["filters", ckpt, "--columns", "0", "--out", str(tmp_path / "x.png")],
                   "argument --columns: expected a whole number of at least 1, got 0")
    junk = tmp_path / "junk.JPEG"
    junk.write_text("not a photo")
    one_line_error(capsys, ["predict", ckpt, str(junk), "--plot", str(tmp_path / "p.png")], "junk.JPEG: not an image")
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "x.png").exists()
    one_line_error(capsys, ["features", ckpt, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f")],
                   "data folder not found")
    one_line_error(capsys, ["features", ckpt, "--data", str(store), "--split", "test", "--out", str(tmp_path / "f")],
                   "has no test split")
    one_line_error(capsys, ["features", ckpt, "--data", str(store), "--out", str(photos)], "not a features folder")
    one_line_error(capsys, ["features", other, "--data", str(store), "--out", str(features)], "holds other features")
    one_line_error(capsys, ["neighbors", ckpt, query, "--features", str(photos)], "not a features folder")
    one_line_error(capsys, ["neighbors", other, query, "--features", str(features)], "features of another network")
    one_line_error(capsys, ["neighbors", ckpt, str(junk), "--features", str(features)], "junk.JPEG: not an image")
    one_line_error(capsys, ["neighbors", ckpt, query, "--features", str(features), "--k", "0"],
                   "argument --k: expected a whole number of at least 1, got 0")
    old = Path(shutil.copytree(features, tmp_path / "old"))
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "format": "alexnet-features-1"}))  # files.txt, one name a line
    one_line_error(capsys, ["neighbors", ckpt, query, "--features", str(old)],
                   "holds features of format 'alexnet-features-1', this alexnet reads 'alexnet-features-2': run "
                   "`alexnet features` again into another folder")


def test_every_option_shows_its_default_in_help():
    """Each option's help ends with its default, or says the default itself; switches have none to show."""
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if not action.option_strings or action.dest == "help" or action.required or action.nargs == 0:
                continue
            helped = " ".join(action.help.split())
            assert helped in text, (name, action.dest)
            default = "none" if action.default is None else action.default
            if "default" not in helped:
                assert f"{helped} (default: {default})" in text, (name, action.dest)
            else:
                assert f"{helped} (default: {default})" not in text, (name, action.dest)


def test_a_caption_shows_a_path_inside_the_current_folder_relative_and_one_outside_by_its_last_parts(
        tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert shown(tmp_path / "project" / "runs" / "r1" / "best.pt") == "runs/r1/best.pt"
    assert shown(tmp_path / "acc" / "imagenette" / "best.pt") == "imagenette/best.pt"


def write_named(folder: Path, name: bytes, data: bytes) -> str:
    """Write `data` to the file `name` (any bytes the file system allows) in `folder`; its path as Python names it."""
    path = os.path.join(os.fsencode(folder), name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, data)
    os.close(fd)
    return os.fsdecode(path)


def test_any_file_name_keeps_its_row_through_prepare_features_and_neighbors(photos, ckpts, tmp_path, capsys,
                                                                            caplog):
    root = tmp_path / "photos"
    for folder in sorted((photos / "train").iterdir())[:2]:
        (root / "train" / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:2]:
            shutil.copy(f, root / "train" / folder.name / f.name)
    first = sorted((photos / "train").iterdir())[0]
    others = sorted(first.iterdir())[2:4]  # two more photos of the first class, under names hard to keep
    odd = [write_named(root / "train" / first.name, name, f.read_bytes())
           for name, f in zip((b"caf\xe9.jpg", b"new\nline.jpg"), others, strict=True)]
    broken = write_named(root / "train" / first.name, b"bro\nken\xff.jpg", b"not an image")
    split = prepare(root, tmp_path / "store", workers=2, progress=False).split("train")
    assert len(split) == 6 and set(odd) <= set(split.files)
    assert [r.getMessage() for r in caplog.records] == [f"skipped {broken!r}: not an image"]  # on one line
    for row, file in enumerate(split.files):  # each row holds the image its name says
        assert np.array_equal(split.read(np.array([row]))[0], preprocess(file))
    main(["features", str(ckpts["paper"]), "--data", str(tmp_path / "store"), "--out", str(tmp_path / "f"),
          "--precision", "fp32", "--no-progress"])
    f = Features(tmp_path / "f")
    assert f.files == split.files and f.labels.tolist() == split.labels.tolist()
    queries = [shutil.copy(o, tmp_path / f"query{i}.jpg") for i, o in enumerate(others)]  # the same photos
    capsys.readouterr()
    main(["neighbors", str(ckpts["paper"]), *map(str, queries), "--features", str(tmp_path / "f"), "--k", "2",
          "--json"])
    records = json.loads(capsys.readouterr().out)
    assert [r["neighbors"][0]["file"] for r in records] == odd  # the photo itself, by its own name
    assert [r["neighbors"][0]["row"] for r in records] == [split.files.index(o) for o in odd]
    main(["neighbors", str(ckpts["paper"]), *map(str, queries), "--features", str(tmp_path / "f"), "--k", "6",
          "--out", str(tmp_path / "grid.png")])  # printed and drawn
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * (1 + 6) + 1 and repr(odd[0]) in lines[1] and repr(odd[1]) in lines[8]
    found, net = open_features(str(tmp_path / "f"), str(ckpts["paper"]), "cpu")
    with TestClient(make_app(Predictor(net, found)), base_url="http://127.0.0.1:8000") as client:
        answer = client.post("/predict?crops=1&k=1", content=queries[0].read_bytes(),
                             headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text  # the name shown as UTF-8 can: the byte that is not, replaced
    assert answer.json()["neighbors"][0]["file"] == f"{first.name}/caf\ufffd.jpg"
