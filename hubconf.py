"""torch.hub entry point: torch.hub.load("OWNER/alexnet", "alexnet", weights=PATH), or with the repository
checked out, torch.hub.load(REPO_DIR, "alexnet", source="local", weights=PATH)."""

from torch import nn

from alexnet import checkpoint
from alexnet.errors import InputError
from alexnet.record import NetworkRecord, build_model

dependencies = ["torch", "numpy", "safetensors"]


def alexnet(arch: str | None = None, weights: str | None = None, num_classes: int = 1000, init: str | None = None,
            **fields) -> nn.Module:
    """AlexNet `arch` (alexnet.ARCHS; default "paper") freshly initialized by `init`, or with the weights of a
    checkpoint, run folder or weights file (.safetensors), in eval mode; `fields` are the record's
    (NetworkRecord: lrn, dropout, width, remove, crop)."""
    if weights is None:
        return build_model(NetworkRecord.of(arch or "paper", num_classes, **fields), init)
    state = checkpoint.load(weights)
    if arch not in (None, state["network"].arch):
        raise InputError(f"{weights} holds a {state['network'].arch!r} network, not {arch!r}")
    return checkpoint.model_from(state)
