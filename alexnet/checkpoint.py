"""Checkpoints: written atomically, read with torch.load(weights_only=True), checked before use; and weights
files (safetensors), which every command that takes a checkpoint reads the same way."""

import base64
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.stats import Recipe
from .errors import InputError
from .files import atomic_write
from .model import build_model
from .run_folder import BEST, LAST

FORMAT = "alexnet-checkpoint-1"
WEIGHTS_FORMAT = "alexnet-safetensors-1"
WEIGHTS_SUFFIX = ".safetensors"
# what a weights file's metadata must say of its checkpoint, beside the weights and the recipe: all that
# inference needs
WEIGHTS_INFO = ("arch", "lrn", "dropout", "crop", "classes", "names", "config", "measured")


def save(path: Path, state: dict) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` through a temporary file."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: str | Path) -> dict:
    """Read a checkpoint (a run folder: its best.pt, else its last.pt) or a weights file (.safetensors, see
    save_weights); a missing, truncated or foreign file raises InputError with a one-line reason."""
    path = Path(path)
    if path.is_dir():
        path = of_run(path)
        if not path.is_file():
            raise InputError(f"{path.parent} is a folder but not a run folder (no {LAST} or {BEST} in it)")
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    from .export import FORMATS

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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not an alexnet checkpoint")
    state["path"] = str(path)
    return state


def of_run(folder: Path) -> Path:
    """A run folder's checkpoint to use: best.pt, or last.pt where none is best yet (within the first epoch)."""
    return folder / BEST if (folder / BEST).is_file() else folder / LAST


def first_words(err: Exception, most: int = 100) -> str:
    """The start of an exception's message: its first sentence, cut at a word within `most` characters."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
    return line if len(line) <= most else line[:most].rsplit(" ", 1)[0] + " ..."


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
    """The training set's mean image and RGB principal components that the network was trained with (and the
    input scale of imported torchvision weights)."""
    r = state["recipe"]
    return Recipe(r["mean"], r["eigval"], r["eigvec"], r.get("scale"))


def save_weights(path: str | Path, state: dict, metadata: dict) -> None:
    """Write a checkpoint's network as safetensors: the state dict under its own keys (so that build_model, and
    torchvision for `owt`, load it with strict=True), and in the header the recipe and `metadata` (JSON, with
    the checkpoint's WEIGHTS_INFO), so that it loads back as the checkpoint it came from, for inference."""
    from safetensors.torch import save

    r = state["recipe"]
    mean = r["mean"].float().contiguous().numpy()
    recipe = {"mean": base64.b64encode(mean.astype("<f4").tobytes()).decode(), "mean_shape": list(mean.shape),
              "eigval": r["eigval"].tolist(), "eigvec": r["eigvec"].tolist(),
              "scale": None if r.get("scale") is None else r["scale"].tolist()}
    header = {"format": WEIGHTS_FORMAT, "recipe": json.dumps(recipe), "metadata": json.dumps(metadata)}
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    atomic_write(path, lambda f: f.write(save(tensors, header)))


def _load_weights(path: Path) -> dict:
    """A weights file (save_weights) as the checkpoint it was written from."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            header, model = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # truncated, not safetensors
        raise InputError(f"{path} is not a readable safetensors file ({first_words(err)})") from None
    if header.get("format") != WEIGHTS_FORMAT:
        raise InputError(f"{path} is not an alexnet weights file (a state dict of torchvision's? see "
                         "`alexnet import-torchvision`)")
    r = json.loads(header["recipe"])
    mean = np.frombuffer(base64.b64decode(r["mean"]), "<f4").reshape(r["mean_shape"])
    recipe = {"mean": torch.from_numpy(mean.copy()), "eigval": torch.tensor(r["eigval"]),
              "eigvec": torch.tensor(r["eigvec"])}
    if r["scale"] is not None:
        recipe["scale"] = torch.tensor(r["scale"])
    metadata = json.loads(header["metadata"])
    return {"format": FORMAT, **{k: metadata[k] for k in WEIGHTS_INFO}, "model": model, "recipe": recipe,
            "path": str(path)}
