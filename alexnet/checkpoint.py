"""Checkpoints: written atomically, read with torch.load(weights_only=True), checked before use."""

from pathlib import Path

import torch
from torch import nn

from .data.stats import Recipe
from .errors import InputError
from .files import atomic_write
from .model import build_model

FORMAT = "alexnet-checkpoint-1"


def save(path: Path, state: dict) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` through a temporary file."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: str | Path) -> dict:
    """Read a checkpoint (a run folder: its best.pt, else its last.pt); a missing, truncated or foreign file
    raises ValueError or FileNotFoundError with a one-line reason."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, a pickle with arbitrary objects
        raise InputError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not an alexnet checkpoint")
    state["path"] = str(path)
    return state


def model_from(state: dict) -> nn.Module:
    """The network of a checkpoint, with its weights, in eval mode."""
    model = build_model(state["arch"], len(state["classes"]), lrn=state["lrn"], dropout=state["dropout"],
                        width=state.get("width", 1.0), crop=state["crop"], remove=state.get("remove"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise InputError(f"{state['path']}: its weights do not fit a {state['arch']!r} network with "
                         f"{len(state['classes'])} classes ({str(err).splitlines()[1].strip()[:120]})") from None
    return model.eval()


def recipe_from(state: dict) -> Recipe:
    """The training set's mean image and RGB principal components that the network was trained with."""
    r = state["recipe"]
    return Recipe(r["mean"], r["eigval"], r["eigvec"])
