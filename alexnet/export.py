"""Weights in and out: a checkpoint's network as safetensors, ONNX or a torch.export program, each carrying
the network's record whole (record.py) and metadata as torchvision's weights enums have it; torchvision's
alexnet() weights in as a checkpoint.

    safetensors  the state dict under the model's own keys, the record and the metadata in its header;
                 every command that takes a checkpoint takes it (checkpoint.load)
    onnx         the eval-mode graph, LRN as plain operators, a dynamic batch dimension ("images" → "logits")
    pt2          the same graph as a torch.export program: torch.export.load needs no alexnet package
    hf           a folder in the Hugging Face layout: model.safetensors (as above), config.json (the metadata and
                 the record) and a model card README.md; every command that takes a checkpoint takes it
The metadata's preprocessing lists its steps, the mean image's place in the record among them, so that a user of
any format prepares inputs exactly as the package does.
"""

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__, checkpoint
from .checkpoint import FORMATS, HF_CONFIG, HF_WEIGHTS
from .data.augment import center_crop
from .data.folders import DEFAULT_DATA, imagenet_classes, list_images
from .data.stats import Recipe
from .errors import Failure, InputError, first_words
from .files import atomic_write, read_json, write_json, write_text
from .inference import network
from .lrn import BETA, FORMULAS, LRN, WINDOW
from .options import argument, option
from .record import NetworkRecord
from .summary import layer_table

METADATA = "alexnet.json"  # the metadata's key in an ONNX file's metadata_props and a .pt2's extra files
INPUT, OUTPUT, BATCH = "images", "logits", "batch"  # the graph's names: input, output, its dynamic dimension
# torchvision's preprocessing of its ImageNet weights (AlexNet_Weights.IMAGENET1K_V1.transforms()):
# shorter side to 256, centre crop 224, then (pixels / 255 - mean) / std
TORCHVISION_RESIZE, TORCHVISION_CROP = 256, 224
TORCHVISION_MEAN, TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TORCHVISION_URL_VARIABLE = "ALEXNET_TORCHVISION_URL"  # a mirror's URL of the .pth, its hash in its name as published
HF = "hf"  # the format of a folder in the Hugging Face layout
HF_FORMAT = "alexnet-hf-1"  # config.json's "format": the folders an --overwrite may write over
HF_CARD = "README.md"
CHECK_BATCH = 64  # images per batch of `check`: the built-in photos' 200 end in a short batch (dynamic batch)


@dataclass
class ExportConfig:
    """`alexnet export`'s arguments."""

    checkpoint: str = argument("a checkpoint file, run folder or weights file")
    out: str = argument(f"file to write; its suffix names the format ({', '.join(FORMATS)}); with --format {HF}, "
                        "a folder")
    format: str | None = option(None, f"the format (default: by OUT's suffix); {HF}: a folder in the Hugging Face "
                                      f"layout ({HF_WEIGHTS}, {HF_CONFIG}, a model card {HF_CARD})",
                                choices=(*FORMATS.values(), HF))
    check: bool = option(False, "then run the file (ONNX: with onnxruntime) and the checkpoint on the built-in "
                                "validation photos, and print the largest logit difference and the top-5 agreement")
    overwrite: bool = option(False, f"replace OUT where it exists (a folder: the three files of an earlier "
                                    f"--format {HF} export)")


@dataclass
class ImportTorchvisionConfig:
    """`alexnet import-torchvision`'s arguments."""

    weights: str | None = argument("a .pth file holding torchvision alexnet()'s state dict (not with --download)",
                                   nargs="?")
    out: str = argument("checkpoint file to write (.pt)")
    download: bool = option(False, "fetch torchvision's published ImageNet weights (AlexNet_Weights.IMAGENET1K_V1, "
                                   "233 MiB) into torch.hub's cache ($TORCH_HOME/hub/checkpoints), checked by "
                                   "torchvision's hash check, and import those (from a mirror: "
                                   f"${TORCHVISION_URL_VARIABLE})")
    progress: bool = option(True, "no progress bar")


def _lrn(model: nn.Module) -> dict | None:
    """The LRN formula a network computes, and the attributes of ONNX's LRN operator that compute the same."""
    lrn = next((m for m in model.modules() if isinstance(m, LRN) and m.mode != "none"), None)
    if lrn is None:
        return None
    alpha, k = FORMULAS[lrn.mode]
    return {"formula": lrn.mode, "expression": "b[i] = a[i] / (k + alpha * sum_{j=i-size/2}^{i+size/2} a[j]^2)^beta, "
                                               "over the channels of each of `towers` groups",
            "size": WINDOW, "alpha": alpha, "beta": BETA, "k": k, "towers": lrn.towers,
            # ONNX's LRN divides its alpha by size; it spans all channels, so one per tower
            "onnx_lrn": {"size": WINDOW, "alpha": alpha * WINDOW, "beta": BETA, "bias": k}}


def metadata(state: dict, model: nn.Module) -> dict:
    """What an exported network says about itself, as torchvision's weights enums do (their meta and transforms):
    architecture, LRN formula, parameters, multiply-adds, classes, preprocessing, the accuracy measured; beside
    it, in every format, the network's record whole ("network": the mean image itself, the RGB PCA, ...)."""
    net: NetworkRecord = state["network"]
    rows = layer_table(model, net.crop)
    lrn = _lrn(model)
    return {"arch": net.arch, "lrn": net.lrn, "lrn_formula": lrn, "dropout": net.dropout, "width": net.width,
            "remove": net.remove, "crop": net.crop, "num_params": sum(row.params for row in rows),
            "multiply_adds": sum(row.macs for row in rows), "classes": net.classes, "names": net.names,
            "preprocessing": {**net.preprocessing(), "steps": _steps(net)}, "measured": state.get("measured"),
            "config": state.get("config"), "exported_by": f"alexnet {__version__}"}


def _steps(net: NetworkRecord) -> list[dict]:
    """The preprocessing as steps to follow in order, from a decoded RGB image (height, width, 3; 0 to 255) to
    the network's input, the mean image (§2) named by its place in the metadata's record."""
    scale = [1.0] * 3 if net.recipe.scale is None else net.recipe.scale.tolist()
    return [{"op": "resize", "shorter_side": net.side, "interpolation": "bilinear, antialiased (PIL's BILINEAR)"},
            {"op": "center_crop", "size": net.side},
            {"op": "subtract", "mean_image": "network.recipe.mean", "encoding": "base64 little-endian float32, "
             "shape network.recipe.mean_shape (height, width, RGB)"},
            {"op": "center_crop", "size": net.crop},
            {"op": "multiply", "per_channel": scale},
            {"op": "to_tensor", "layout": f"float32 (N, 3, {net.crop}, {net.crop}), channels first"}]


def _program(model: nn.Module, crop: int) -> torch.export.ExportedProgram:
    """The eval-mode network traced by torch.export, with a dynamic batch dimension."""
    batch = torch.export.Dim(BATCH)
    return torch.export.export(model.eval(), (torch.zeros(2, 3, crop, crop),), dynamic_shapes=({0: batch},))


def _onnx_bytes(program: torch.export.ExportedProgram, meta: dict) -> bytes:
    """The program as one ONNX file (weights inside), with the metadata in its metadata_props."""
    import onnx_ir

    onnx = torch.onnx.export(program, dynamo=True, input_names=[INPUT], output_names=[OUTPUT], verbose=False)
    onnx.model.metadata_props[METADATA] = json.dumps(meta)
    proto = onnx_ir.to_proto(onnx.model)
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the exporter's own name, as "s77"
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = BATCH
    return proto.SerializeToString()


def _format(out: str | Path, fmt: str | None = None) -> str:
    """`fmt`, or the format OUT's suffix names; a suffix that names another format than `fmt` is refused."""
    if fmt == HF:  # a folder: any name
        return fmt
    named = FORMATS.get(Path(out).suffix)
    if fmt and named and named != fmt:
        raise InputError(f"{out}: its suffix names {named}, not {fmt}; name the {fmt} file with its own suffix")
    fmt = fmt or named
    if fmt not in FORMATS.values():
        raise InputError(f"{out}: name the format (--format {'|'.join(FORMATS.values())}) or use a suffix of "
                         f"{', '.join(FORMATS)}")
    return fmt


def export(ckpt: str | Path, out: str | Path, fmt: str | None = ExportConfig.format,
           overwrite: bool = ExportConfig.overwrite) -> dict:
    """`alexnet export`: write a checkpoint's network to `out` in `fmt` (default: by OUT's suffix); its metadata.
    A file at `out` is replaced only with `overwrite`."""
    fmt, out = _format(out, fmt), Path(out)
    if out.suffix == ".pt":  # a checkpoint's name: export writes none, and would replace one
        raise InputError(f"{out}: .pt is for checkpoints; name the {fmt} file with another suffix")
    state = checkpoint.load(ckpt)
    if out.exists() and out.samefile(state["path"]):
        raise InputError(f"{out} is the checkpoint being exported; write the {fmt} file elsewhere")
    if fmt == HF:
        _check_hf_folder(out, overwrite)
    elif out.exists() and not overwrite:
        raise InputError(f"{out} exists already; --overwrite replaces it")
    model = checkpoint.model_from(state)
    meta = metadata(state, model)
    whole = {**meta, "network": state["network"].to_json()}
    if fmt == "safetensors":  # the record beside the metadata in the header (checkpoint.save_weights)
        checkpoint.save_weights(out, state, meta)
    elif fmt == HF:  # the weights first, config.json last: until it is there the folder is not one to load
        checkpoint.save_weights(out / HF_WEIGHTS, state, meta)
        write_text(out / HF_CARD, model_card(whole))
        write_json(out / HF_CONFIG, {"format": HF_FORMAT, **whole})
    elif fmt == "onnx":
        data = _onnx_bytes(_program(model, meta["crop"]), whole)
        atomic_write(out, lambda f: f.write(data))
    else:
        program = _program(model, meta["crop"])
        atomic_write(out, lambda f: torch.export.save(program, f, extra_files={METADATA: json.dumps(whole)}))
    return whole


def _check_hf_folder(out: Path, overwrite: bool) -> None:
    """Refuse to write a Hugging Face folder over a file, a folder with files (without `overwrite`), or a folder
    holding anything but an earlier export (with it): only the export's own three files are written."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; --format {HF} writes a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise InputError(f"{out} is a folder with files in it; --overwrite replaces an earlier {HF} export's")
    try:
        ours = read_json(out / HF_CONFIG).get("format") == HF_FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise InputError(f"{out} holds files that are not an {HF} export's; write the folder elsewhere")


def model_card(meta: dict) -> str:
    """A Hugging Face model card (README.md) of an exported network: architecture, data set, recipe, the accuracy
    measured, the preprocessing and how to load it."""
    p, config, measured = meta["preprocessing"], meta.get("config") or {}, meta.get("measured")
    lrn = (f"{meta['lrn']} LRN (k={meta['lrn_formula']['k']}, alpha={meta['lrn_formula']['alpha']:g}, "
           f"beta={meta['lrn_formula']['beta']}, size {meta['lrn_formula']['size']})" if meta["lrn_formula"]
           else "no LRN")
    accuracy = (f"{100 * measured['top1_error']:.2f}% top-1 and {100 * measured['top5_error']:.2f}% top-5 error on "
                f"{measured['images']} images of {measured['data']} ({measured['split']}, "
                f"{measured['crops']} crop{'s' if measured['crops'] > 1 else ''})" if measured else "not measured")
    if config.get("imported"):
        from torchvision.models import AlexNet_Weights

        published = AlexNet_Weights.IMAGENET1K_V1
        data = f"ImageNet (ILSVRC-2012), {len(meta['classes'])} classes"
        recipe = (f"torchvision's (not this package's): its weights file {config.get('weights')}, SHA-256 "
                  f"{config.get('sha256')}" + (f", from {config['url']}" if config.get("url") else ""))
        if not measured and config.get("sha256", "").startswith(torch.hub.HASH_REGEX.search(published.url)[1]):
            top = published.meta["_metrics"]["ImageNet-1K"]
            accuracy = (f"not measured here; torchvision reports {top['acc@1']}% top-1 and {top['acc@5']}% top-5 "
                        "accuracy on ImageNet-1K's validation set (centre crop) for these weights (IMAGENET1K_V1)")
    else:
        data = f"{config.get('data') or 'the built-in photos'}, {len(meta['classes'])} classes"
        keys = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "augment", "seed")
        recipe = ", ".join(f"{k} {config[k]}" for k in keys if config.get(k) is not None) or "not recorded"
    steps = "\n".join(f"{n}. {step['op']}: " + ", ".join(f"{k} {v}" for k, v in step.items() if k != "op")
                      for n, step in enumerate(p["steps"], 1))
    names = ", ".join(meta["names"][:10]) + (", ..." if len(meta["names"]) > 10 else "")
    return f"""---
library_name: pytorch
pipeline_tag: image-classification
tags: [alexnet, image-classification, safetensors]
---

# AlexNet ({meta['arch']}), {len(meta['classes'])} classes

The network of Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks" (NIPS 2012), exported by {meta['exported_by']}.

## Architecture

`{meta['arch']}`: {lrn}, dropout {meta['dropout']}, width {meta['width']}, input {meta['crop']}x{meta['crop']},
{meta['num_params']:,} parameters, {meta['multiply_adds']:,} multiply-adds an image.

## Data set

{data}. Classes, in output order: {names}

## Recipe

{recipe}

## Accuracy

{accuracy}

## Preprocessing

From a decoded RGB image (height, width, 3; values 0 to 255), in order:

{steps}

The mean image is in {HF_CONFIG} and in the header of {HF_WEIGHTS} (`network.recipe`).

## How to load

```python
import alexnet
net = alexnet.load("THIS_FOLDER")            # the network, its preprocessing and class names
```

```bash
alexnet predict THIS_FOLDER photo.jpg        # every alexnet command takes this folder as a checkpoint
```

Without the package: `safetensors.torch.load_file("{HF_WEIGHTS}")` is the state dict under the model's own keys
(for `owt`, what `torchvision.models.alexnet(num_classes=...)` loads with `strict=True`).
"""


def read_metadata(path: str | Path) -> dict:
    """The metadata of an exported file, by its suffix (a folder: --format hf), with the network's record
    ("network", as JSON)."""
    path = Path(path)
    if path.is_dir():
        return {k: v for k, v in read_json(path / HF_CONFIG).items() if k != "format"}
    fmt = _format(path)
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            header = f.metadata()
        record = {"network": json.loads(header["network"])} if "network" in header else {}  # none in version 1
        return {**json.loads(header["metadata"]), **record}
    if fmt == "onnx":
        import onnx

        props = onnx.load(str(path), load_external_data=False).metadata_props
        return json.loads(next(p.value for p in props if p.key == METADATA))
    extra = {METADATA: ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[METADATA])


def read_record(path: str | Path) -> NetworkRecord:
    """The record of the network in an exported file of any format (a weights file of any version)."""
    if Path(path).is_dir() or _format(path) == "safetensors":
        return checkpoint.load(path)["network"]
    meta = read_metadata(path)
    if "network" not in meta:
        raise InputError(f"{path} was exported by an earlier alexnet, which wrote no network record into it; "
                         "export its checkpoint again")
    return NetworkRecord.from_json(meta["network"])


@dataclass
class Agreement:
    """How an exported file's logits compare with PyTorch's on the same images."""

    runtime: str
    images: int
    max_logit_diff: float
    top5_same: int  # images whose five highest logits (all, with fewer classes) name the same classes in order

    def line(self) -> str:
        """One line for people."""
        return (f"{self.runtime} against PyTorch on {self.images} built-in validation photos: largest logit "
                f"difference {self.max_logit_diff:.2g}, the same top-5 classes in the same order for "
                f"{self.top5_same}/{self.images}")


def check(ckpt: str | Path, exported: str | Path) -> Agreement:
    """Run an exported file (onnxruntime for ONNX, torch.export.load for .pt2, the package for safetensors) and
    the checkpoint it came from (PyTorch, float32, CPU) on the built-in validation photos; compare their logits."""
    fmt = HF if Path(exported).is_dir() else _format(exported)
    net = network(checkpoint.load(ckpt), "cpu", "fp32")
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
        runtime, run = f"onnxruntime {onnxruntime.__version__}", lambda x: torch.from_numpy(
            session.run([OUTPUT], {INPUT: x.contiguous().numpy()})[0])
    elif fmt == "pt2":
        runtime, run = "torch.export.load", torch.export.load(exported).module()
    else:  # safetensors, hf
        runtime, run = "the weights file", network(checkpoint.load(exported), "cpu", "fp32").model
    images = diff = same = 0
    photos, top = list_images(DEFAULT_DATA, "val").files, min(5, len(net.classes))
    with torch.no_grad():
        for first in range(0, len(photos), CHECK_BATCH):
            pixels = np.stack([net.preprocess(f) for f in photos[first:first + CHECK_BATCH]])
            x = center_crop(torch.from_numpy(pixels), net.recipe, net.crop)
            ours, theirs = net.model(x), run(x)
            images, diff = images + len(x), max(diff, float((ours - theirs).abs().max()))
            same += int((ours.topk(top).indices == theirs.topk(top).indices).all(1).sum())
    return Agreement(runtime, images, diff, same)


def import_torchvision(weights: str | Path, out: str | Path) -> NetworkRecord:
    """`alexnet import-torchvision`: torchvision's alexnet() state dict (a .pth) as an `owt` checkpoint with
    ImageNet's class names and torchvision's preprocessing; its record."""
    weights = Path(weights)
    if not weights.is_file():
        raise InputError(f"no weights file at {weights}")
    try:
        model = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{weights} is not a readable PyTorch file ({type(err).__name__})") from None
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise InputError(f"{weights} is not a state dict (a dict of tensors), as torchvision's weights files are")
    return _import(model, weights, {"weights": weights.name}, out)


def download_torchvision(out: str | Path, progress: bool = ImportTorchvisionConfig.progress) -> NetworkRecord:
    """`alexnet import-torchvision --download`: torchvision's published ImageNet weights
    (AlexNet_Weights.IMAGENET1K_V1, or the file at $ALEXNET_TORCHVISION_URL) fetched into torch.hub's cache and
    checked as torchvision's weights API does (torch.hub, check_hash), imported as by import_torchvision."""
    from urllib.parse import urlparse

    from torchvision.models import AlexNet_Weights

    url = os.environ.get(TORCHVISION_URL_VARIABLE) or AlexNet_Weights.IMAGENET1K_V1.url
    name = Path(urlparse(url).path).name
    if not torch.hub.HASH_REGEX.search(name):  # torch.hub checks nothing where the name carries no hash
        raise InputError(f"{TORCHVISION_URL_VARIABLE}={url}: its file name carries no hash, as torchvision's "
                         f"({Path(AlexNet_Weights.IMAGENET1K_V1.url).name}) does for its check")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    try:
        model = torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu",
                                                   weights_only=True)
    except RuntimeError as err:
        if not str(err).startswith("invalid hash value"):
            raise InputError(f"{cached} is not a readable PyTorch file ({first_words(err)}); remove it to "
                             "download it again") from None
        raise Failure(f"{url} failed torchvision's hash check ({err}): nothing was kept") from None
    except pickle.UnpicklingError as err:
        raise InputError(f"{cached} is not a readable PyTorch file ({first_words(err)}); remove it to download it "
                         "again") from None
    except OSError as err:  # URLError, HTTPError, a reset or timed-out connection
        raise Failure(f"could not download {url}: {getattr(err, 'reason', err)}") from None
    return _import(model, cached, {"weights": name, "url": url}, out)


def _import(model: dict, weights: Path, source: dict, out: str | Path) -> NetworkRecord:
    """Write the state dict `model` of torchvision's alexnet(), read from the file `weights` (`source` says
    where it came from), as an `owt` checkpoint at `out`; its record."""
    classes = imagenet_classes()
    mean = torch.tensor(TORCHVISION_MEAN) * 255
    # torchvision publishes no RGB principal components: no lighting noise (§4.1) should these weights train on
    recipe = Recipe(mean.expand(TORCHVISION_RESIZE, TORCHVISION_RESIZE, 3).clone(), torch.zeros(3), torch.eye(3),
                    1 / (255 * torch.tensor(TORCHVISION_STD)))
    record = NetworkRecord.of("owt", list(classes), list(classes.values()), crop=TORCHVISION_CROP, recipe=recipe)
    state = {"network": record, "model": model, "measured": None,
             "config": {"imported": "torchvision", **source,
                        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}
    checkpoint.model_from({**state, "path": str(weights)})  # raises InputError where the weights do not fit
    checkpoint.save(out, state)
    return record
