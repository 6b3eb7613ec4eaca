"""Fine-tuning: a run that starts from trained weights (`train --weights W`) where another starts from an
initialization.

W is anything checkpoint.load reads: a checkpoint, a run folder, a weights file, an imported torchvision network.
The run's network is W's (its record's SHAPE) with the data's classes; its preprocessing is W's too (the mean image
and input scale its first layer learned to take), while the colour noise (§4.1) takes the principal components of
the data, whose colours it varies. fc8 is W's where the classes are W's own, else replaced and initialized by the
run's --init. --freeze and --pretrained-lr act on the layers loaded (optim.parameter_groups); a resumed run reads
its weights, and which layers came from W, from its own checkpoint, never from W again.
"""

import dataclasses
import hashlib

from torch import nn

from . import checkpoint
from .config import TrainConfig, weights_file
from .data.stats import Recipe
from .errors import InputError, count
from .model import LAYERS
from .options import flag

SHAPE = ("arch", "lrn", "width", "remove", "crop")  # what a fine-tuned network keeps of its weights' record


def digest(path: str) -> str:
    """The SHA-256 of a file, read a megabyte at a time."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def source(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """The configuration of a run that starts from --weights, with their network's SHAPE, their file's absolute path
    and digest; and the weights, loaded. InputError where an option of the SHAPE asks for another value than theirs,
    or where a run restarted from its configuration finds another file than the one it started from."""
    path = weights_file(cfg.weights)
    try:
        state = checkpoint.load(path)
    except InputError as err:
        raise InputError(f"--weights: {err}") from None
    net = state["network"]
    for name in SHAPE:
        given, theirs = getattr(cfg, name), getattr(net, name)
        if given != TrainConfig.__dataclass_fields__[name].default and given != theirs:
            raise InputError(f"{flag(name)} {given}: the network of {path} has {name} {theirs or 'none'}, and a "
                             f"fine-tuned network keeps it (leave {flag(name)} out)")
    sha = digest(path)
    if cfg.weights_digest not in (None, sha):
        raise InputError(f"{path} has changed since the run started from it (its SHA-256 was "
                         f"{cfg.weights_digest[:12]}..., is {sha[:12]}...)")
    return dataclasses.replace(cfg, weights=path, weights_digest=sha, **{k: getattr(net, k) for k in SHAPE}), state


def preprocessing(weights: Recipe, data: Recipe, path: str) -> Recipe:
    """The recipe of a run from weights trained with the recipe `weights`, on data with the recipe `data`: the
    weights' mean image and input scale, the data's RGB principal components (§4.1). InputError where the data's
    images are not the side of the weights' mean image, whose crops are taken where the images' are."""
    side, theirs = data.mean.shape[0], weights.mean.shape[0]
    if side != theirs:
        raise InputError(f"{path} was trained on {theirs}×{theirs} images and the data's are {side}×{side}: "
                         f"prepare the data with --size {theirs}")
    return Recipe(weights.mean, data.eigval, data.eigvec, weights.scale)


def load_layers(model: nn.Module, start: dict, classes: list[str]) -> tuple[str, ...]:
    """Copy the layers of the loaded weights `start` into `model`, a network of their shape on `classes`: every one,
    but fc8 where `classes` are not theirs (it keeps `model`'s initialization). The layers copied."""
    theirs, mine = checkpoint.model_from(start).layers(), model.layers()
    copied = tuple(name for name in mine if name != "fc8" or start["network"].classes == classes)
    for name in copied:
        mine[name].load_state_dict(theirs[name].state_dict())
    return copied


def start_line(start: dict, classes: list[str], init: str, init_reason: str) -> str:
    """What a run takes from its weights, in words, for its first line."""
    theirs = start["network"].classes
    if theirs == classes:
        fc8 = f"fc8 kept (their {count(len(classes), 'class')})"
    else:
        other = " (other classes)" if len(theirs) == len(classes) else ""
        fc8 = (f"fc8 replaced: {len(theirs)} -> {count(len(classes), 'class')}{other}, initialized by {init} "
               f"({init_reason})")
    return f"from {start['path']} (its preprocessing, the data's colour PCA): {fc8}"


def freeze(model: nn.Module, layer: str | None) -> tuple[str, ...]:
    """--freeze: `layer` and the layers below it take no gradient (requires_grad False), so that no step and no
    weight decay reaches them (optim.parameter_groups leaves them out). The layers frozen."""
    if layer is None:
        return ()
    frozen = tuple(name for name in model.layers() if LAYERS.index(name) <= LAYERS.index(layer))
    for name in frozen:
        model.layers()[name].requires_grad_(False)
    return frozen
