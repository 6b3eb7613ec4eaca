import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cifar_source
from PIL import Image

from alexnet import experiments
from alexnet.cli import main
from alexnet.experiments import EXPERIMENTS, CifarSplit, FourLayerNet, ThreadChooser, epochs_to_reach, init_four_layer


def cifar_folder(root: Path, train: int = 20, test: int = 5, test_name: str = "test") -> Path:
    """A CIFAR-10 layout with `train` and `test` images per class, linked from training images (cifar_source)."""
    source = cifar_source(root.parent / "source")
    for folder in sorted(source.iterdir()):
        files = sorted(folder.iterdir())
        for split, chosen in (("train", files[:train]), (test_name, files[train:train + test])):
            (root / split / folder.name).mkdir(parents=True)
            for f in chosen:
                (root / split / folder.name / f.name).symlink_to(f)
    return root


def layer_lines(net: torch.nn.Module) -> list[str]:
    return repr(net).splitlines()


def differing_lines(a: torch.nn.Module, b: torch.nn.Module) -> list[tuple[str, str]]:
    la, lb = layer_lines(a), layer_lines(b)
    assert len(la) == len(lb)
    return [(x.strip(), y.strip()) for x, y in zip(la, lb, strict=True) if x != y]


def test_four_layer_net_has_the_layer_shapes_of_layers_18pct():
    net = FourLayerNet()
    x = torch.zeros(2, 3, 32, 32)
    shapes = []
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, torch.nn.MaxPool2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(32, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(32, (5, 5), (2, 2))] * 2 + [
        (64, (5, 5), (2, 2))]
    assert sum(p.numel() for p in net.parameters()) == 2432 + 25632 + 51264 + 10250


def test_pooling_2_2_keeps_the_shapes_of_3_2():
    overlapping, plain = FourLayerNet(pool=(3, 2)), FourLayerNet(pool=(2, 2))
    x = torch.randn(1, 3, 32, 32)
    assert overlapping.features(x).shape == plain.features(x).shape == (1, 64, 4, 4)


def test_relu_and_tanh_variants_differ_only_in_the_nonlinearity():
    relu, tanh = (v.build(10) for v in EXPERIMENTS["relu-vs-tanh"].variants)
    assert differing_lines(relu, tanh) == [("(2): ReLU()", "(2): Tanh()"), ("(6): ReLU()", "(6): Tanh()"),
                                           ("(10): ReLU()", "(10): Tanh()")]


def test_lrn_variants_differ_only_by_lrn():
    with_lrn, without = (v.build(10) for v in EXPERIMENTS["lrn"].variants)
    diff = differing_lines(with_lrn, without)
    assert [(a.split(":")[0], b) for a, b in diff] == [("(3)", "(3): LRN('none')"), ("(7)", "(7): LRN('none')")]
    assert all("LRN('paper', size=5" in a for a, _ in diff)


def test_pooling_variants_differ_only_in_pooling():
    overlapping, plain = (v.build(10) for v in EXPERIMENTS["pooling"].variants)
    diff = differing_lines(overlapping, plain)
    assert len(diff) == 3
    for a, b in diff:
        assert "MaxPool2d(kernel_size=3, stride=2" in a and "MaxPool2d(kernel_size=2, stride=2" in b


def test_variants_of_an_experiment_start_from_the_same_weights():
    for setup in EXPERIMENTS.values():
        states = []
        for variant in setup.variants:
            torch.manual_seed(3)
            net = variant.build(10)
            init_four_layer(net, setup.init)
            states.append(net.state_dict())
        assert states[0].keys() == states[1].keys()
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_pooling_before_the_nonlinearity_gives_the_same_outputs():
    x = torch.randn(2, 4, 9, 9)
    pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
    for act in (torch.relu, torch.tanh):
        assert torch.equal(pool(act(x)), act(pool(x)))


def test_initializations_have_the_stated_spread():
    net = FourLayerNet()
    init_four_layer(net, "paper")
    assert abs(net.features[4].weight.std().item() - 0.01) < 0.001
    init_four_layer(net, "lecun")
    assert abs(net.features[4].weight.std().item() - 1 / (32 * 25) ** 0.5) < 0.003
    assert net.classifier.bias.abs().sum() == 0
    with pytest.raises(ValueError, match="unknown initialization"):
        init_four_layer(net, "xavier")


def test_epochs_to_reach_interpolates_between_epochs():
    assert epochs_to_reach([0.6, 0.4, 0.3, 0.2]) == pytest.approx(3.5)
    assert epochs_to_reach([0.5, 0.25, 0.1]) == 2.0
    assert epochs_to_reach([0.2, 0.1]) == 1.0
    assert epochs_to_reach([0.9, 0.5, 0.26]) is None
    assert epochs_to_reach([]) is None
    assert epochs_to_reach([0.5, 0.3], target=0.4) == pytest.approx(1.5)


def test_report_states_the_ratio_or_a_lower_bound():
    def results(a, b):
        return {"paper": "six times", "seeds": 1, "ratio": None if None in (a, b) else b / a, "variants": {
            label: {"final_test_error": 0.3, "best_test_error": 0.3, "final_train_error": 0.2, "images_per_s": 900,
                    "epochs": 12, "epochs_to_25": e} for label, e in (("ReLU", a), ("tanh", b))}}
    text = experiments.experiment_report("relu-vs-tanh", results(2.0, 12.0))
    assert "ReLU 2.0, tanh 12.0: ReLU 6.0 times as fast" in text
    assert "tanh not within 12: ReLU more than 4.0 times as fast" in experiments.experiment_report(
        "relu-vs-tanh", results(3.0, None))
    assert "ReLU did not reach 25% training error within 12 epochs, nor did tanh" in experiments.experiment_report(
        "relu-vs-tanh", results(None, None))
    header, row = experiments.experiment_report("relu-vs-tanh", results(2.0, 12.0)).splitlines()[:2]
    ends = [m.end() for m in re.finditer(r"\S+", row)][1:]  # the four values' right edges
    assert [header[:e].split()[-1] for e in ends] == ["error", "test", "error", "images/s"]  # a name above each


def test_inputs_subtract_the_mean_image_and_flip():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    inputs = experiments._Inputs(CifarSplit(images, np.array([0, 1])), "raw")
    x = inputs(images)
    assert x.shape == (2, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[0], -x[1])  # two images: each is ± half their difference from the mean
    flipped = inputs(images, np.array([True, False]))
    assert torch.equal(flipped[0], x[0].flip(2)) and torch.equal(flipped[1], x[1])
    unit = experiments._Inputs(CifarSplit(images, np.array([0, 1])), "unit")
    assert unit.scale == pytest.approx(torch.from_numpy(images).double().std(correction=0).item())
    assert torch.allclose(unit(images), x / unit.scale)


def run_epoch(chooser: ThreadChooser, steps: int, seconds: dict[int, float]) -> list[int]:
    """The thread counts the chooser asks for over one epoch, each step taking `seconds[threads]`."""
    used = []
    for step in range(steps):
        used.append(chooser.threads(step))
        chooser.record(step, seconds[used[-1]])
    return used


def test_thread_chooser_tries_both_then_keeps_the_faster():
    chooser = ThreadChooser(None, steps=80, trials=3)
    if chooser.choices == (1,):
        pytest.skip("a single core: nothing to choose")
    cores = chooser.choices[0]
    busy = run_epoch(chooser, 20, {cores: 0.5, 1: 0.1})
    assert busy[:8] == [cores, 1] * 4 and busy[8:] == [1] * 12
    quiet = run_epoch(chooser, 20, {cores: 0.05, 1: 0.1})  # chosen again each epoch
    assert quiet[:8] == [cores, 1] * 4 and quiet[8:] == [cores] * 12


def test_thread_chooser_ignores_the_warm_up_step_and_keeps_a_fixed_count():
    chooser = ThreadChooser(None, steps=60, trials=2)
    if chooser.choices == (1,):
        pytest.skip("a single core: nothing to choose")
    cores = chooser.choices[0]
    times = iter([9.0, 9.0, 0.2, 0.1, 0.2, 0.1] + [0.1] * 4)  # the first step of each count is slow
    used = []
    for step in range(10):
        used.append(chooser.threads(step))
        chooser.record(step, next(times))
    assert used[6:] == [1] * 4 and cores != 1
    assert run_epoch(ThreadChooser(3, steps=1000), 10, {3: 1.0}) == [3] * 10
    assert ThreadChooser(None, steps=59, trials=2).choices == (cores,)  # too short an epoch to try


def test_error_rate_counts_wrong_top_classes():
    class AlwaysClassTwo(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 2), 10).float()

    images = np.zeros((5, 32, 32, 3), np.uint8)
    split = CifarSplit(images, np.array([2, 0, 2, 2, 9]))
    inputs = experiments._Inputs(split, "raw")
    assert experiments.error_rate(AlwaysClassTwo(), split, inputs, batch_size=2) == pytest.approx(2 / 5)


def read_png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.mark.parametrize("name, epochs, seeds", [("relu-vs-tanh", 2, 1), ("lrn", 1, 2), ("pooling", 1, 1)])
def test_experiment_runs_end_to_end(tmp_path, capsys, name, epochs, seeds):
    data = cifar_folder(tmp_path / "cifar")
    out = tmp_path / "out"
    main(["experiment", name, "--data", str(data), "--epochs", str(epochs), "--batch-size", "50", "--out", str(out),
          "--cache", str(tmp_path / "cache"), "--seeds", str(seeds), "--seed", "3"])
    printed = capsys.readouterr().out
    assert f"{name}: 200 training and 50 test images, {epochs} epoch{'s' if epochs > 1 else ''}, batch 50" in printed
    assert read_png_size(out / f"{name}.png") == (640, 480)
    with (out / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    labels = [v.label for v in EXPERIMENTS[name].variants]
    assert [(r["variant"], int(r["epoch"]), int(r["seed"])) for r in rows] == [
        (v, e, s) for s in range(3, 3 + seeds) for v in labels for e in range(1, epochs + 1)]
    assert {int(r["threads"]) for r in rows} == {torch.get_num_threads()}  # 4 steps an epoch: too few to try 1 thread
    for r in rows:
        assert 0 <= float(r["train_error"]) <= 1 and 0 <= float(r["test_error"]) <= 1
        assert float(r["lr"]) == next(v.lr for v in EXPERIMENTS[name].variants if v.label == r["variant"])
    results = json.loads((out / "results.json").read_text())
    assert list(results["variants"]) == labels
    assert all(v["images_per_s"] > 0 and v["epochs"] == epochs for v in results["variants"].values())
    assert ("ratio" in results) == (name == "relu-vs-tanh")
    assert json.loads((out / "config.json").read_text())["epochs"] == epochs
    assert "paper:" in printed
    assert results["seeds"] == seeds and len(results["per_seed"]) == seeds
    finals = [seed[labels[0]]["final_test_error"] for seed in results["per_seed"]]
    assert results["variants"][labels[0]]["final_test_error"] == pytest.approx(sum(finals) / seeds)
    assert results["spread"][labels[0]]["values"] == finals
    assert (results["difference"]["interval"] is None) == (seeds == 1)
    assert results["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_decoded_images_are_cached(tmp_path, monkeypatch):
    data = cifar_folder(tmp_path / "cifar", train=3, test=2, test_name="val")
    train, test, classes = experiments.load_cifar(data, tmp_path / "cache", progress=False)
    assert train.images.shape == (30, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (20, 32, 32, 3)
    assert classes[:3] == ["airplane", "automobile", "bird"] and list(train.labels[:4]) == [0, 0, 0, 1]
    assert len(list((tmp_path / "cache").glob("cifar-*.npz"))) == 1

    def no_decoding(path):
        raise AssertionError("decoded again")

    monkeypatch.setattr(experiments, "open_rgb", no_decoding)
    again, again_test, _ = experiments.load_cifar(data, tmp_path / "cache", progress=False)
    assert np.array_equal(again.images, train.images) and np.array_equal(again_test.labels, test.labels)


def test_test_split_is_labelled_by_the_train_classes(tmp_path):
    data = cifar_folder(tmp_path / "cifar", train=2, test=3)
    for name in sorted(p.name for p in (data / "test").iterdir()):
        if name not in ("cat", "ship"):
            shutil.rmtree(data / "test" / name)
    train, test, classes = experiments.load_cifar(data, None, progress=False)
    assert list(test.labels) == [classes.index("cat")] * 3 + [classes.index("ship")] * 3


def test_images_of_another_size_are_refused(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (32, 32) if split == "train" else (64, 48)).save(tmp_path / split / "a" / "x.png")
    with pytest.raises(ValueError, match=r"x.png is 64×48: the experiments take 32×32 images"):
        experiments.load_cifar(tmp_path, None, progress=False)


@pytest.mark.parametrize("layout, message", [
    (None, "data folder not found: "),
    ("train", "no test split: "),
    ("test", "no train split: "),
])
def test_bad_data_is_a_one_line_error(tmp_path, capsys, layout, message):
    data = tmp_path / "data"
    if layout is not None:
        (data / layout / "a").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(data / layout / "a" / "x.png")
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "lrn", "--data", str(data), "--out", str(tmp_path / "out"), "--cache", str(tmp_path)])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"alexnet experiment lrn: error: {message}")


@pytest.mark.parametrize("option, message", [
    (["--epochs", "0"], "argument --epochs: expected a whole number of at least 1, got 0"),
    (["--threads", "0"], "argument --threads: expected a whole number of at least 1, got 0"),
])
def test_bad_settings_are_a_one_line_error(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "pooling", "--data", str(tmp_path), *option])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"alexnet experiment pooling: error: {message} (see alexnet experiment pooling --help)"]


def test_experiment_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "relu-vs-tanh", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in (f"(default: {EXPERIMENTS['relu-vs-tanh'].epochs})", "(default: 128)",
                    "(default: runs/experiments/relu-vs-tanh)", "(default: 0)",
                    "(default: ~/.cache/alexnet)", "(default: auto)"):
        assert default in text

