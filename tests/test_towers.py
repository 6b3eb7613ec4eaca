"""The two towers on two processes (§3.2): the same numbers as one process running `paper`, on the CPU with gloo."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import photo_store

import alexnet.training
from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.errors import InputError
from alexnet.optim import PaperSGD
from alexnet.record import NetworkRecord, build_model
from alexnet.towers import Pair, Tower, place
from alexnet.training import train

CLASSES = 7  # odd: tower 0 holds 4 of fc8's outputs, tower 1 three


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of real photos: 4 classes, 96 training and 24 validation images."""
    return photo_store(tmp_path_factory, train=24, val=6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_step(model: torch.nn.Module, batch: Path) -> tuple[torch.Tensor, torch.Tensor, PaperSGD]:
    """Logits and loss of a batch, with dropout drawn from seed 1, then the gradients and one step of §5's rule."""
    x, y = torch.load(batch)
    torch.manual_seed(1)
    logits = model(x.contiguous(memory_format=torch.channels_last))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer = PaperSGD(model.parameters(), lr=0.01)
    optimizer.step()
    return logits.detach(), loss.detach(), optimizer


def whole_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(NetworkRecord.of("paper", CLASSES, width=0.25)).to(memory_format=torch.channels_last)


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference, relative to the largest value of `b`."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def pair_worker(rank: int, folder: Path) -> None:
    """One tower's step, compared on the spot with its rows of one process's (to keep the files small)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        tower = Tower(whole_network(), place("paper", rank, 2))
        logits, loss, optimizer = one_step(tower, folder / "batch.pt")
        model, state = tower.whole_state(optimizer)
        fresh = Tower(whole_network(), place("paper", rank, 2))
        fresh_optimizer = PaperSGD(fresh.parameters())
        fresh.load_whole_state(fresh_optimizer, model, state)
        whole = whole_network()
        whole_logits, whole_loss, whole_optimizer = one_step(whole, folder / "batch.pt")
        rows = {name: p.grad.tensor_split(2)[rank] for name, p in whole.named_parameters()}
        velocity = whole_optimizer.state_dict()["state"]
        torch.save({
            "logits": error(logits, whole_logits), "loss": error(loss, whole_loss),
            "grads": {name: error(p.grad, rows[name]) for name, p in tower.named_parameters()},
            "model": {name: error(model[name], value) for name, value in whole.state_dict().items()},
            "velocity": [error(state["state"][i]["velocity"], entry["velocity"]) for i, entry in velocity.items()],
            "groups": state["param_groups"] == whole_optimizer.state_dict()["param_groups"],
            "keys": list(model) == list(whole.state_dict()),
            "reloaded": all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                              tower.state_dict().values(), strict=True))
            and all(torch.equal(fresh_optimizer.state[a]["velocity"], optimizer.state[b]["velocity"])
                    for a, b in zip(fresh.parameters(), tower.parameters(), strict=True)),
        }, folder / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_pair_computes_what_one_process_does(tmp_path):
    g = torch.Generator().manual_seed(2)
    torch.save((torch.randn(4, 3, 224, 224, generator=g), torch.randint(CLASSES, (4,), generator=g)),
               tmp_path / "batch.pt")
    mp.spawn(pair_worker, (tmp_path,), nprocs=2)
    for rank in (0, 1):
        found = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert found["logits"] < 1e-5 and found["loss"] < 1e-6  # both hold the whole logits and the same loss
        for name, err in found["grads"].items():  # each tower's rows of every gradient (dropout on)
            assert err < 1e-4, (rank, name, err)
        # the whole network's state after the step, assembled from the halves, is one process's
        assert found["keys"] and found["groups"] and found["reloaded"]
        assert max(found["model"].values()) < 1e-5 and max(found["velocity"]) < 1e-4


def config(store: Path, tmp_path: Path, **kw) -> TrainConfig:
    defaults = {"data": str(store), "epochs": 2, "batch_size": 32, "out": str(tmp_path), "progress": False,
                "save_every": 0.0, "lr": 0.01, "precision": "fp32", "max_steps": 3,
                "width": 0.25}  # a quarter of the width: the same layers split, in a third to a half of the time
    return TrainConfig(**{**defaults, **kw})


def recording(path: Path):
    """Trainer._read (called once a step on the CPU), appending each step's mean loss to `path`, a JSON list."""
    read = alexnet.training.Trainer._read

    def recorded(self, unread, steps):
        loss = read(self, unread, steps)
        if self.rank == 0:
            path.write_text(json.dumps([*json.loads(path.read_text()), loss] if path.exists() else [loss]))
        return loss

    return recorded


def run_worker(rank: int, world: int, port: int, cfg: TrainConfig, losses: Path) -> None:
    """`train(cfg)` as process `rank` of a torchrun of `world`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    alexnet.training.Trainer._read = recording(losses)
    train(cfg)


def towers(cfg: TrainConfig, losses: Path) -> None:
    mp.spawn(run_worker, (2, free_port(), cfg, losses), nprocs=2)


def test_a_pair_trains_as_one_process_step_by_step_and_either_resumes_the_other(store, tmp_path, monkeypatch):
    # 3 steps of 32 (the epoch, and its validation), dropout on
    monkeypatch.setattr(alexnet.training.Trainer, "_read", recording(tmp_path / "one.json"))
    # every step clipped (the gradient is longer than 0.5): a pair scales by the whole network's norm
    train(config(store, tmp_path, name="one", clip=0.5))
    towers(config(store, tmp_path, name="towers", parallel="towers", clip=0.5), tmp_path / "towers.json")
    one, pair = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "towers"))
    assert len(pair) == 3 and len(set(one)) == 3  # the steps differ: the comparison is not of one number
    assert pair == pytest.approx(one, rel=1e-5)
    # one checkpoint of the whole network, as one process writes it, read by what reads those
    a, b = (checkpoint.load(tmp_path / name / "last.pt") for name in ("one", "towers"))
    assert list(a["model"]) == list(b["model"]) and b["config"]["parallel"] == "towers"
    torch.manual_seed(0)  # the runs' initial weights: the trainer seeds, then builds
    init = build_model(NetworkRecord.of("paper", 4, width=0.25), "centered").state_dict()
    for name, value in a["model"].items():
        moved = value - init[name]
        assert 0 < moved.abs().max() < 5e-3, name  # those are the initial weights: three steps move them little
        # float32 sums in another order (the towers' split layers, gloo's sums) differ by about a thousandth of
        # what the three steps moved the weights (measured); a wrong gradient differs by as much as the move
        assert (b["model"][name] - value).norm() <= 1e-2 * moved.norm(), name
    checkpoint.model_from(b)
    rows = [json.loads((tmp_path / name / "metrics.jsonl").read_text()) for name in ("one", "towers")]
    assert rows[1]["val_images"] == rows[0]["val_images"] == 24  # each validation image counted once
    for key in ("train_loss", "val_loss", "val_top1", "val_top5"):  # from those weights: measured up to 1.5e-5 apart
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-4), key  # with AVX2 kernels (AMD EPYC)
    # each resumes in the other mode (one step of the next epoch), and the two make the same step
    train(config(store, tmp_path, resume=str(tmp_path / "towers"), max_steps=4, parallel="data"))
    towers(config(store, tmp_path, resume=str(tmp_path / "one"), max_steps=4, parallel="towers"),
           tmp_path / "resumed.json")
    after_towers = json.loads((tmp_path / "one.json").read_text())[3:]
    assert len(after_towers) == 1 and after_towers != pytest.approx(one[-1:], rel=1e-3)
    assert json.loads((tmp_path / "resumed.json").read_text()) == pytest.approx(after_towers, rel=1e-4)


def test_two_pairs_with_64_each_equal_one_process_with_128(store, tmp_path):
    common = ["train", "--data", str(store), "--epochs", "1", "--batch-size", "128", "--max-steps", "1",
              "--dropout", "0", "--no-progress", "--out", str(tmp_path), "--lr", "0.05", "--precision", "fp32",
              "--width", "0.25"]
    train(config(store, tmp_path, name="one", epochs=1, batch_size=128, max_steps=1, dropout=0.0, lr=0.05))
    # 96 training images: one step of the whole set, 48 + 48 over two pairs, each of two towers
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
                             "--master_port", str(free_port()), "-m", "alexnet", *common, "--name", "towers",
                             "--parallel", "towers"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "4 processes in 2 pairs of towers" in result.stdout
    wa = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    wb = torch.load(tmp_path / "towers" / "last.pt", weights_only=True)
    assert wa["total_steps"] == wb["total_steps"] == 1 and wb["model"].keys() == wa["model"].keys()
    for k in wa["model"]:
        assert torch.allclose(wa["model"][k], wb["model"][k], atol=1e-5, rtol=1e-4), k
    # every validation image counted once: 24 images over 2 pairs
    val = [json.loads((tmp_path / name / "metrics.jsonl").read_text())["val_images"] for name in ("one", "towers")]
    assert val == [24, 24]


# A dropout that lays its draws out unlike bernoulli_ (column by column), as CUDA's fused dropout kernel does,
# and a torchrun script that trains under it
DEVICE_DROPOUT = """
import torch

def dropout(input, p=0.5, training=True, inplace=False):
    if not training or p == 0:
        return input
    keep = torch.rand(input.shape[::-1]).T < 1 - p
    return input * keep / (1 - p)
"""
UNDER_DEVICE_DROPOUT = DEVICE_DROPOUT + """
import sys
import torch.nn.functional
from alexnet.cli import main

torch.nn.functional.dropout = dropout
main(sys.argv[1:])
"""


def test_a_pair_from_the_command_line_trains_one_process_weights_whatever_the_dropout_kernel(store, tmp_path,
                                                                                              monkeypatch):
    # dropout on: a pair's mask is one process's only where it is drawn as one process draws it
    common = ["train", "--data", str(store), "--epochs", "1", "--batch-size", "8", "--max-steps", "2", "--clip", "0",
              "--precision", "fp32", "--width", "0.25", "--no-progress", "--out", str(tmp_path)]
    kernel: dict = {}
    exec(DEVICE_DROPOUT, kernel)
    monkeypatch.setattr(F, "dropout", kernel["dropout"])
    main([*common, "--name", "one"])
    script = tmp_path / "under_device_dropout.py"
    script.write_text(UNDER_DEVICE_DROPOUT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), str(script), *common, "--name", "pair",
                             "--parallel", "towers"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    one, pair = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in ("one", "pair"))
    assert one["fc8.weight"].abs().max() > 1e-4  # fc8 starts at 0: what it moved by depends on the masks
    for name, value in one.items():  # float32 sums in another order differ by about 1e-9
        assert (pair[name] - value).abs().max() < 1e-6, name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here"))])
def test_each_tower_takes_its_half_of_the_mask_one_process_draws(device):
    # the towers' dropout communicates nothing: a tower built without process groups draws its own half
    network = build_model(NetworkRecord.of("paper", CLASSES, width=0.125))
    towers = [Tower(network, Pair(tower, 0, 1, None, None)).train() for tower in (0, 1)]
    x = torch.rand(8, 64, device=device) + 0.5  # a dropped unit is the only 0
    torch.manual_seed(0)
    whole = torch.nn.Dropout(0.5)(x)
    halves = []
    for tower, half in zip(towers, x.tensor_split(2, 1), strict=True):
        torch.manual_seed(0)  # the stream both towers share
        halves.append(tower._dropout(half))
    assert torch.equal(torch.cat(halves, 1), whole)


@pytest.mark.parametrize(("arch", "world", "message"), [
    ("owt", 2, "splits the two-tower network (--arch paper), not 'owt'"),
    ("paper", 3, "needs an even number of processes"),
])
def test_a_layout_that_has_no_pairs_is_refused(arch, world, message):
    with pytest.raises(InputError, match=re.escape(message)):
        place(arch, 0, world)


def test_towers_in_one_process_is_one_line_and_leaves_no_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--parallel", "towers", "--out", str(tmp_path / "runs")])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--parallel towers needs an even number of processes" in lines[0]
    assert not (tmp_path / "runs").exists()
