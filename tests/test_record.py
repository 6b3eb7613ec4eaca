"""The record of a network (alexnet/record.py): every variant round-trips through every format and every command
that takes a checkpoint or weights file; the files earlier versions wrote read back as they were."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, photo_folder
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.data.augment import center_crop
from alexnet.data.folders import DEFAULT_DATA, preprocess
from alexnet.data.store import Store, prepare
from alexnet.errors import InputError
from alexnet.export import check, read_record
from alexnet.inference import load_network
from alexnet.neighbors import open_features
from alexnet.record import NetworkRecord, build_model
from alexnet.serve import Predictor, make_app

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTO = sorted((DEFAULT_DATA / "val").glob("*/*"))[0]
SMALL = {"width": 0.125, "crop": 64}  # the paper's layouts at their smallest: 64×64 crops of 72×72 images
# (arch, the record's other fields): every architecture, a width, each removed layer, each LRN formula
VARIANTS = [("paper", SMALL), ("paper-1tower", SMALL), ("half", SMALL), ("caffenet", SMALL), ("owt", {}),
            ("paper", {"width": 0.25, "crop": 64}), ("paper", {**SMALL, "remove": "conv3"}),
            ("paper-1tower", {**SMALL, "remove": "conv5"}), ("half", {**SMALL, "remove": "conv4"}),
            ("paper", {**SMALL, "lrn": "cuda-convnet"}), ("paper", {**SMALL, "lrn": "caffe"}),
            ("caffenet", {**SMALL, "lrn": "none"})]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The first 4 classes of the real photos, 2 training and 2 validation images each, as stores of 72×72
    images (for the small networks) and of 256×256 (for owt, which takes 224×224 crops)."""
    photos = photo_folder(tmp_path_factory.mktemp("photos"), train=2, val=2)
    out = tmp_path_factory.mktemp("stores")
    return {size: prepare(photos, out / str(size), size=size, workers=1, progress=False).path for size in (72, 256)}


def same(a: NetworkRecord, b: NetworkRecord) -> bool:
    """Whether two records say the same, the mean image to the bit."""
    return a.to_json() == b.to_json()


def logits(path: str | Path, record: NetworkRecord) -> torch.Tensor:
    """The logits of the network of a checkpoint or weights file for the built-in photo, float32 on the CPU."""
    net = load_network(str(path), "cpu", "fp32")
    x = center_crop(torch.from_numpy(preprocess(PHOTO, record.side))[None], net.recipe, net.crop)
    with torch.no_grad():
        return net.model(x)


@pytest.mark.parametrize(("arch", "fields"), VARIANTS, ids=[f"{a}-{'-'.join(map(str, f.values()))}" for a, f in
                                                            VARIANTS])
def test_every_variant_round_trips_through_every_format_and_command(arch, fields, stores, tmp_path, capsys):
    store = stores[256 if arch == "owt" else 72]
    train = Store(store).split("train")
    record = NetworkRecord.of(arch, train.classes, train.names, **fields, recipe=Store(store).recipe())
    torch.manual_seed(0)
    ckpt = tmp_path / "net.pt"
    checkpoint.save(ckpt, {"network": record, "model": build_model(record).state_dict(), "config": None,
                           "measured": None})
    assert same(checkpoint.load(ckpt)["network"], record)
    want = logits(ckpt, record)
    for suffix in (".safetensors", ".onnx", ".pt2"):
        out = tmp_path / f"net{suffix}"
        main(["export", str(ckpt), str(out)])
        assert same(read_record(out), record), suffix  # each format carries the record whole
        if suffix != ".safetensors":
            agreement = check(ckpt, out)
            assert agreement.max_logit_diff < 1e-4 and agreement.top5_same == agreement.images, agreement.line()
    weights = tmp_path / "net.safetensors"
    assert same(checkpoint.load(weights)["network"], record) and torch.equal(logits(weights, record), want)
    capsys.readouterr()
    # every command that takes a checkpoint takes either file
    for path in (ckpt, weights):
        main(["eval", str(path), "--data", str(store), "--json", "--precision", "fp32"])
        assert json.loads(capsys.readouterr().out)["images"] == 8
        main(["predict", str(path), str(PHOTO), "--json", "--precision", "fp32", "--crops", "1"])
        assert len(json.loads(capsys.readouterr().out)[0]["top5"]) == min(5, len(record.classes))
        main(["filters", str(path), "--out", str(tmp_path / "conv1.png")])
        assert (tmp_path / "conv1.png").is_file() and "wrote" in capsys.readouterr().out
    features = tmp_path / "features"
    main(["features", str(ckpt), "--data", str(store), "--out", str(features), "--no-progress", "--precision", "fp32"])
    main(["neighbors", str(weights), str(PHOTO), "--features", str(features), "--k", "3", "--json"])
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])[0]["neighbors"]) == 3
    found, net = open_features(features, str(weights), "cpu")
    with TestClient(make_app(Predictor(net, found)), base_url="http://127.0.0.1:8000") as client:
        assert client.get("/info").json()["arch"] == arch
        answer = client.post("/predict", content=PHOTO.read_bytes(), headers={"content-type": "image/jpeg"},
                             params={"crops": 1, "k": 2}).json()
        assert len(answer["neighbors"]) == 2
    model = torch.hub.load(str(ROOT), "alexnet", source="local", weights=str(weights))
    x = center_crop(torch.from_numpy(preprocess(PHOTO, record.side))[None], record.recipe, record.crop)
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_the_files_of_the_first_version_read_back_as_they_were(stores, tmp_path, capsys):
    """tests/fixtures/: a checkpoint and a weights file written by the first version (see its README): a
    `paper` network at width 0.125, without conv3, on 64×64 crops of 72×72 images of 3 classes, its LRN unset."""
    old, weights = FIXTURES / "v1-checkpoint.pt", FIXTURES / "v1-weights.safetensors"
    state = checkpoint.load(old)
    net = state["network"]
    assert (net.arch, net.lrn, net.width, net.remove, net.crop, net.side) == ("paper", "paper", 0.125, "conv3", 64, 72)
    assert net.classes == ["n01440764", "n02102040", "n02979186"] and net.names[0] == "tench"
    assert state["epoch"] == 0 and state["total_steps"] == 1 and state["config"]["width"] == 0.125
    # the weights file of version 1 had no width and no removed layer: its weights tell them
    assert same(checkpoint.load(weights)["network"], net) and same(read_record(weights), net)
    assert torch.equal(logits(weights, net), logits(old, net))
    # a version-1 checkpoint from before width and remove existed: the weights tell them too
    raw = torch.load(old, weights_only=True)
    early = tmp_path / "early.pt"
    torch.save({k: v for k, v in raw.items() if k not in ("width", "remove")}, early)
    assert same(checkpoint.load(early)["network"], net)
    # saved again, it is of the current version, and says the same
    resaved = tmp_path / "resaved.pt"
    checkpoint.save(resaved, {k: v for k, v in state.items() if k not in ("format", "path")})
    assert torch.load(resaved, weights_only=True)["network"]["version"] == 2
    assert same(checkpoint.load(resaved)["network"], net)
    # it takes the 72×72 images it was trained on: data of another side is refused, a photo is made to fit
    one_line_error(capsys, ["eval", str(old), "--data", str(stores[256])], "takes 72×72 images (as it was trained)")
    main(["predict", str(weights), str(PHOTO), "--json", "--crops", "10"])
    assert len(json.loads(capsys.readouterr().out)[0]["top5"]) == 3


def test_a_record_of_a_newer_version_or_not_a_record_is_a_one_line_error(tmp_path):
    state = checkpoint.load(FIXTURES / "v1-checkpoint.pt")
    saved = {k: v for k, v in state.items() if k not in ("format", "path")}
    newer = tmp_path / "newer.pt"
    checkpoint.save(newer, saved)
    raw = torch.load(newer, weights_only=True)
    raw["network"]["version"] = 3
    torch.save(raw, newer)
    with pytest.raises(InputError, match="version 3: this alexnet reads versions up to 2"):
        checkpoint.load(newer)
    del raw["network"]["arch"]
    raw["network"]["version"] = 2
    torch.save(raw, newer)
    with pytest.raises(InputError, match="not a network record"):
        checkpoint.load(newer)
    with pytest.raises(InputError, match="cannot remove conv5: conv4 has fewer kernels"):  # half's conv4 is narrower
        build_model(NetworkRecord.of("half", 3, remove="conv5"))
    raw["network"] = "paper"
    torch.save(raw, newer)
    with pytest.raises(InputError, match="newer.pt: not a network record"):
        checkpoint.load(newer)
    # a weights file whose header was cut or edited
    weights = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(1)}, weights, {"format": "alexnet-safetensors-2", "metadata": "{}", "network": "{"})
    with pytest.raises(InputError, match="damaged.safetensors is not a readable alexnet weights file"):
        checkpoint.load(weights)
    save_file({"w": torch.zeros(1)}, weights, {"format": "alexnet-safetensors-2", "metadata": "{}",
                                               "network": json.dumps({"version": 2, "arch": "paper"})})
    with pytest.raises(InputError, match="damaged.safetensors: not a network record: KeyError"):
        checkpoint.load(weights)
    # hand-edited records: fewer names than classes, no recipe, a mean image of another shape than said
    good = state["network"].to_json()
    for edit, message in (({"names": good["names"][:1]}, "3 classes and 1 names"),
                          ({"recipe": None}, "has no recipe"),
                          ({"recipe": {**good["recipe"], "mean_shape": [5, 5, 3]}}, "its recipe is damaged")):
        save_file({"w": torch.zeros(1)}, weights, {"format": "alexnet-safetensors-2", "metadata": "{}",
                                                   "network": json.dumps({**good, **edit})})
        with pytest.raises(InputError, match=message):
            checkpoint.load(weights)
    nan = tmp_path / "nan.pt"
    checkpoint.save(nan, {**saved, "model": {**saved["model"], "fc8.bias": torch.full((3,), float("nan"))}})
    with pytest.raises(InputError, match=r"nan.pt: its weights hold NaN or infinite values \(fc8.bias\)"):
        checkpoint.model_from(checkpoint.load(nan))
    bad = dataclasses.replace(state["network"], arch="vgg")
    with pytest.raises(InputError, match="unknown architecture 'vgg'"):
        build_model(bad)



class Payload:
    """A pickle that runs code when it is loaded: here it would leave a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("command", ["eval", "predict", "export", "features", "filters"])
def test_a_checkpoint_that_would_run_code_is_refused_unloaded_by_every_command(command, tmp_path, capsys):
    state = torch.load(FIXTURES / "v1-checkpoint.pt", weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({**state, "payload": Payload(tmp_path / "ran")}, bad)
    argv = {"eval": [str(bad)], "predict": [str(bad), str(next(DEFAULT_DATA.rglob("*.JPEG")))],
            "export": [str(bad), str(tmp_path / "out.safetensors")], "filters": [str(bad)],
            "features": [str(bad), "--out", str(tmp_path / "f")]}
    one_line_error(capsys, [command, *argv[command]], f"{bad} is not a readable checkpoint (UnpicklingError")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.safetensors").exists()
