"""The Python API (docs/api.md): what `import alexnet` exports, a loaded network's predictions, features and
transforms for every kind of image it takes, a store's split as a torch Dataset, the kernels' build announced."""

import os
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_folder, photo_store
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import alexnet
from alexnet import checkpoint
from alexnet.data.augment import center_crop
from alexnet.data.folders import DEFAULT_DATA, preprocess
from alexnet.data.stats import Recipe
from alexnet.evaluate import predict, top5_records
from alexnet.features import fc7
from alexnet.record import NetworkRecord, build_model

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"
PHOTOS = sorted((DEFAULT_DATA / "val").glob("*/*"))[::40][:3]  # of three classes


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A checkpoint of a small untrained network of 10 classes whose answers differ from image to image (PyTorch's
    initialization), with a mean image of its own (not a flat one)."""
    gen = torch.Generator().manual_seed(0)
    recipe = Recipe(torch.rand(256, 256, 3, generator=gen) * 255, torch.rand(3), torch.eye(3))
    classes = sorted(p.name for p in (DEFAULT_DATA / "val").iterdir())
    record = NetworkRecord.of("paper", classes, [f"name of {c}" for c in classes], width=0.125, recipe=recipe)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("net") / "net.pt"
    checkpoint.save(path, {"network": record, "model": build_model(record, "torchvision").state_dict()})
    return path


@pytest.fixture(scope="module")
def net(saved):
    return alexnet.load(saved, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return alexnet.Store(photo_store(tmp_path_factory, 3, 2))


def classes_and_probabilities(records: list[list[dict]]) -> tuple[list, np.ndarray]:
    return [[r["class"] for r in top] for top in records], np.array([[r["probability"] for r in top]
                                                                     for top in records])


def assert_same(records, expected):
    names, probs = classes_and_probabilities(records)
    names_expected, probs_expected = classes_and_probabilities(expected)
    assert names == names_expected
    np.testing.assert_allclose(probs, probs_expected, rtol=1e-4, atol=1e-6)


def test_predict_takes_files_pil_images_and_tensors_alike(net):
    whole = torch.stack([pil_to_tensor(Image.open(p)) for p in PHOTOS])  # uint8 (3, H, W), as torchvision reads
    patches = torch.stack([net.transforms(Image.open(p)) for p in PHOTOS])
    by_path = net.predict(PHOTOS, crops=1)
    assert len(by_path) == 3 and all(len(top) == 5 for top in by_path)
    probs = classes_and_probabilities(by_path)[1]
    assert not np.allclose(probs[0], probs[1], rtol=1e-3)  # answers that tell the images apart
    assert by_path[0][0]["class"].startswith("name of ")  # the readable names
    for same in (net.predict([str(p) for p in PHOTOS], crops=1), net.predict([Image.open(p) for p in PHOTOS], crops=1),
                 net.predict(whole, crops=1), net.predict(list(whole), crops=1), net.predict(patches)):
        assert_same(same, by_path)
    assert_same(net.predict(Image.open(PHOTOS[1]), crops=1), by_path[1:2])  # one image: a list of one
    net.batch = 2  # batches of two: the same answers
    try:
        assert_same(net.predict(PHOTOS, crops=1), by_path)
    finally:
        net.batch = 64


def test_predict_ten_crops_as_the_command_does(net, saved):
    command = predict(str(saved), [str(p) for p in PHOTOS], crops=10, device="cpu", precision="fp32")
    assert_same(net.predict(PHOTOS), [top5_records(top) for _, top in command.top5()])
    assert not np.allclose(classes_and_probabilities(net.predict(PHOTOS))[1],
                           classes_and_probabilities(net.predict(PHOTOS, crops=1))[1])


def test_features_are_fc7_of_the_centre_crop(net):
    pixels = torch.from_numpy(np.stack([preprocess(p) for p in PHOTOS]))
    expected = fc7(net, pixels, net.crop)
    got = net.features(PHOTOS)
    assert got.shape == (3, 512) and got.dtype == torch.float32  # fc7's 4096 units at width 1/8
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(net.features(torch.stack([net.transforms(Image.open(p)) for p in PHOTOS])), expected,
                               rtol=1e-4, atol=1e-5)


def test_transforms_make_the_networks_input_and_pickle(net, tmp_path):
    image = Image.open(PHOTOS[0])
    x = net.transforms(image)
    expected = center_crop(torch.from_numpy(preprocess(PHOTOS[0]))[None], net.record.recipe, net.crop)[0]
    assert x.shape == (3, net.crop, net.crop) and x.dtype == torch.float32 and x.is_contiguous()
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(pickle.loads(pickle.dumps(net.transforms))(image), x)
    image.convert("L").save(tmp_path / "gray.png")  # any mode: as the same file is read
    torch.testing.assert_close(net.transforms(image.convert("L")), center_crop(
        torch.from_numpy(preprocess(tmp_path / "gray.png"))[None], net.record.recipe, net.crop)[0])


@pytest.mark.parametrize(("images", "crops", "says"), [
    (torch.zeros(2, 3, 200, 200), None, r"of shape \(3, 224, 224\) as net.transforms makes it; got \(3, 200, 200\)"),
    ([torch.zeros(3, 224, 224), PHOTOS[0]], None, "not both at once"),
    (torch.zeros(1, 3, 224, 224), 10, "one patch already"),
    (np.zeros((256, 256, 3), np.uint8), 1, "expected a PIL image or a uint8 \\(3, H, W\\) tensor, got ndarray"),
    (torch.zeros(256, 256, 3, dtype=torch.uint8), 1, r"got a torch.uint8 tensor of shape \(256, 256, 3\)"),
    ([], 1, "no images given"),
    (["no-such-file.jpg"], 1, "no such file"),
])
def test_bad_images_are_one_line_input_errors(net, images, crops, says):
    with pytest.raises(alexnet.InputError, match=says):
        net.predict(images, crops=crops)


def test_a_batch_of_no_images_is_refused(saved):
    with pytest.raises(alexnet.InputError, match="the batch size must be positive, got 0"):
        alexnet.load(saved, device="cpu", precision="fp32", batch=0)


def test_a_store_split_is_a_torch_dataset(store, net):
    split = store.split("train")
    assert isinstance(split, torch.utils.data.Dataset) and len(split) == 12
    image, label = split[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 256, 256) and label == int(split.labels[5])
    assert torch.equal(image, torch.from_numpy(split.read(np.array([5]))[0]).permute(2, 0, 1))
    assert torch.equal(split[-1][0], split[11][0])
    with pytest.raises(IndexError):
        split[12]
    # the store's images are of the network's side already: its transform only crops them and takes the mean away
    assert np.array_equal(net.transforms.pixels(image), image.permute(1, 2, 0).numpy())
    loader = torch.utils.data.DataLoader(store.split("train", transform=net.transforms), batch_size=5, num_workers=2)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 2] and batches[0][0].shape == (5, 3, net.crop, net.crop)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.from_numpy(split.labels))
    torch.testing.assert_close(batches[1][0][0], net.transforms(image))
    sent = pickle.dumps(split)  # to a worker process: the shards' paths, not their images
    assert len(sent) < 20_000 < split.shards[0].nbytes
    assert torch.equal(pickle.loads(sent)[5][0], image)


def test_all_lists_exactly_the_public_names_each_documented():
    page = PAGE.read_text()
    assert {"load", "Network", "Store", "prepare", "TrainConfig", "train", "InputError"} <= set(alexnet.__all__)
    for name in alexnet.__all__:
        assert getattr(alexnet, name) is not None
        assert f"alexnet.{name}" in page, name
    public = {n for n, v in vars(alexnet).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(alexnet.__all__)
    assert set(alexnet.__all__) <= set(dir(alexnet))
    with pytest.raises(AttributeError):
        alexnet.no_such_name  # noqa: B018


IMPORTS = """
import sys
{first}
print(sorted(m for m in ("alexnet.inference", "alexnet.config", "alexnet.training", "alexnet.data.store", "PIL")
             if m in sys.modules))
import alexnet.training
assert alexnet.train is alexnet.training.train and alexnet.TrainConfig and alexnet.load
"""


@pytest.mark.parametrize(("first", "loaded"), [
    ("import alexnet", "[]"),  # the rest is imported on first use
    ("import alexnet.training", None),  # the module imported first, as the command line does
])
def test_import_is_quick_and_train_is_the_function_whichever_import_comes_first(first, loaded):
    result = subprocess.run([sys.executable, "-c", IMPORTS.format(first=first)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    if loaded is not None:
        assert result.stdout.splitlines()[0] == loaded


BUILD = """
import logging, sys
from pathlib import Path
noise = logging.getLogger("torch.utils.cpp_extension")
noise.setLevel(logging.ERROR)  # its "No CUDA runtime" on import, which cpu_kernels quiets
import torch.utils.cpp_extension
from alexnet import kernels

noise.setLevel(logging.INFO)

def load(name, sources, build_directory, **kw):  # a build that takes no minute, or a cached load
    print("load", file=sys.stderr, flush=True)
    (Path(build_directory) / f"{name}.so").write_bytes(b"")
    return "module"

torch.utils.cpp_extension.load = load
print(kernels.cpu_kernels.__wrapped__(), kernels.cpu_kernels.__wrapped__(), logging.getLevelName(noise.level))
"""


def test_the_first_build_of_the_kernels_says_so_once_before_it_starts(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_EXTENSIONS_DIR": str(tmp_path), "ALEXNET_KERNELS": "1"}
    result = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "module module INFO\n"  # the second a cached load; torch's logger as it was
    assert result.stderr.splitlines() == ["building alexnet's C++ kernels for this machine (about a minute, once) ...",
                                          "load", "load"]


def test_the_examples_of_the_api_page_run(tmp_path, monkeypatch, capsys):
    photo_folder(tmp_path / "photos", 4, 2)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.S | re.M)
    assert len(blocks) >= 6
    namespace: dict = {}
    with torch.random.fork_rng():
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), namespace)
    out = capsys.readouterr().out
    assert "top-1 error" in out and namespace["fc7"].shape == (4, 512)
    assert namespace["run"].parent == Path("runs") and (namespace["run"] / "best.pt").is_file()
