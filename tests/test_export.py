"""Weights in and out: export to safetensors, ONNX and torch.export with their metadata, torchvision's weights
in and `owt` back out to torchvision, and torch.hub."""

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from conftest import one_line_error, photo_store
from PIL import Image
from safetensors.torch import load_file, save_file

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data.augment import center_crop
from alexnet.data.folders import DEFAULT_DATA, imagenet_classes, preprocess
from alexnet.data.store import Store
from alexnet.errors import InputError
from alexnet.evaluate import evaluate_checkpoints, predict
from alexnet.export import check, export, model_card, read_metadata, read_record
from alexnet.features import extract_features
from alexnet.inference import load_network
from alexnet.lrn import FORMULAS
from alexnet.model import ARCHS, architecture_lrn
from alexnet.neighbors import find_neighbors
from alexnet.record import build_model
from alexnet.training import Trainer, open_data

ROOT = Path(__file__).resolve().parents[1]
PHOTO = sorted((DEFAULT_DATA / "val").glob("*/*"))[0]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A checkpoint of every variant on the built-in photos' 10 classes: one real snapshot, its weights
    swapped for each architecture's own, with the errors measured recorded as a run records them; the paper's
    layouts at their smallest (what an export must carry holds at any size, their full size is test_record's
    and test_model's), owt as torchvision has it."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg = TrainConfig(data=None, epochs=1, progress=False, width=0.125, crop=64)
    snapshot = Trainer(cfg, open_data(cfg), out).snapshot()
    snapshot["measured"] = {"data": "the built-in photos", "split": "val", "crops": 1, "images": 200,
                            "top1_error": 0.5, "top5_error": 0.25}
    paths, trained = {}, snapshot["network"]
    for arch in ARCHS:
        size = {"width": 1.0, "crop": 224} if arch == "owt" else {}
        record = dataclasses.replace(trained, arch=arch, lrn=architecture_lrn(arch), **size)
        paths[arch] = out / f"{arch}.pt"
        checkpoint.save(paths[arch], {**snapshot, "network": record, "model": build_model(record).state_dict()})
    yield paths
    shutil.rmtree(out)  # about 1 GB: freed when the module is done


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_of_every_variant_agrees_with_pytorch(ckpts, arch, tmp_path):
    out = tmp_path / f"{arch}.onnx"
    meta = export(ckpts[arch], out)
    agreement = check(ckpts[arch], out)  # in batches of 64: the last of the 200 photos' is a batch of 8
    assert agreement.images == 200
    assert agreement.max_logit_diff < 1e-4 and agreement.top5_same == 200, agreement.line()
    graph = onnx.load(str(out)).graph
    for value in (graph.input[0], graph.output[0]):  # a dynamic batch dimension, named for people
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    model = checkpoint.model_from(checkpoint.load(ckpts[arch]))
    assert read_metadata(out) == meta
    assert meta["arch"] == arch and meta["num_params"] == sum(p.numel() for p in model.parameters())
    assert meta["measured"]["top5_error"] == 0.25 and meta["names"][0] == "tench" and len(meta["classes"]) == 10
    if arch == "owt":
        assert meta["lrn"] == "none" and meta["lrn_formula"] is None
    else:
        formula = meta["lrn_formula"]
        assert (formula["alpha"], formula["k"]) == FORMULAS[meta["lrn"]]
        assert formula["towers"] == (2 if arch == "paper" else 1)
        assert formula["onnx_lrn"]["alpha"] == pytest.approx(5 * formula["alpha"])


def test_safetensors_loads_back_strictly_with_identical_logits(ckpts, tmp_path):
    out = tmp_path / "paper.safetensors"
    meta = export(ckpts["paper"], out)
    model = build_model(read_record(out))
    model.load_state_dict(load_file(out), strict=True)
    original, loaded = checkpoint.load(ckpts["paper"]), checkpoint.load(out)
    x = center_crop(torch.from_numpy(preprocess(PHOTO))[None], original["network"].recipe, original["network"].crop)
    with torch.no_grad():
        logits = checkpoint.model_from(original)(x)
        assert torch.equal(model.eval()(x), logits) and torch.equal(checkpoint.model_from(loaded)(x), logits)
    assert torch.equal(loaded["network"].recipe.mean, original["network"].recipe.mean)  # the mean image itself
    assert loaded["network"].to_json() == original["network"].to_json()  # the mean image itself, the formula
    assert (loaded["config"], loaded["measured"]) == (original["config"], original["measured"])
    assert meta["preprocessing"]["mean_image"] and meta["preprocessing"]["std"] == [pytest.approx(1 / 255)] * 3
    agreement = check(ckpts["paper"], out)
    assert (agreement.images, agreement.max_logit_diff, agreement.top5_same) == (200, 0.0, 200)


def test_every_command_that_takes_a_checkpoint_takes_a_weights_file(ckpts, tmp_path_factory, tmp_path, capsys):
    weights = tmp_path / "owt.safetensors"
    main(["export", str(ckpts["owt"]), str(weights)])
    assert "wrote" in capsys.readouterr().out
    pt, sf = str(ckpts["owt"]), str(weights)
    by_pt, by_sf = (predict(p, [str(PHOTO)], crops=1, device="cpu", precision="fp32").probs for p in (pt, sf))
    assert torch.equal(by_pt, by_sf)
    store = photo_store(tmp_path_factory, train=1, val=2)
    assert evaluate_checkpoints([sf], None, progress=False, device="cpu", precision="fp32") == evaluate_checkpoints(
        [pt], None, progress=False, device="cpu", precision="fp32")
    features = extract_features(pt, str(store), tmp_path / "features", "val", precision="fp32", progress=False)
    found = find_neighbors(sf, [str(PHOTO)], features, k=3)  # refused were the weights not the same
    assert len(found.records()[0]["neighbors"]) == 3


def test_a_torch_export_program_runs_without_the_package(ckpts, tmp_path):
    out = tmp_path / "caffenet.pt2"
    meta = export(ckpts["caffenet"], out)
    assert read_metadata(out) == meta
    x = torch.randn(3, 3, meta["crop"], meta["crop"], generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys; sys.modules['alexnet'] = None; import torch; "  # `import alexnet` fails from here on
            f"program = torch.export.load({str(out)!r}).module(); "
            f"torch.save(program(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    with torch.no_grad():
        expected = checkpoint.model_from(checkpoint.load(ckpts["caffenet"]))(x)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-5)
    agreement = check(ckpts["caffenet"], out)  # in batches of 64 and a last one of 8
    assert agreement.max_logit_diff < 1e-4 and agreement.top5_same == agreement.images == 200, agreement.line()


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    """torchvision's alexnet() state dict as torchvision publishes it (a .pth), with weights made here."""
    torch.manual_seed(0)
    net = torchvision.models.alexnet()
    with torch.no_grad():  # weights far from PyTorch's default init, so that the classes' logits differ
        for p in net.parameters():
            p.mul_(3)
    path = tmp_path_factory.mktemp("tv") / "alexnet-owt-test.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_torchvision_weights_come_in_with_its_preprocessing_and_go_back_out(torchvision_weights, tmp_path, capsys):
    weights, net = torchvision_weights
    main(["import-torchvision", str(weights), str(tmp_path / "tv.pt")])
    assert "1000 classes" in capsys.readouterr().out
    ours = load_network(str(tmp_path / "tv.pt"), "cpu", "fp32")
    assert ours.names == list(imagenet_classes().values()) and ours.crop == 224
    # the package's preprocessing of a photo against torchvision's own transforms
    theirs = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    photo = Image.open(PHOTO).convert("RGB").resize((500, 375))
    photo.save(tmp_path / "photo.png")
    x_ours = center_crop(torch.from_numpy(preprocess(tmp_path / "photo.png"))[None], ours.recipe, 224)
    x_theirs = theirs(photo)[None]
    assert (x_ours - x_theirs).abs().mean() < 0.01 and (x_ours - x_theirs).abs().max() < 0.1  # resampling apart
    with torch.no_grad():
        assert torch.allclose(ours.model(x_theirs), net(x_theirs), rtol=1e-4, atol=1e-3)  # channels-last apart
        top = predict(str(tmp_path / "tv.pt"), [str(tmp_path / "photo.png")], crops=1, device="cpu",
                      precision="fp32").top5()[0][1]
        assert top[0][0] == ours.names[int(net(x_theirs).argmax())]
    # and back: `owt` exported to safetensors is what torchvision.models.alexnet() loads with strict=True
    main(["export", str(tmp_path / "tv.pt"), str(tmp_path / "tv.safetensors")])
    back = torchvision.models.alexnet()
    back.load_state_dict(load_file(tmp_path / "tv.safetensors"), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), net.state_dict().values(), strict=True))
    meta = read_metadata(tmp_path / "tv.safetensors")["preprocessing"]
    assert (meta["resize_size"], meta["crop_size"], meta["mean_image"]) == (256, 224, False)
    assert meta["mean"] == pytest.approx(theirs.mean) and meta["std"] == pytest.approx(theirs.std)


def test_imported_torchvision_weights_evaluate_on_an_imagenet_store(torchvision_weights, tmp_path, capsys):
    """`alexnet eval --data STORE` of torchvision's weights on ImageNet's own validation layout (a flat folder
    and LOC_val_solution.csv, no train split: all 1000 classes), against torchvision's network on the store's
    pixels normalized as torchvision's transforms normalize them. fc8's rows of the photos' 10 classes are their
    mean fc7 features (the others 0), so that the errors depend on each photo and on its label's index."""
    net = copy.deepcopy(torchvision_weights[1])
    photos = sorted((DEFAULT_DATA / "val").glob("*/*"))[::10]  # 2 of each of the 10 classes
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    rows = []
    for n, photo in enumerate(photos, start=1):
        shutil.copy(photo, tmp_path / "imagenet" / "val" / f"ILSVRC2012_val_{n:08d}.JPEG")
        rows.append(f"ILSVRC2012_val_{n:08d},{photo.parent.name} 0 0 10 10")
    (tmp_path / "imagenet" / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    main(["prepare", str(tmp_path / "imagenet"), str(tmp_path / "store"), "--workers", "1"])
    val = Store(tmp_path / "store").split("val")
    labels = torch.as_tensor(val.labels)
    assert len(val.classes) == 1000 and [list(imagenet_classes())[i] for i in labels] == [p.parent.name for p in photos]
    pixels = torch.from_numpy(val.read(np.arange(len(photos)))).float()[:, 16:240, 16:240]  # the centre crop
    theirs = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    x = ((pixels / 255 - torch.tensor(theirs.mean)) / torch.tensor(theirs.std)).permute(0, 3, 1, 2)
    with torch.no_grad():
        fc7 = net.classifier[:6](torch.flatten(net.avgpool(net.features(x)), 1))
        fc8 = net.classifier[6]
        fc8.weight.zero_()
        fc8.bias.zero_()
        fc8.weight.index_add_(0, labels, fc7 / fc7.norm(dim=1, keepdim=True))
        top = net(x).topk(5, dim=1).indices
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    main(["import-torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "tv.pt")])
    capsys.readouterr()
    main(["eval", str(tmp_path / "tv.pt"), "--data", str(tmp_path / "store"), "--json", "--precision", "fp32"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    top1 = (top[:, 0] != labels).float().mean().item()
    top5 = (top != labels[:, None]).all(1).float().mean().item()
    assert got["images"] == len(photos) and top1 < 1  # the check below can tell a wrong label from a right one
    assert (got["top1_error"], got["top5_error"]) == (pytest.approx(top1), pytest.approx(top5))


def test_torch_hub_loads_the_model_from_a_local_checkout(ckpts, tmp_path):
    weights = tmp_path / "owt.safetensors"
    export(ckpts["owt"], weights)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for path in (ckpts["owt"], weights):
            model = torch.hub.load(str(ROOT), "alexnet", source="local", weights=str(path))
            assert torch.equal(model(x), checkpoint.model_from(checkpoint.load(ckpts["owt"]))(x))
    assert torch.hub.load(str(ROOT), "alexnet", source="local", arch="caffenet", num_classes=7).fc8.out_features == 7
    with pytest.raises(InputError, match="holds a 'owt' network"):
        torch.hub.load(str(ROOT), "alexnet", source="local", arch="paper", weights=str(weights))
    with pytest.raises(InputError, match="num_classes, width cannot change it"):
        torch.hub.load(str(ROOT), "alexnet", source="local", weights=str(weights), num_classes=7, width=0.5)


def test_bad_inputs_are_one_line_errors_and_leave_no_file(ckpts, torchvision_weights, tmp_path, capsys):
    one_line_error(capsys, ["export", str(tmp_path / "missing.pt"), str(tmp_path / "a.onnx")], "no checkpoint at")
    one_line_error(capsys, ["export", str(ckpts["owt"]), str(tmp_path / "a.bin")], "name the format")
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["export", str(ckpts["owt"]), str(tmp_path / "file" / "a.safetensors")], "File exists")
    main(["export", str(ckpts["owt"]), str(tmp_path / "new" / "a.safetensors")])  # its folder is made
    assert (tmp_path / "new" / "a.safetensors").is_file()
    written = (tmp_path / "new" / "a.safetensors").stat().st_mtime_ns
    one_line_error(capsys, ["export", str(ckpts["paper"]), str(tmp_path / "new" / "a.safetensors")],
                   "a.safetensors exists already; --overwrite replaces it")
    assert (tmp_path / "new" / "a.safetensors").stat().st_mtime_ns == written  # untouched
    main(["export", str(ckpts["paper"]), str(tmp_path / "new" / "a.safetensors"), "--overwrite"])
    assert checkpoint.load(tmp_path / "new" / "a.safetensors")["network"].arch == "paper"
    one_line_error(capsys, ["export", str(ckpts["owt"]), str(tmp_path / "b.safetensors"), "--format", "onnx"],
                   "b.safetensors: its suffix names safetensors, not onnx")
    (tmp_path / "fake.safetensors").write_bytes(b"not safetensors")
    one_line_error(capsys, ["eval", str(tmp_path / "fake.safetensors")], "is not a readable safetensors file")
    one_line_error(capsys, ["import-torchvision", str(ckpts["owt"]), str(tmp_path / "a.pt")], "is not a state dict")
    weights, _ = torchvision_weights
    bad = tmp_path / "ten.pth"
    torch.save(torchvision.models.alexnet(num_classes=10).state_dict(), bad)
    one_line_error(capsys, ["import-torchvision", str(bad), str(tmp_path / "a.pt")], "do not fit a 'owt' network")
    save_file(torch.load(weights, weights_only=True), tmp_path / "plain.safetensors")  # torchvision's, as is
    one_line_error(capsys, ["predict", str(tmp_path / "plain.safetensors"), str(PHOTO)], "not an alexnet weights file")
    left = ["fake.safetensors", "file", "new", "plain.safetensors", "ten.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == left
    # nothing written is overwritten by an export: not a checkpoint's name, not the file being exported
    trained = tmp_path / "copy.pt"
    shutil.copy(ckpts["owt"], trained)
    one_line_error(capsys, ["export", str(trained), str(trained), "--format", "safetensors"], ".pt is for checkpoints")
    weights_file = tmp_path / "weights.bin"  # safetensors under another name: known by its header
    export(trained, weights_file, "safetensors")
    one_line_error(capsys, ["export", str(weights_file), str(weights_file), "--format", "safetensors"],
                   "is the checkpoint being exported")
    assert checkpoint.load(trained)["network"].arch == checkpoint.load(weights_file)["network"].arch == "owt"
    export(trained, tmp_path / "a.onnx")
    one_line_error(capsys, ["predict", str(tmp_path / "a.onnx"), str(PHOTO)], "is an exported onnx file")
    one_line_error(capsys, ["predict", str(tmp_path), str(PHOTO)], "is a folder but not a run folder")
    for f in (trained, weights_file, tmp_path / "a.onnx"):
        f.unlink()
    main(["import-torchvision", str(weights), str(tmp_path / "tv.pt")])
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "tv.pt")], "holds a network's weights only")


def test_a_hugging_face_folder_is_read_by_every_command(ckpts, tmp_path, capsys):
    out, pt = tmp_path / "hf", str(ckpts["paper"])
    main(["export", pt, str(out), "--format", "hf", "--check"])
    assert "the same top-5 classes in the same order for 200/200" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = read_metadata(out)
    assert meta == read_metadata(out / "model.safetensors")
    assert meta["network"] == checkpoint.load(pt)["network"].to_json()
    card = (out / "README.md").read_text()
    for words in ("# AlexNet (paper), 10 classes", "50.00% top-1 and 25.00% top-5 error on 200 images of the "
                  "built-in photos (val, 1 crop)", "tench", "3. subtract: mean_image network.recipe.mean",
                  'alexnet.load("THIS_FOLDER")', "epochs 1"):
        assert words in card, words
    published = {**meta, "measured": None, "config": {"imported": "torchvision", "sha256": "7be5be79" + "0" * 56,
                                                      "weights": "alexnet-owt-7be5be79.pth"}}
    assert "torchvision reports 56.522% top-1 and 79.066% top-5 accuracy" in model_card(published)
    by_pt, by_hf = (predict(p, [str(PHOTO)], crops=1, device="cpu", precision="fp32").probs for p in (pt, str(out)))
    assert torch.equal(by_pt, by_hf)
    main(["predict", str(out), str(PHOTO)])
    assert capsys.readouterr().out
    # an existing folder: refused, or with --overwrite the earlier export's three files replaced, nothing else
    one_line_error(capsys, ["export", pt, str(out), "--format", "hf"], "is a folder with files in it; --overwrite")
    (out / "notes.txt").write_text("mine")
    main(["export", str(ckpts["caffenet"]), str(out), "--format", "hf", "--overwrite"])
    assert checkpoint.load(out)["network"].arch == "caffenet" and (out / "notes.txt").read_text() == "mine"
    run = tmp_path / "run"  # a run folder has a config.json of its own
    run.mkdir()
    shutil.copy(pt, run / "last.pt")
    (run / "config.json").write_text('{"data": null}')
    one_line_error(capsys, ["export", pt, str(run), "--format", "hf", "--overwrite"],
                   "holds files that are not an hf export's")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pt"]
    one_line_error(capsys, ["export", pt, str(run / "config.json"), "--format", "hf"], "is a file; --format hf writes")


def test_an_onnx_user_prepares_inputs_from_the_metadata_alone(ckpts, tmp_path):
    """Only onnx, onnxruntime, numpy and PIL: the metadata's preprocessing steps, the mean image among them, give
    the input the package gives, and the same logits."""
    out, photo = tmp_path / "paper.onnx", tmp_path / "photo.png"
    export(ckpts["paper"], out)
    Image.open(PHOTO).convert("RGB").resize((300, 220)).save(photo)
    code = f"""
import base64, json, sys
sys.modules["alexnet"] = None  # `import alexnet` fails from here on
import numpy as np, onnx, onnxruntime
from PIL import Image

meta = json.loads(next(p.value for p in onnx.load({str(out)!r}).metadata_props if p.key == "alexnet.json"))
x = Image.open({str(photo)!r}).convert("RGB")
for step in meta["preprocessing"]["steps"]:
    if step["op"] == "resize":
        (w, h), side = x.size, step["shorter_side"]
        x = np.asarray(x.resize((side, int(side * h / w)) if w <= h else (int(side * w / h), side), Image.BILINEAR))
    elif step["op"] == "center_crop":
        top, left = (x.shape[0] - step["size"]) // 2, (x.shape[1] - step["size"]) // 2
        x = x[top:top + step["size"], left:left + step["size"]]
    elif step["op"] == "subtract":
        recipe = meta["network"]["recipe"]
        x = x - np.frombuffer(base64.b64decode(recipe["mean"]), "<f4").reshape(recipe["mean_shape"])
    elif step["op"] == "multiply":
        x = x * np.float32(step["per_channel"])
    elif step["op"] == "to_tensor":
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)
session = onnxruntime.InferenceSession({str(out)!r}, providers=["CPUExecutionProvider"])
np.save("x.npy", x)
np.save("logits.npy", session.run(["logits"], {{"images": x}})[0])
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    state = checkpoint.load(ckpts["paper"])
    net = state["network"]
    assert net.preprocessing()["mean_image"]  # a mean image that varies over the pixels, not one colour
    x = center_crop(torch.from_numpy(preprocess(photo))[None], net.recipe, net.crop)
    theirs = torch.from_numpy(np.load(tmp_path / "x.npy"))
    assert theirs.shape == x.shape and (theirs - x).abs().max() <= 1  # PIL's resampling of a box or the whole
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(np.load(tmp_path / "logits.npy")), checkpoint.model_from(state)(x),
                              atol=1e-3)
