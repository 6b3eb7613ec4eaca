"""Weights in and out: a checkpoint's network as safetensors, ONNX or a torch.export program, each carrying
the network's record whole (record.py) and metadata as torchvision's weights enums have it; torchvision's
alexnet() weights in as a checkpoint.

    safetensors  the state dict under the model's own keys, the record and the metadata in its header;
                 every command that takes a checkpoint takes it (checkpoint.load)
    onnx         the eval-mode graph, LRN as plain operators, a dynamic batch dimension ("images" → "logits")
    pt2          the same graph as a torch.export program: torch.export.load needs no alexnet package
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__, checkpoint
from .checkpoint import FORMATS
from .data.augment import center_crop
from .data.folders import DEFAULT_DATA, imagenet_classes, list_images
from .data.stats import Recipe
from .errors import InputError
from .files import atomic_write
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
CHECK_BATCH = 64  # images per batch of `check`: the built-in photos' 200 end in a short batch (dynamic batch)


@dataclass
class ExportConfig:
    """`alexnet export`'s arguments."""

    checkpoint: str = argument("a checkpoint file, run folder or weights file")
    out: str = argument(f"file to write; its suffix names the format ({', '.join(FORMATS)})")
    format: str | None = option(None, "the format (default: by OUT's suffix)", choices=tuple(FORMATS.values()))
    check: bool = option(False, "then run the file (ONNX: with onnxruntime) and the checkpoint on the built-in "
                                "validation photos, and print the largest logit difference and the top-5 agreement")
    overwrite: bool = option(False, "replace OUT where it exists")


@dataclass
class ImportTorchvisionConfig:
    """`alexnet import-torchvision`'s arguments."""

    weights: str = argument("a .pth file holding torchvision alexnet()'s state dict")
    out: str = argument("checkpoint file to write (.pt)")


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
            "preprocessing": net.preprocessing(), "measured": state.get("measured"), "config": state.get("config"),
            "exported_by": f"alexnet {__version__}"}


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
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists already; --overwrite replaces it")
    model = checkpoint.model_from(state)
    meta = metadata(state, model)
    whole = {**meta, "network": state["network"].to_json()}
    if fmt == "safetensors":  # the record beside the metadata in the header (checkpoint.save_weights)
        checkpoint.save_weights(out, state, meta)
    elif fmt == "onnx":
        data = _onnx_bytes(_program(model, meta["crop"]), whole)
        atomic_write(out, lambda f: f.write(data))
    else:
        program = _program(model, meta["crop"])
        atomic_write(out, lambda f: torch.export.save(program, f, extra_files={METADATA: json.dumps(whole)}))
    return whole


def read_metadata(path: str | Path) -> dict:
    """The metadata of an exported file, by its suffix, with the network's record ("network", as JSON)."""
    path, fmt = Path(path), _format(path)
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
    if _format(path) == "safetensors":
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
    fmt = _format(exported)
    net = network(checkpoint.load(ckpt), "cpu", "fp32")
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
        runtime, run = f"onnxruntime {onnxruntime.__version__}", lambda x: torch.from_numpy(
            session.run([OUTPUT], {INPUT: x.contiguous().numpy()})[0])
    elif fmt == "pt2":
        runtime, run = "torch.export.load", torch.export.load(exported).module()
    else:
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
    classes = imagenet_classes()
    mean = torch.tensor(TORCHVISION_MEAN) * 255
    # torchvision publishes no RGB principal components: no lighting noise (§4.1) should these weights train on
    recipe = Recipe(mean.expand(TORCHVISION_RESIZE, TORCHVISION_RESIZE, 3).clone(), torch.zeros(3), torch.eye(3),
                    1 / (255 * torch.tensor(TORCHVISION_STD)))
    record = NetworkRecord.of("owt", list(classes), list(classes.values()), crop=TORCHVISION_CROP, recipe=recipe)
    state = {"network": record, "model": model, "measured": None,
             "config": {"imported": "torchvision", "weights": weights.name,
                        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}
    checkpoint.model_from({**state, "path": str(weights)})  # raises InputError where the weights do not fit
    checkpoint.save(out, state)
    return record
