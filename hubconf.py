"""torch.hub entry point: torch.hub.load("OWNER/alexnet", "alexnet", weights=PATH), or with the repository
checked out, torch.hub.load(REPO_DIR, "alexnet", source="local", weights=PATH)."""

from torch import nn

from alexnet import checkpoint
from alexnet.errors import InputError
from alexnet.model import build_model

dependencies = ["torch", "numpy", "safetensors"]


def alexnet(arch: str | None = None, weights: str | None = None, num_classes: int = 1000, **kwargs) -> nn.Module:
    """AlexNet `arch` (alexnet.ARCHS; default "paper") freshly initialized, or with the weights of a checkpoint,
    run folder or weights file (.safetensors), in eval mode; `kwargs` go to build_model (lrn, init, dropout)."""
    if weights is None:
        return build_model(arch or "paper", num_classes, **kwargs)
    state = checkpoint.load(weights)
    if arch not in (None, state["arch"]):
        raise InputError(f"{weights} holds a {state['arch']!r} network, not {arch!r}")
    return checkpoint.model_from(state)
