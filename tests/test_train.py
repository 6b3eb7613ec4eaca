import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_when, one_line_error, photo_folder
from PIL import Image

import alexnet.cli
import alexnet.config
import alexnet.few_classes
import alexnet.files
import alexnet.training
from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data.store import prepare
from alexnet.divergence import DeadGuard, DivergedError
from alexnet.errors import InputError
from alexnet.record import NetworkRecord, build_model
from alexnet.training import train


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
def photos(tmp_path_factory):
    """Real photos: 4 classes, 96 training and 21 validation images."""
    root = photo_folder(tmp_path_factory.mktemp("photos"), train=24, val=6)
    for f in sorted((root / "val" / sorted(os.listdir(root / "val"))[0]).iterdir())[3:]:
        f.unlink()  # 21 validation images: a count that splits unevenly over processes and batches
    return root


@pytest.fixture(scope="module")
def store(photos, tmp_path_factory):
    """The photos as a store of 256×256 images."""
    return prepare(photos, tmp_path_factory.mktemp("store") / "store", workers=2, progress=False).path


@pytest.fixture(scope="module")
def small(photos, tmp_path_factory):
    """The photos as a store of 72×72 images, for runs of the network at its smallest (SMALL): what a test of
    the loop's bookkeeping (resume, processes, NaNs, schedules) checks holds at any size, in a tenth of the time."""
    return prepare(photos, tmp_path_factory.mktemp("small") / "store", size=72, workers=2, progress=False).path


SMALL = ("--width", "0.25", "--crop", "64")  # a quarter of the kernels on 64×64 crops of 72×72 images


def config(store: Path, tmp_path: Path, **kw) -> TrainConfig:
    defaults = {"data": str(store), "epochs": 2, "batch_size": 16, "out": str(tmp_path), "name": "run",
                "progress": False, "save_every": 0.0, "lr": 0.01, "precision": "fp32"}
    return TrainConfig(**{**defaults, **kw})


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_defaults_learn_on_the_built_in_photos_within_two_epochs_and_fill_the_run_folder(tmp_path):
    # 14 steps of 128 on 10 classes: the training loss 0.1 below a constant guess's, ln 10, within two epochs
    run_dir = train(TrainConfig(epochs=2, out=str(tmp_path), name="run", progress=False, precision="fp32"))
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["init"], config["clip"], config["order"], config["lr"]) == ("centered", 5.0, "stratified", 0.01)
    rows = metrics(run_dir)
    assert min(row["train_loss"] for row in rows) < math.log(10) - 0.1, rows
    for name in ("config.json", "metrics.csv", "curves.png", "last.pt", "best.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir())
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    state = torch.load(run_dir / "last.pt", weights_only=True)  # nothing unpickled as arbitrary objects
    assert state["epoch"] == 2 and state["network"]["arch"] == "paper" and len(state["network"]["classes"]) == 10
    # the errors measured on these weights, the last epoch's: what an export records as the run's accuracy
    last = {"top1_error": rows[-1]["val_top1"], "top5_error": rows[-1]["val_top5"], "images": rows[-1]["val_images"]}
    assert {k: state["measured"][k] for k in last} == last and state["measured"]["data"].startswith("the built-in")


def test_resume_after_kill_mid_epoch_equals_an_uninterrupted_run(small, tmp_path):
    args = ["train", "--data", str(small), "--epochs", "2", "--batch-size", "8", "--lr", "0.001", "--no-progress",
            "--out", str(tmp_path), *SMALL]
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
    assert f"eval {tmp_path / 'killed' / 'best.pt'} --data {small} --crops 10" in resumed.stdout  # the run's data
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "killed")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["val_top1"] for r in a] == [r["val_top1"] for r in b]
    wa = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_processes_with_64_each_equal_one_with_128(small, tmp_path):
    common = ["train", "--data", str(small), "--epochs", "1", "--batch-size", "128", "--max-steps", "1",
              "--dropout", "0", "--no-progress", "--out", str(tmp_path), "--lr", "0.05", "--precision", "fp32",
              *SMALL]
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


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(small, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = alexnet.training.F.cross_entropy

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > 8 else loss  # epoch 1 has 6 steps; epoch 2 goes bad

    monkeypatch.setattr(alexnet.training.F, "cross_entropy", poisoned)
    with pytest.raises(DivergedError, match="epoch 2, step 3.*last.pt"):
        train(config(small, tmp_path, epochs=3, width=0.25, crop=64))
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_cli_reports_divergence_in_one_line(store, tmp_path):
    result = run("train", "--data", str(store), "--lr", "1e8", "--epochs", "1", "--batch-size", "16",
                 "--no-progress", "--out", str(tmp_path))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("alexnet train: stopped: the loss became") and "no checkpoint had been saved yet" in last
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


def test_the_order_option_reaches_the_training_batches(store, tmp_path):
    from alexnet.data.loader import epoch_order, stratified_order
    from alexnet.training import open_data

    for order in ("shuffled", "stratified"):
        data = open_data(config(store, tmp_path, order=order))
        labels = data.train.source.labels
        drawn = np.concatenate([idx for _, _, idx in data.train.epoch(1)])
        expected = stratified_order(labels, 0, 1) if order == "stratified" else epoch_order(len(labels), 0, 1, True)
        assert drawn.tolist() == expected.tolist()
    assert TrainConfig().order == "stratified"


def test_a_clipped_step_moves_the_weights_by_at_most_lr_times_the_clip(store, tmp_path):
    torch.manual_seed(0)
    before = build_model(NetworkRecord.of("paper", 4, width=0.25), "centered").state_dict()
    moved = {}
    for clip in (0.1, 0.0):  # §5's first step: w ← w − lr·(0.0005·w + g), g scaled to norm `clip` where longer
        run_dir = train(config(store, tmp_path, name=f"clip{clip}", clip=clip, max_steps=1, dropout=0.0, width=0.25,
                               init="centered"))
        after = checkpoint.load(run_dir / "last.pt")["model"]
        step = torch.cat([(after[k] - before[k] * (1 - 0.01 * 5e-4)).flatten() for k in before])
        moved[clip] = step.norm().item()
        assert json.loads((run_dir / "config.json").read_text())["clip"] == clip
    assert moved[0.1] == pytest.approx(0.01 * 0.1, rel=1e-2) and moved[0.0] > 5 * moved[0.1], moved


def test_few_classes_get_the_clip_and_a_run_from_before_the_options_resumes_as_it_ran(store, tmp_path, capsys):
    run_dir = train(config(store, tmp_path, epochs=1, max_steps=1, width=0.25))
    first = capsys.readouterr().out.splitlines()[0]
    assert "initialization centered (§5's dies on few classes" in first
    assert "gradients clipped at norm 5 (below 1000 classes; --clip 0 for §5's steps)" in first
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["init"], saved["clip"], saved["order"]) == ("centered", 5.0, "stratified")
    state = checkpoint.load(run_dir / "last.pt")
    for name in ("clip", "order"):  # a checkpoint saved before these options existed
        del state["config"][name]
    old = alexnet.config.saved_config(state)
    assert (old.clip, old.order) == (0.0, "shuffled")
    assert [alexnet.few_classes.default_clip(n)[0] for n in (2, 999, 1000, 21841)] == [5.0, 5.0, 0.0, 0.0]


@pytest.mark.parametrize(("option", "value", "accepts"), [
    ("--batch-size", "0", "a whole number of at least 1"), ("--epochs", "-3", "a whole number of at least 1"),
    ("--lr", "nan", "a finite number above 0"), ("--lr", "-0.1", "a finite number above 0"),
    ("--weight-decay", "inf", "a finite number of at least 0"), ("--dropout", "1", "up to, not including, 1"),
    ("--momentum", "-0.5", "from 0 up to"), ("--workers", "-1", "a whole number of at least 0"),
    ("--save-every", "-1", "a finite number of at least 0"), ("--max-steps", "0", "a whole number of at least 1"),
    ("--patience", "0", "a whole number of at least 1"), ("--batch-size", "x", "invalid int value"),
])
def test_a_bad_option_value_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, option, value, accepts):
    with pytest.raises(SystemExit) as stop:
        main(["train", option, value, "--out", str(tmp_path / "runs")])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"alexnet train: error: argument {option}: ") and accepts in lines[0]
    assert not (tmp_path / "runs").exists()
    if value != "x":
        with pytest.raises(InputError, match=f"^{option} "):  # the library checks the same declarations
            TrainConfig(**{option[2:].replace("-", "_"): float(value)})


def test_a_run_folder_that_exists_is_never_written_over(tmp_path, capsys):
    taken = tmp_path / "runs" / "taken"
    taken.mkdir(parents=True)
    (taken / "config.json").write_text("a finished run's")
    for argv, message in ((["--name", "taken"], f"{taken} exists already: --resume {taken} trains it on"),
                          (["--name", "../elsewhere"], "argument --name: expected a folder name, without /"),
                          (["--device", "bogus"], "--device bogus: expected auto, cpu, cuda or cuda:N")):
        with pytest.raises(SystemExit) as stop:
            main(["train", *argv, "--out", str(tmp_path / "runs")])
        assert stop.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["taken"] and not (tmp_path / "elsewhere").exists()
    assert [p.name for p in taken.iterdir()] == ["config.json"]
    assert (taken / "config.json").read_text() == "a finished run's"
    one_line_error(capsys, ["train", "--resume", str(taken)], f"{taken / 'config.json'} is not a run's configuration")


def test_a_run_stopped_within_its_first_epoch_points_to_the_checkpoint_it_has(store, tmp_path, capsys):
    main(["train", "--data", str(store), "--max-steps", "1", "--batch-size", "16", "--width", "0.25", "--no-progress",
          "--precision", "fp32", "--out", str(tmp_path), "--name", "short"])
    out = capsys.readouterr().out
    last = tmp_path / "short" / "last.pt"
    assert f"evaluating {last} on the validation images" in out and f"alexnet predict {last} IMAGE.jpg" in out
    assert last.is_file() and not (tmp_path / "short" / "best.pt").exists() and "best.pt" not in out


def test_a_crop_larger_than_the_stored_images_is_refused_before_a_run_folder_exists(tmp_path, capsys):
    store = prepare(photo_folder(tmp_path / "photos", 2, 1), tmp_path / "small", size=200, progress=False).path
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(store), "--out", str(tmp_path / "runs")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"alexnet train: error: --crop 224: larger than the 200×200 images of {store}"]
    assert not (tmp_path / "runs").exists()


def test_a_batch_that_does_not_split_over_the_processes_is_refused(store, tmp_path):
    result = run("train", "--data", str(store), "--batch-size", "15", "--no-progress", "--out", str(tmp_path / "r"),
                 world=2)
    assert result.returncode != 0 and "--batch-size 15: does not split evenly over 2 processes" in result.stderr
    assert not (tmp_path / "r").exists()


def test_a_resumed_cosine_run_given_more_epochs_trains_them(small, tmp_path):
    first = train(config(small, tmp_path, epochs=1, schedule="cosine", dropout=0.0, width=0.25, crop=64))
    before = checkpoint.load(first / "last.pt")["model"]
    with open(first / "metrics.jsonl", "a") as f:  # a run killed while it wrote a row leaves a torn line
        f.write('{"epoch": 2, "train_lo')
    train(TrainConfig(resume=str(first), epochs=3, progress=False))
    rows = metrics(first)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # re-planned over the new total: the added epochs are not at the old plan's end (lr 0)
    assert rows[1]["lr"] > 1e-3 and rows[2]["lr"] > 0 and rows[1]["train_loss"] != rows[0]["train_loss"]
    after = checkpoint.load(first / "last.pt")
    assert after["config"]["epochs"] == 3 and not torch.equal(after["model"]["fc8.weight"], before["fc8.weight"])


def test_a_resume_keeps_the_runs_recipe_and_says_what_it_may_change(small, tmp_path, capsys):
    run_dir = train(config(small, tmp_path, epochs=1, max_steps=1, width=0.25, crop=64))
    for args, message in ((["--arch", "owt"], "--arch owt: the run to resume has 'paper'"),
                          (["--data", str(tmp_path)], f"--data {tmp_path}: the run to resume trained on {small}"),
                          (["--lr", "0.1"], "--lr 0.1: the run to resume has 0.01"),
                          (["--epochs", "0"], "argument --epochs: expected a whole number of at least 1")):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--resume", str(run_dir), *args])
        assert stop.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    with pytest.raises(SystemExit) as stop:
        main(["train", "--resume", str(run_dir)])
    assert "--max-steps 1: the run has made 1 step already" in capsys.readouterr().err
    train(TrainConfig(resume=str(run_dir), max_steps=100, progress=False))  # the rest of the epoch
    with pytest.raises(SystemExit) as stop:
        main(["train", "--resume", str(run_dir)])
    assert "the run has trained all its 1 epoch; give --epochs N above 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["train", "--resume", str(run_dir), "--epochs", "1"])
    assert "--epochs 1: the run has trained 1 epoch already" in capsys.readouterr().err
    help_text = " ".join(subprocess.run(alexnet_cmd("train", "--help"), capture_output=True, text=True).stdout.split())
    assert "With --resume, a run keeps its own configuration; it may change --epochs," in help_text


def test_a_bug_keeps_its_traceback_and_an_input_error_shows_one_on_request(monkeypatch, capsys):
    def broken(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(alexnet.cli, "_summary", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["summary"])
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        main(["summary", "--image-size", "200"])
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(InputError, match="AlexNet expects images"):
        main(["--traceback", "summary", "--image-size", "200"])
    monkeypatch.setenv("ALEXNET_TRACEBACK", "1")
    with pytest.raises(InputError, match="AlexNet expects images"):
        main(["summary", "--image-size", "200"])


def test_the_dead_guard_fires_on_a_network_stuck_at_chance_after_it_moved_away():
    guard = DeadGuard(10, steps=30)  # arguments: the mean loss, the largest |loss - ln 10|, fc7's firing fraction
    assert not guard.dead(7.9, 5.6, 0.9, 1)  # the paper's initialization on 10 classes: 2.3 → 7.9 within steps
    assert not any(guard.dead(2.31, 0.01, 0.02, 1) for _ in range(29))  # back at ln 10, 2% of fc7 firing
    assert guard.dead(2.29, 0.01, 0.02, 1) and guard.flat == 30
    # a dead network's constant guess, which need not be the uniform one: a noisy loss, at chance or above
    guard = DeadGuard(4, steps=30)
    assert not guard.dead(21.8, 20.0, 0.5, 6)
    assert not any(guard.dead(loss, 0.2, 0.01, 1) for loss in (1.55, 1.28) * 14)
    assert not guard.dead(1.55, 0.2, 0.01, 1) and guard.dead(1.28, 0.2, 0.01, 1)
    # read back every 20 steps on a GPU: the counts come in blocks
    guard = DeadGuard(10, steps=30)
    assert not guard.dead(7.9, 5.6, 0.9, 20) and not guard.dead(2.30, 0.02, 0.03, 20)
    assert guard.dead(2.30, 0.02, 0.03, 20)


def test_the_dead_guard_leaves_a_slow_start_and_a_learning_network_alone():
    slow = DeadGuard(10, steps=30)  # a slow start: at ln 10 for epochs, then learning
    assert not any(slow.dead(2.30, 0.02, 0.02, 1) for _ in range(300))
    assert not any(slow.dead(2.30 - d, d, 1.0, 1) for d in (0.1, 0.2, 0.4, 0.8))
    learning = DeadGuard(3, steps=30)  # moved away by learning, its fc7 units firing
    assert not any(learning.dead(loss, abs(loss - 1.1), 0.99, 1) for loss in (0.8, 1.09) * 50)
    sparse = DeadGuard(3, steps=30)  # few units firing, but learning: its loss is well below chance
    assert not any(sparse.dead(loss, 0.5, 0.03, 1) for loss in (0.6, 1.1) * 50)
    # a step with fc7 firing starts the count again
    guard = DeadGuard(2, steps=30)
    guard.dead(1.7, 1.0, 0.5, 1)
    for _ in range(29):
        guard.dead(0.70, 0.01, 0.01, 1)
    assert not guard.dead(0.70, 0.01, 0.5, 1) and guard.flat == 0


def test_a_network_that_dies_stops_the_run_in_one_line_and_keeps_its_checkpoint(store, tmp_path):
    # §5's recipe on 4 classes, at half the width: it dies there as at the full width, in about a third of the time
    result = run("train", "--data", str(store), "--init", "paper", "--clip", "0", "--epochs", "30",
                 "--batch-size", "16", "--width", "0.5", "--no-progress", "--out", str(tmp_path), "--name", "dead")
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("alexnet train: stopped: the network died: for 30 steps")
    assert "Traceback" not in result.stderr
    assert "ln 4 = 1.386" in last and str(tmp_path / "dead" / "last.pt") in last and "try --init centered" in last
    assert 1 <= checkpoint.load(tmp_path / "dead" / "last.pt")["epoch"] < 30


def test_a_budget_fits_the_epochs_to_the_first_epochs_time(store, tmp_path):
    cfg = config(store, tmp_path, epochs=None, minutes=2.0, schedule="cosine")
    trainer = alexnet.training.Trainer(cfg, alexnet.training.open_data(cfg), tmp_path / "run")
    (tmp_path / "run").mkdir()
    trainer.started -= 30  # 30 s spent on the first epoch and what came before it
    trainer.epoch = 1  # as in the loop: the plan comes once the first epoch is counted (and saved)
    trainer.plan(epoch_seconds=10, validation_seconds=1)
    # 120 s - 30 s spent - 11 validation passes for the final evaluation = 79 s: 7 more epochs after the first
    assert trainer.epochs == trainer.schedule.epochs == 8 and trainer.planned
    # the plan is the run's state, which its checkpoints keep; the configuration stays as resolved (at most 90)
    assert trainer.snapshot()["planned_epochs"] == 8 and trainer.cfg.epochs == 90
    assert not (tmp_path / "run" / "config.json").exists()  # written once, when the run starts
    trainer.started -= 200  # the budget is spent: no more epochs, but never fewer than the one done
    trainer.plan(epoch_seconds=10, validation_seconds=1)
    assert trainer.epochs == 1


def test_a_budgeted_run_records_its_plan_and_a_resume_keeps_it(small, tmp_path, capsys):
    run_dir = train(config(small, tmp_path, epochs=None, minutes=0.1, width=0.25, crop=64))
    printed = capsys.readouterr().out
    saved = json.loads((run_dir / "config.json").read_text())
    state = checkpoint.load(run_dir / "last.pt")
    planned = state["planned_epochs"]
    assert "--minutes 0.1: " in printed and f"{planned} epoch" in printed
    assert saved["minutes"] == 0.1 and 1 <= planned == len(metrics(run_dir))
    assert state["planned"] and saved["epochs"] == state["config"]["epochs"] == 90  # the most it may train
    with pytest.raises(InputError, match=f"the run has trained all its {planned} epoch"):
        train(TrainConfig(resume=str(run_dir), progress=False))  # the plan is kept, not made again
    # a checkpoint without planned_epochs holds the plan in its configuration's epochs, and resumes by it
    del state["planned_epochs"]
    state["config"]["epochs"] = planned
    (tmp_path / "old").mkdir()
    checkpoint.save(tmp_path / "old" / "last.pt", state)
    with pytest.raises(InputError, match=f"the run has trained all its {planned} epoch"):
        train(TrainConfig(resume=str(tmp_path / "old"), progress=False))
    more = TrainConfig(resume=str(run_dir), epochs=planned + 2)
    assert alexnet.config.resume_config(more, state)[1] == planned + 2  # --epochs wins over the plan


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_status_1_and_leaves_no_part(store, tmp_path, capsys,
                                                                                           monkeypatch):
    class FullDisk(io.BufferedWriter):  # the disk fills up after the first megabyte of a checkpoint
        def write(self, data) -> int:
            if self.tell() + len(data) > 2**20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    def full_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        return FullDisk(f.detach()) if str(path).endswith(".pt.tmp") else f

    monkeypatch.setattr(alexnet.files, "open", full_open, raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(store), "--max-steps", "1", "--batch-size", "16", "--width", "0.25",
              "--no-progress", "--out", str(tmp_path), "--name", "full"])
    assert stop.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"alexnet train: failed: {tmp_path / 'full' / 'last.pt'}: No space left on device"], lines
    assert (tmp_path / "full" / "config.json").is_file() and not list((tmp_path / "full").glob("*.pt*"))
    monkeypatch.undo()  # room on the disk again: the run starts again
    main(["train", "--resume", str(tmp_path / "full")])
    assert (tmp_path / "full" / "last.pt").is_file()


def test_a_run_resumes_from_any_folder_and_from_its_store_moved_but_not_from_another(small, store, tmp_path, capsys,
                                                                                     monkeypatch):
    shutil.copytree(small, tmp_path / "here" / "store")
    monkeypatch.chdir(tmp_path / "here")  # the data given relative to where the run starts
    run_dir = train(config(Path("store"), tmp_path, epochs=2, max_steps=1, width=0.25, crop=64))
    assert json.loads((run_dir / "config.json").read_text())["data"] == str(tmp_path / "here" / "store")
    monkeypatch.chdir(tmp_path)  # elsewhere
    train(TrainConfig(resume=str(run_dir), max_steps=2, progress=False))
    (tmp_path / "here" / "store").rename(tmp_path / "moved")
    one_line_error(capsys, ["train", "--resume", str(run_dir), "--max-steps", "3"], "data folder not found")
    one_line_error(capsys, ["train", "--resume", str(run_dir), "--max-steps", "3", "--data", str(store)],
                   f"--data {store}: the run to resume trained on {tmp_path / 'here' / 'store'}, and this is another")
    main(["train", "--resume", str(run_dir), "--max-steps", "3", "--data", "moved"])
    state = checkpoint.load(run_dir / "last.pt")
    assert state["total_steps"] == 3 and state["config"]["data"] == str(tmp_path / "moved")


def test_a_folder_without_val_trains_with_a_held_out_share_that_eval_finds_again(photos, tmp_path, capsys):
    flat = photos / "train"  # class folders only
    argv = ["train", "--data", str(flat), "--max-steps", "1", "--batch-size", "8", "--width", "0.25",
            "--no-progress", "--precision", "fp32", "--out", str(tmp_path), "--name"]
    one_line_error(capsys, [*argv, "none"], "has no validation split (val/), which the recipe needs: --val-fraction")
    one_line_error(capsys, [*argv, "own", "--data", str(photos), "--val-fraction", "0.2"],
                   f"--val-fraction 0.2: {photos} has a validation split of its own")
    main([*argv, "held", "--val-fraction", "0.25"])
    assert json.loads((tmp_path / "held" / "config.json").read_text())["val_fraction"] == 0.25
    capsys.readouterr()
    main(["eval", str(tmp_path / "held" / "last.pt"), "--json"])  # the data set and its share, as recorded
    assert json.loads(capsys.readouterr().out)["images"] == 24  # a quarter of each class's 24 photos


def test_tensorboard_gets_the_steps_loss_and_rate_the_hyperparameters_and_conv1_each_epoch(small, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 96 images in batches of 4: 24 steps, so the step scalars come at step 20 and at the epoch's end
    run_dir = train(config(small, tmp_path, epochs=1, batch_size=4, width=0.25, crop=64))
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("step/train_loss")] == [20, 24]
    assert [e.value for e in events.Scalars("step/lr")] == pytest.approx([0.01, 0.01])
    # the mean of the logged steps' losses, weighted by their steps, is the epoch's training loss
    losses = [e.value for e in events.Scalars("step/train_loss")]
    assert (20 * losses[0] + 4 * losses[1]) / 24 == pytest.approx(metrics(run_dir)[0]["train_loss"], rel=1e-5)
    (image,) = events.Images("conv1")
    assert image.step == 1 and image.width > 100 and image.height > 50
    assert "config/text_summary" in tags["tensors"] and "_hparams_/experiment" in events.summary_metadata
