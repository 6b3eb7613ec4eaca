"""torch.hub entry point. From a clone of this repository: torch.hub.load(CLONE_DIR, "alexnet", source="local",
weights=PATH); from GitHub, its "owner/name" (where it is published; the package names no home page) in place of
CLONE_DIR, without `source`. Within Python, alexnet.load(PATH) gives the network with its preprocessing and class
names (docs/api.md)."""

from torch import nn

from alexnet import checkpoint
from alexnet.errors import InputError
from alexnet.record import NetworkRecord, build_model

dependencies = ["torch", "numpy", "safetensors"]


def alexnet(arch: str | None = None, weights: str | None = None, num_classes: int | None = None,
            init: str | None = None, **fields) -> nn.Module:
    """AlexNet `arch` (alexnet.ARCHS; default "paper") for `num_classes` classes (default 1000) freshly initialized
    by `init`, `fields` the record's (NetworkRecord: lrn, dropout, width, remove, crop); or the network of a
    checkpoint, run folder or weights file (.safetensors) with its weights, in eval mode, as its record says."""
    if weights is None:
        return build_model(NetworkRecord.of(arch or "paper", num_classes or 1000, **fields), init)
    given = [name for name, value in (("num_classes", num_classes), ("init", init), *fields.items())
             if value is not None]
    if given:
        raise InputError(f"{weights} holds a network its record describes whole; {', '.join(given)} cannot change it")
    state = checkpoint.load(weights)
    if arch not in (None, state["network"].arch):
        raise InputError(f"{weights} holds a {state['network'].arch!r} network, not {arch!r}")
    return checkpoint.model_from(state)
