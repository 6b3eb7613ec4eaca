import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_when, photo_folder
from PIL import Image

import alexnet.train
from alexnet import checkpoint
from alexnet.data.store import prepare
from alexnet.train import DivergedError, TrainConfig, train


def alexnet_cmd(*args: str, world: int = 1) -> list[str]:
    if world == 1:
        return [sys.executable, "-m", "alexnet", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
            str(29500 + os.getpid() % 1000), "-m", "alexnet", *args]


def run(*args: str, world: int = 1, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1" if world > 1 else os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(alexnet_cmd(*args, world=world), capture_output=True, text=True, timeout=600, env=env,
                          **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory, request):
    """A store of real photos: 4 classes, 96 training and 21 validation images."""
    root = photo_folder(tmp_path_factory.mktemp("photos"), train=24, val=6)
    for f in sorted((root / "val" / sorted(os.listdir(root / "val"))[0]).iterdir())[3:]:
        f.unlink()  # 21 validation images: a count that splits unevenly over processes and batches
    return prepare(root, tmp_path_factory.mktemp("store") / "store", workers=2, progress=False).path


def config(store: Path, tmp_path: Path, **kw) -> TrainConfig:
    defaults = {"data": str(store), "epochs": 2, "batch_size": 16, "out": str(tmp_path), "name": "run",
                "progress": False, "save_every": 0.0, "lr": 0.01}
    return TrainConfig(**{**defaults, **kw})


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_few_steps_on_real_photos_lower_the_loss(store, tmp_path):
    run_dir = train(config(store, tmp_path, epochs=6, dropout=0.0, batch_size=32))
    rows = metrics(run_dir)
    assert len(rows) == 6
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    for name in ("config.json", "metrics.csv", "curves.png", "last.pt", "best.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir())
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 7
    state = torch.load(run_dir / "last.pt", weights_only=True)  # nothing unpickled as arbitrary objects
    assert state["epoch"] == 6 and state["arch"] == "paper" and len(state["classes"]) == 4


def test_resume_after_kill_mid_epoch_equals_an_uninterrupted_run(store, tmp_path):
    args = ["train", "--data", str(store), "--epochs", "2", "--batch-size", "8", "--lr", "0.001", "--no-progress",
            "--out", str(tmp_path)]
    straight = run(*args, "--name", "straight", "--save-every", "0")
    assert straight.returncode == 0, straight.stderr
    hints = straight.stdout[straight.stdout.index("next:\n"):].splitlines()[1:]
    assert f"train --resume {tmp_path / 'straight'} --epochs N" in straight.stdout
    assert len({line.rindex("   ") for line in hints}) == 1  # what each command does, in one column
    # the same run, killed (SIGKILL) once a mid-epoch checkpoint is on disk, then resumed
    kill_when("alexnet.checkpoint", "save", "args[1]['step'] > 0", *args, "--name", "killed", "--save-every", "0.0001")
    last = tmp_path / "killed" / "last.pt"
    stopped = torch.load(last, weights_only=True)
    assert stopped["epoch"] == 0 and 1 <= stopped["step"] < 12, "the kill should land mid-epoch"
    resumed = run("train", "--resume", str(tmp_path / "killed"), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "killed")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["val_top1"] for r in a] == [r["val_top1"] for r in b]
    wa = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_processes_with_64_each_equal_one_with_128(store, tmp_path):
    common = ["train", "--data", str(store), "--epochs", "1", "--batch-size", "128", "--max-steps", "1",
              "--dropout", "0", "--no-progress", "--out", str(tmp_path), "--lr", "0.05"]
    # 96 training images: one step of the whole set, split 48 + 48 over two processes
    one, two = run(*common, "--name", "one"), run(*common, "--name", "two", world=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    wa = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    start = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert start["total_steps"] == 1
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k
    # every validation image counted exactly once under DDP: 21 images over 2 processes
    ra, rb = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert ra[0]["val_images"] == rb[0]["val_images"] == 21
    assert ra[0]["val_top1"] == pytest.approx(rb[0]["val_top1"], abs=1 / 21 + 1e-9)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = alexnet.train.F.cross_entropy

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > 8 else loss  # epoch 1 has 6 steps; epoch 2 goes bad

    monkeypatch.setattr(alexnet.train.F, "cross_entropy", poisoned)
    with pytest.raises(DivergedError, match="epoch 2, step 3.*last.pt"):
        train(config(store, tmp_path, epochs=3))
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_cli_reports_divergence_in_one_line(store, tmp_path):
    result = run("train", "--data", str(store), "--lr", "1e8", "--epochs", "1", "--batch-size", "16",
                 "--no-progress", "--out", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("alexnet train: stopped: the loss became")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("problem", ["missing", "empty class", "no val"])
def test_bad_data_is_one_line_error(store, tmp_path, problem):
    data = tmp_path / "data"
    if problem != "missing":
        for folder in ("train/a", "train/b", "val/a", "val/b"):
            (data / folder).mkdir(parents=True)
        Image.new("RGB", (300, 300)).save(data / "train" / "a" / "x.jpg")
        Image.new("RGB", (300, 300)).save(data / "val" / "a" / "x.jpg")
        Image.new("RGB", (300, 300)).save(data / "val" / "b" / "x.jpg")
    if problem == "no val":
        Image.new("RGB", (300, 300)).save(data / "train" / "b" / "y.jpg")
        shutil.rmtree(data / "val")
    result = run("train", "--data", str(data), "--no-progress", "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("alexnet train: error:")
    assert {"missing": "not found", "empty class": "empty class folder", "no val": "no validation"}[problem] in line[0]


def test_data_order_and_augmentation_are_keyed_so_resume_can_replay_them(store):
    from alexnet.data.loader import Loader
    from alexnet.data.store import Store

    split = Store(store).split("train")
    loader = Loader(split, 16, shuffle=True, seed=3)
    whole = [idx for _, _, idx in loader.epoch(1)]
    assert [idx.tolist() for _, _, idx in loader.epoch(1, start=2)] == [i.tolist() for i in whole[2:]]
    assert sorted(np.concatenate(whole).tolist()) == list(range(96))
