"""Checkpoints and weights files: what they hold, written atomically, read back in every version, checked.

A checkpoint (.pt: torch.save, read with torch.load(weights_only=True)) holds
    format               FORMAT
    network              the network's record (record.py): what rebuilds it and prepares its inputs
    model                its state dict
    config, measured     the run's configuration (as config.json), the validation errors of these weights
    epoch, best          epochs trained, the lowest validation top-1 error so far
    optimizer, schedule, step, total_steps, sums, planned, planned_epochs, data_digest, pretrained, rng, cuda_rng
                         a run's state, from which `train --resume` continues exactly (train.Trainer.snapshot)
A weights file (.safetensors) holds the state dict under the model's own keys, and in its header the record and
the metadata of an export (export.metadata); every command that takes a checkpoint takes it, and a folder in the
Hugging Face layout (`export --format hf`: its model.safetensors beside config.json and a model card).
"""

import json
from pathlib import Path

import torch
from torch import nn

from .errors import InputError, first_words
from .files import atomic_write
from .record import NetworkRecord, build_model
from .run_folder import BEST, LAST

FORMAT = "alexnet-checkpoint-2"  # 1: the network's record at the top level (record.VERSION 1)
FORMATS_READ = ("alexnet-checkpoint-1", FORMAT)
WEIGHTS_FORMAT = "alexnet-safetensors-2"  # 1: the record's fields in the metadata, its recipe beside them
WEIGHTS_FORMATS_READ = ("alexnet-safetensors-1", WEIGHTS_FORMAT)
# Every file a network travels in, by suffix: checkpoints (.pt) and weights files are read back; the others are
# exported for other programs (export.py)
FORMATS = {".safetensors": "safetensors", ".onnx": "onnx", ".pt2": "pt2"}
WEIGHTS_SUFFIX = ".safetensors"
HF_WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"  # what makes a folder one in the Hugging Face layout
# What a checkpoint says beside its network's record and weights, which inference keeps (inference.Network.info):
# where it was read from, its run's configuration and progress, the validation errors measured of these weights
INFO = ("path", "config", "epoch", "best", "measured")
# The record's fields that a version-1 checkpoint held at its top level
_RECORD_V1 = ("arch", "classes", "names", "lrn", "dropout", "width", "remove", "crop", "recipe")


def save(path: Path, state: dict) -> None:
    """Write `state` (its "network" a NetworkRecord; tensors, numbers, strings, lists, dicts) to `path` through a
    temporary file."""
    saved = {"format": FORMAT, **state, "network": state["network"].to_state()}
    atomic_write(path, lambda f: torch.save(saved, f))


def load(path: str | Path) -> dict:
    """Read a checkpoint (a run folder: its best.pt, else its last.pt) or a weights file (.safetensors, see
    save_weights; a Hugging Face folder: its model.safetensors) of any version, its "network" as a NetworkRecord;
    a missing, truncated or foreign file raises InputError with a one-line reason."""
    path = Path(path)
    if path.is_dir():
        folder = path
        path = folder / HF_WEIGHTS if is_hf(folder) else of_run(folder)
        if not path.is_file():
            raise InputError(f"{folder} is a folder but not a run folder (no {LAST} or {BEST} in it), nor a "
                             f"Hugging Face one ({HF_WEIGHTS} and {HF_CONFIG})")
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    if path.suffix in FORMATS and path.suffix != WEIGHTS_SUFFIX:
        raise InputError(f"{path} is an exported {FORMATS[path.suffix]} file, for other programs; give a checkpoint "
                         f"(.pt), a run folder or a {WEIGHTS_SUFFIX} weights file")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == WEIGHTS_SUFFIX or head[8:] == b"{":  # safetensors: a header's length, then its JSON
        return _load_weights(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, a pickle with arbitrary objects
        raise InputError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first_words(err)})") from None
    if not isinstance(state, dict) or state.get("format") not in FORMATS_READ:
        raise InputError(f"{path} is not an alexnet checkpoint")
    try:
        if state["format"] == FORMAT:
            network = NetworkRecord.from_state(state.get("network"))
        else:
            network = NetworkRecord.from_state({k: state.pop(k) for k in _RECORD_V1 if k in state}, state.get("model"))
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    return {**state, "format": FORMAT, "network": _trained(network, path), "path": str(path)}


def _trained(network: NetworkRecord, path: Path) -> NetworkRecord:
    """`network`, whose record must hold the preprocessing's statistics its inputs are prepared with."""
    if network.recipe is None:
        raise InputError(f"{path}: its network record has no recipe (the mean image and RGB PCA to feed it with)")
    return network


def is_hf(folder: Path) -> bool:
    """Whether a folder is in the Hugging Face layout: its weights (model.safetensors) beside config.json."""
    return (folder / HF_WEIGHTS).is_file() and (folder / HF_CONFIG).is_file()


def of_run(folder: Path) -> Path:
    """A run folder's checkpoint to use: best.pt, or last.pt where none is best yet (within the first epoch)."""
    return folder / BEST if (folder / BEST).is_file() else folder / LAST


def model_from(state: dict) -> nn.Module:
    """The network of a loaded checkpoint, with its weights, in eval mode."""
    net = state["network"]
    bad = next((k for k, v in state["model"].items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None:  # its every answer would be NaN: an error of "nan%", not a result
        raise InputError(f"{state['path']}: its weights hold NaN or infinite values ({bad})")
    model = build_model(net)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise InputError(f"{state['path']}: its weights do not fit a {net.arch!r} network with "
                         f"{len(net.classes)} classes ({str(err).splitlines()[1].strip()[:120]})") from None
    return model.eval()


def save_weights(path: str | Path, state: dict, metadata: dict) -> None:
    """Write a checkpoint's network as safetensors: the state dict under its own keys (so that build_model, and
    torchvision for `owt`, load it with strict=True), and in the header the network's record whole and
    `metadata` (JSON), so that it loads back as the checkpoint it came from, for inference."""
    from safetensors.torch import save

    header = {"format": WEIGHTS_FORMAT, "network": json.dumps(state["network"].to_json()),
              "metadata": json.dumps(metadata)}
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    atomic_write(path, lambda f: f.write(save(tensors, header)))


def _load_weights(path: Path) -> dict:
    """A weights file (save_weights, of any version) as the checkpoint it was written from."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            header, model = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # truncated, not safetensors
        raise InputError(f"{path} is not a readable safetensors file ({first_words(err)})") from None
    if header.get("format") not in WEIGHTS_FORMATS_READ:
        raise InputError(f"{path} is not an alexnet weights file (a state dict of torchvision's? see "
                         "`alexnet import-torchvision`)")
    try:
        metadata = json.loads(header["metadata"])
        if header["format"] == WEIGHTS_FORMAT:
            network = NetworkRecord.from_json(json.loads(header["network"]))
        else:  # version 1: the record's fields in the metadata, the recipe beside it
            fields = {k: metadata[k] for k in _RECORD_V1 if k in metadata}
            network = NetworkRecord.from_json({**fields, "recipe": json.loads(header["recipe"])}, model)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    except (KeyError, ValueError) as err:  # a header cut or edited: JSON that does not parse, a key missing
        raise InputError(f"{path} is not a readable alexnet weights file ({type(err).__name__} {err})") from None
    return {"format": FORMAT, "network": _trained(network, path), "model": model, "config": metadata.get("config"),
            "measured": metadata.get("measured"), "path": str(path)}
