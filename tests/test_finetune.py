"""Fine-tuning (`train --weights`): the network and preprocessing of the weights, fc8 replaced for other classes,
frozen layers, the loaded layers' share of the learning rate, the weights recorded, a resume that does not read
them again, and bad input in one line."""

import hashlib
import json
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import one_line_error, photo_folder

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data.store import prepare
from alexnet.export import TORCHVISION_STD, export, import_torchvision
from alexnet.finetune import source
from alexnet.model import LAYERS, OWTAlexNet
from alexnet.optim import set_rate
from alexnet.training import Trainer, open_data, train

SMALL = {"width": 0.25, "crop": 64}  # the network at its smallest, on 72×72 images (as test_train's SMALL)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos: 4 classes, 12 training and 3 validation images of each."""
    return photo_folder(tmp_path_factory.mktemp("photos"), train=12, val=3)


@pytest.fixture(scope="module")
def stores(photos, tmp_path_factory):
    """The photos as a store of 72×72 images (4 classes), and 3 of their classes as another."""
    root = tmp_path_factory.mktemp("stores")
    for split in ("train", "val"):
        for wnid in sorted(p.name for p in (photos / split).iterdir())[1:]:
            shutil.copytree(photos / split / wnid, root / "three" / split / wnid)
    return tuple(prepare(src, root / name, size=72, workers=2, progress=False).path
                 for src, name in ((photos, "four"), (root / "three", "three-store")))


@pytest.fixture(scope="module")
def weights(stores, tmp_path_factory):
    """A run of one epoch (6 steps) on the 4 classes: the weights fine-tuning starts from."""
    four, _ = stores
    return train(config(four, tmp_path_factory.mktemp("w"), name="w"))


def config(data, out, **kw) -> TrainConfig:
    defaults = {"data": str(data), "epochs": 1, "batch_size": 8, "out": str(out), "name": "ft", "progress": False,
                "save_every": 0.0, "precision": "fp32"}
    return TrainConfig(**{**defaults, **SMALL, **kw})


def trainer(cfg: TrainConfig) -> Trainer:
    """The Trainer of a run from --weights as it starts, before its first step."""
    cfg, start = source(cfg)
    return Trainer(cfg, open_data(cfg), cfg.out, start=start)


def layers(state: dict, names) -> dict:
    return {k: v for k, v in state["model"].items() if k.split(".")[0] in names}


@pytest.mark.parametrize("form", ["run folder", "weights file"])
def test_fine_tuning_keeps_the_weights_layers_and_replaces_fc8_for_other_classes(stores, weights, tmp_path, form,
                                                                                  capsys):
    _, three = stores
    w = weights
    if form == "weights file":
        w = tmp_path / "w.safetensors"
        export(weights / "best.pt", w)
    # given no --width nor --crop: the weights' network (width 0.25 on 64×64 crops)
    cfg = TrainConfig(data=str(three), weights=str(w), out=str(tmp_path), precision="fp32", progress=False)
    run = trainer(cfg)
    theirs = checkpoint.load(weights / "best.pt")
    mine = run.model.state_dict()
    assert run.record.classes == run.data.classes == theirs["network"].classes[1:]  # the data's classes
    assert (run.record.width, run.record.crop) == (0.25, 64) and mine["fc8.weight"].shape == (3, 1024)
    assert all(torch.equal(mine[k], v) for k, v in layers(theirs, LAYERS[:-1]).items())
    assert not mine["fc8.weight"].any()  # the run's initialization, centered: fc8 starts at 0
    assert torch.equal(run.record.recipe.mean, theirs["network"].recipe.mean)  # the weights' preprocessing
    assert run.pretrained == LAYERS[:-1]

    main(["train", "--data", str(three), "--weights", str(w), "--max-steps", "1", "--batch-size", "8",
          "--no-progress", "--out", str(tmp_path), "--name", "ft", "--precision", "fp32"])
    first = capsys.readouterr().out.splitlines()[0]
    assert "fc8 replaced: 4 -> 3 classes, initialized by centered" in first, first


def test_a_fine_tuning_run_records_its_weights_and_resumes_without_them(stores, weights, tmp_path, capsys):
    _, three = stores
    w = tmp_path / "w.pt"
    shutil.copy(weights / "best.pt", w)
    run = train(config(three, tmp_path, weights=str(w), max_steps=1, pretrained_lr=0.1))
    saved = json.loads((run / "config.json").read_text())
    assert saved["weights"] == str(w) and saved["weights_digest"] == hashlib.sha256(w.read_bytes()).hexdigest()
    one_line_error(capsys, ["train", "--resume", str(run), "--weights", str(weights)],
                   f"--weights {weights / 'best.pt'}: the run to resume has '{w}'")
    w.unlink()  # the run's checkpoint holds all it took from them
    train(TrainConfig(resume=str(run), weights=str(w), max_steps=2, progress=False))
    state = checkpoint.load(run / "last.pt")
    assert state["total_steps"] == 2 and state["pretrained"] == list(LAYERS[:-1])
    assert [g["lr_scale"] for g in state["optimizer"]["param_groups"]] == [0.1, 1.0]


def test_freeze_trains_nothing_up_to_the_layer_named(stores, weights, tmp_path):
    _, three = stores
    start = trainer(config(three, tmp_path, weights=str(weights), freeze="conv5"))
    trained = {id(p) for group in start.optimizer.param_groups for p in group["params"]}
    frozen = layers({"model": dict(start.model.named_parameters())}, LAYERS[:5])
    assert frozen and not any(p.requires_grad or id(p) in trained for p in frozen.values())
    before = {k: v.clone() for k, v in start.model.state_dict().items()}
    run = train(config(three, tmp_path, weights=str(weights), freeze="conv5", max_steps=3, name="frozen"))
    after = checkpoint.load(run / "last.pt")["model"]
    for k, v in before.items():  # no step and no weight decay below fc6
        assert torch.equal(after[k], v) == (k.split(".")[0] in LAYERS[:5]), k


def test_the_loaded_layers_take_their_share_of_the_rate_as_it_falls(stores, weights, tmp_path):
    _, three = stores
    start = trainer(config(three, tmp_path, weights=str(weights), pretrained_lr=0.1, lr=0.02))
    slow, fast = start.optimizer.param_groups
    names = {id(p): k for k, p in start.model.named_parameters()}
    assert {names[id(p)].split(".")[0] for p in fast["params"]} == {"fc8"}  # replaced: the rate itself
    assert len(slow["params"]) == 14 and (slow["lr"], fast["lr"]) == pytest.approx((0.002, 0.02))
    set_rate(start.optimizer, 0.002)  # the plateau rule's division by 10
    assert (slow["lr"], fast["lr"]) == pytest.approx((0.0002, 0.002))


def test_fine_tuning_from_an_imported_torchvision_network_keeps_its_preprocessing(photos, tmp_path):
    # torchvision's alexnet() keys, which an `owt` network has
    torch.save(OWTAlexNet().state_dict(), tmp_path / "tv.pth")
    import_torchvision(tmp_path / "tv.pth", tmp_path / "tv.pt")
    for split in ("train", "val"):  # 2 classes, 2 images each: a 256×256 store, as torchvision's network takes
        for wnid in sorted(p.name for p in (photos / split).iterdir())[:2]:
            shutil.copytree(photos / split / wnid, tmp_path / "two" / split / wnid)
    store = prepare(tmp_path / "two", tmp_path / "store", workers=2, progress=False).path
    start = trainer(TrainConfig(data=str(store), weights=str(tmp_path / "tv.pt"), out=str(tmp_path)))
    assert start.cfg.arch == "owt" and start.record.crop == 224 and start.model.layers()["fc8"].out_features == 2
    assert torch.allclose(start.record.recipe.scale, 1 / (255 * torch.tensor(TORCHVISION_STD)))
    assert start.cfg.init == "torchvision"  # fc8's: the architecture's own


@pytest.mark.parametrize(("args", "fragment"), [
    (["--weights", "missing.pt"], "--weights: no checkpoint at"),
    (["--weights", "{w}", "--arch", "owt"], "--arch owt: the network of {w}/best.pt has arch paper"),
    (["--weights", "{w}", "--freeze", "conv6"], "argument --freeze: expected one of conv1, conv2"),
    (["--freeze", "conv5"], "--freeze conv5: applies to the layers loaded from --weights, and none is given"),
    (["--pretrained-lr", "0.1"], "--pretrained-lr 0.1: applies to the layers loaded from --weights"),
])
def test_bad_fine_tuning_input_is_one_line(stores, weights, tmp_path, capsys, args, fragment):
    four, _ = stores
    argv = ["train", "--data", str(four), "--out", str(tmp_path), *(a.format(w=weights) for a in args)]
    one_line_error(capsys, argv, fragment.format(w=weights))
    assert not list(tmp_path.iterdir())  # no run folder


def pair_worker(rank: int, port: int, cfg: TrainConfig) -> None:
    """`train(cfg)` as process `rank` of a pair (--parallel towers)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(cfg)


def test_a_pair_of_towers_fine_tunes_as_one_process_does(stores, weights, tmp_path):
    # frozen layers and two rates: each tower's share of the optimizer, gathered whole under the right names
    _, three = stores
    kw = {"weights": str(weights), "freeze": "conv2", "pretrained_lr": 0.1, "max_steps": 2, "dropout": 0.0}
    train(config(three, tmp_path, name="one", **kw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(pair_worker, (port, config(three, tmp_path, name="pair", parallel="towers", **kw)), nprocs=2)
    a, b = (checkpoint.load(tmp_path / name / "last.pt") for name in ("one", "pair"))
    start = checkpoint.load(weights / "best.pt")["model"]
    for name, value in a["model"].items():
        assert torch.allclose(b["model"][name], value, atol=1e-5), name
        assert torch.equal(value, start[name]) == (name.split(".")[0] in ("conv1", "conv2")), name
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, state in a["optimizer"]["state"].items():
        assert torch.allclose(b["optimizer"]["state"][i]["velocity"], state["velocity"], atol=1e-5), i
