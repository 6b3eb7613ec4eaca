import copy
import csv
import json

import pytest
import torch
from conftest import photo_folder
from PIL import Image

from alexnet import ablations, spread
from alexnet.ablations import STUDIES, StudyConfig
from alexnet.cli import main
from alexnet.data.store import prepare
from alexnet.errors import InputError
from alexnet.model import MIDDLE, conv5_maps
from alexnet.record import NetworkRecord, build_model


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """4 classes of real photos, 6 training and 2 validation images each, stored at 76×76."""
    root = photo_folder(tmp_path_factory.mktemp("photos"), train=6, val=2)
    return prepare(root, tmp_path_factory.mktemp("store") / "store", size=76, workers=1, progress=False).path


def test_scaled_alexnet_keeps_the_eight_layers_with_a_fraction_of_the_kernels():
    net = build_model(NetworkRecord.of("paper", 10, width=0.25, crop=67))
    widths = [layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels
              for layer in net.layers().values()]
    assert widths == [24, 64, 96, 96, 64, 1024, 1024, 10]
    assert net.fc6.in_features == 64 * 1 * 1 and conv5_maps(67) == 1 and conv5_maps(227) == 6
    assert net(torch.randn(2, 3, 67, 67)).shape == net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert build_model(NetworkRecord.of("paper", 10, width=0.25, crop=99)).fc6.in_features == 64 * 2 * 2
    for crop in (63, 66):
        with pytest.raises(InputError):
            build_model(NetworkRecord.of("paper", 10, crop=crop))
    with pytest.raises(InputError, match="width 0.3"):
        build_model(NetworkRecord.of("paper", 10, width=0.3))


@pytest.mark.parametrize("towers", ["paper", "paper-1tower"])
@pytest.mark.parametrize("name", MIDDLE)
def test_a_removed_layer_leaves_the_full_networks_initial_weights(towers, name):
    torch.manual_seed(0)
    full = build_model(NetworkRecord.of(towers, 10, width=0.125, crop=67)).state_dict()
    torch.manual_seed(0)
    net = build_model(NetworkRecord.of(towers, 10, width=0.125, crop=67, remove=name))
    assert name not in net.layers() and len(net.layers()) == 7
    groups = 2 if towers == "paper" else 1
    for key, value in net.state_dict().items():
        whole = full[key]
        if key.startswith("conv4") and name == "conv3":  # the first inputs of each tower
            assert torch.equal(value, whole[:, :value.shape[1]]) if value.dim() > 1 else torch.equal(value, whole)
        elif key.startswith("conv4") and name == "conv5":  # the first kernels of each tower
            per = len(whole) // groups
            kept = torch.cat([whole[g * per:g * per + len(value) // groups] for g in range(groups)])
            assert torch.equal(value, kept) and len(value) == len(full["conv5.bias"])
        else:
            assert torch.equal(value, whole), key
    assert net(torch.randn(2, 3, 67, 67)).shape == (2, 10)


def test_remove_only_a_middle_layer():
    with pytest.raises(InputError, match="middle"):
        build_model(NetworkRecord.of("paper", 10, remove="conv2"))
    with pytest.raises(InputError, match="owt"):
        build_model(NetworkRecord.of("owt", 10, remove="conv4"))


class PaperDropout(torch.nn.Module):
    """§4.2 as printed: zero each output with probability p while training; multiply by 1 − p at test time."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.training:  # the same draws as nn.Dropout's, without its 1 / (1 − p)
            return torch.nn.functional.dropout(x, self.p, True) * (1 - self.p)
        return x * (1 - self.p)


def test_paper_dropout_is_pytorchs_with_the_next_layers_weights_scaled():
    torch.manual_seed(0)
    ours = build_model(NetworkRecord.of("paper", 10, width=0.125, crop=67), "torchvision")  # PyTorch's inverted dropout
    paper = copy.deepcopy(ours)
    paper.dropout = PaperDropout(0.5)
    with torch.no_grad():  # the layers after a dropout see inputs half as large: their weights twice as large
        for layer in (paper.fc7, paper.fc8):
            layer.weight.mul_(2)
    x = torch.randn(4, 3, 67, 67)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(paper, mode)()
        torch.manual_seed(1)
        a = ours(x)
        torch.manual_seed(1)  # the same dropout masks
        b = paper(x)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    paper.fc7.weight.data.div_(2)  # without the scaling the test-time outputs differ
    assert not torch.allclose(ours.eval()(x), paper.eval()(x), rtol=1e-3, atol=1e-3)
    # and in expectation over the masks, training-time outputs are the test-time ones (one layer: exact)
    h = torch.rand(200_000)
    assert torch.nn.functional.dropout(h, 0.5, True).mean().item() == pytest.approx(h.mean().item(), rel=0.01)


def test_paired_differences_and_the_seeds_they_need():
    d = spread.paired([0.30, 0.32, 0.31], [0.33, 0.36, 0.33])
    assert d["values"] == pytest.approx([0.03, 0.04, 0.02]) and d["mean"] == pytest.approx(0.03)
    assert d["min"] == pytest.approx(0.02) and d["max"] == pytest.approx(0.04)
    low, high = d["interval"]  # t(0.975, 2) = 4.303, sd 0.01
    assert (low, high) == pytest.approx((0.03 - 4.303 * 0.01 / 3**0.5, 0.03 + 4.303 * 0.01 / 3**0.5), abs=1e-4)
    assert d["resolved"] and d["seeds_needed"] == 3
    # mean 1, sd 1: t(0.975, 5) / √6 = 1.05 is not below 1, t(0.975, 6) / √7 = 0.92 is
    assert spread.seeds_needed(1.0, 1.0) == 7 and spread.seeds_needed(0.0, 1.0) is None
    assert spread.seeds_needed(1e-4, 1.0) is None
    noisy = spread.paired([0.3, 0.4], [0.4, 0.3])
    assert not noisy["resolved"] and noisy["seeds_needed"] is None
    one = spread.paired([0.3], [0.35])
    assert one["interval"] is None and "interval" not in spread.paired_in_words(one)
    with pytest.raises(ValueError):
        spread.paired([0.1, 0.2], [0.1])


def test_variants_differ_from_the_full_network_only_in_what_they_test():
    config = StudyConfig("depth", data="/data/store")
    full = config.training(STUDIES["depth"].variants[0], 0)
    assert (full.width, full.crop, full.epochs, full.schedule, full.seed) == (0.25, 67, 12, "cosine", 0)
    for name, study in STUDIES.items():
        for variant in study.variants:
            cfg = config.training(variant, 0)
            changed = {k for k in vars(cfg) if getattr(cfg, k) != getattr(full, k)} - {"name"}
            assert changed == {k for k, _ in variant.changes}, (name, variant.label)
            assert (cfg.name == full.name) == (variant.changes == ())  # the full network's runs are shared
    assert config.training(STUDIES["depth"].variants[0], 1).name != full.name
    scaled = StudyConfig("depth", data="/data/store", full=True).training(STUDIES["depth"].variants[0], 0)
    assert (scaled.width, scaled.crop, scaled.epochs) == (1.0, 224, 90)


def test_dropout_study_runs_end_to_end_and_reuses_its_runs(small_store, tmp_path, capsys):
    out, runs = tmp_path / "dropout", tmp_path / "runs"
    args = ["--data", str(small_store), "--seeds", "2", "--epochs", "2", "--width", "0.125", "--batch-size", "8",
            "--runs", str(runs), "--device", "cpu", "--no-progress"]
    main(["experiment", "dropout", *args, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "no dropout: validation top-1 error" in printed and "over 2 seeds" in printed
    with (out / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"], r["epoch"]) for r in rows] == [
        (v, str(s), str(e)) for v in ("dropout 0.5", "no dropout") for s in (0, 1) for e in (1, 2)]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == 2 and len(results["claims"]) == 2
    assert all(len(c["values"]) == 2 and c["interval"] is not None for c in results["claims"])
    assert results["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert len(results["converge"]["epochs"]["no dropout"]) == 2
    with Image.open(out / "dropout.png") as im:
        assert im.size == (640, 480)
    assert len(list(runs.iterdir())) == 4  # two variants, two seeds
    # the ten-patch experiment trains nothing new: its network is the dropout experiment's first variant
    main(["experiment", "tencrop", *args, "--out", str(tmp_path / "tencrop")])
    assert "epoch 1/2" not in capsys.readouterr().out and len(list(runs.iterdir())) == 4
    ten = json.loads((tmp_path / "tencrop" / "results.json").read_text())
    assert [c["what"] for c in ten["claims"]] == ["ten patches: validation top-1 error",
                                                  "ten patches: validation top-5 error"]
    full = ten["variants"]["all eight layers"]
    assert full["val_top1"] == results["variants"]["dropout 0.5"]["val_top1"]
    assert 0 <= full["ten_top1"]["mean"] <= 1


def test_bad_options_are_one_line_errors(small_store, tmp_path):
    with pytest.raises(InputError, match="--crop 32"):
        StudyConfig("depth", data=str(small_store), crop=32).training(STUDIES["depth"].variants[0], 0)
    with pytest.raises(InputError, match="unknown experiment"):
        ablations.run_study(StudyConfig("nothing", data=str(small_store), out=str(tmp_path)))


def test_convergence_compares_the_epochs_to_the_training_error_dropout_ends_at():
    def runs(*curves):
        return [{"epochs": {"train_top1": list(c)}} for c in curves]

    records = {"dropout 0.5": runs([0.8, 0.5, 0.3], [0.8, 0.4, 0.4]),
               "no dropout": runs([0.6, 0.3, 0.1], [0.6, 0.2, 0.1])}
    found = ablations.convergence(records)
    assert found["epochs"] == {"dropout 0.5": [3.0, 2.0], "no dropout": [2.0, 1.5]}
    assert found["ratio"]["values"] == [1.5, 2.0 / 1.5]
    never = {"dropout 0.5": runs([0.8, 0.3]), "no dropout": runs([0.8, 0.5])}
    assert ablations.convergence(never)["ratio"] is None
