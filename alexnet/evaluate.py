"""Evaluation as in the paper: top-1 and top-5 error, one centre crop or ten patches, ensembles (§4.1, §6)."""

import contextlib
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .data.augment import Recipe, center_crop, ten_crop
from .data.folders import preprocess
from .data.loader import Loader, open_split
from .runtime import autocast, choose_device, choose_precision, keep_freed_memory, prepare_device

Member = tuple[nn.Module, Recipe]  # a network and the training statistics its inputs are normalized with


@dataclass
class Errors:
    """Top-1 and top-5 error rates over `count` images, and the mean cross-entropy where computed."""

    top1: float
    top5: float
    count: int
    loss: float = float("nan")

    def line(self) -> str:
        """One line for people."""
        return f"top-1 error {100 * self.top1:.2f}%, top-5 error {100 * self.top5:.2f}% on {self.count} images"


@torch.no_grad()
def probabilities(members: list[Member], images: torch.Tensor, crop: int = 224, crops: int = 1,
                  autocast: Callable | None = None) -> torch.Tensor:
    """Class probabilities of a batch of uint8 (B, 256, 256, 3) images: the softmax averaged over the
    patches (§4.1: the ten patches at test time) and over the networks (Table 2: an ensemble)."""
    if crops not in (1, 10):
        raise ValueError(f"crops must be 1 or 10, got {crops}")
    total = None
    for model, recipe in members:
        views = [center_crop(images, recipe, crop)] if crops == 1 else ten_crop(images, recipe, crop)
        for view in views:
            with autocast() if autocast else contextlib.nullcontext():
                p = F.softmax(model(view).float(), dim=1)
            total = p if total is None else total + p
    return total / (len(members) * len(views))


def wrong(probs: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many labels are not the top-1 class, and not among the top-5 classes."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return int((~hit[:, 0]).sum()), int((~hit.any(1)).sum())


def evaluate(members: list[Member], batches: Iterable, device: torch.device, crop: int = 224, crops: int = 1,
             autocast: Callable | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             progress=None) -> Errors:
    """Top-1/top-5 error of the (averaged) networks on batches of (uint8 images, labels, ...).

    With one network and one crop the mean cross-entropy is reported too. `reduce` sums the counts
    over processes (DDP), each of which has seen its own images.
    """
    for model, _ in members:
        model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # wrong top-1, wrong top-5, images, summed loss
    for images, labels, *_ in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        probs = probabilities(members, images, crop, crops, autocast)
        w1, w5 = wrong(probs, labels)
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        sums += torch.tensor([w1, w5, len(labels), nll], dtype=torch.float64)
        if progress is not None:
            progress.update(len(labels))
    if reduce is not None:
        sums = reduce(sums)
    w1, w5, n, nll = sums.tolist()
    if n == 0:
        raise ValueError("no images to evaluate")
    loss = nll / n if len(members) == 1 and crops == 1 else float("nan")
    return Errors(w1 / n, w5 / n, int(n), loss)


def top5(probs: torch.Tensor, names: list[str]) -> list[list[tuple[str, float]]]:
    """The five most probable class names with their probabilities, for each image."""
    values, indices = probs.topk(min(5, probs.shape[1]), dim=1)
    return [[(names[i], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)]


def load_members(paths: list[str]) -> tuple[list[dict], list[Member]]:
    """Checkpoints and their networks; the members of an ensemble must have the same classes."""
    states = [checkpoint.load(p) for p in paths]
    for state in states[1:]:
        if state["classes"] != states[0]["classes"]:
            raise ValueError(f"{state['path']} has {len(state['classes'])} classes, {states[0]['path']} has "
                             f"{len(states[0]['classes'])}: an ensemble needs the same classes")
    return states, [(checkpoint.model_from(s), checkpoint.recipe_from(s)) for s in states]


def evaluate_checkpoints(paths: list[str], data: str | None, split: str = "val", crops: int = 1,
                         batch_size: int = 128, device: str = "auto", precision: str = "auto",
                         progress: bool = True) -> Errors:
    """`alexnet eval`: the error of one checkpoint, or of several averaged (an ensemble), on a split."""
    from tqdm import tqdm

    keep_freed_memory()
    states, members = load_members(paths)
    source = open_split(data, split)
    if source.classes != states[0]["classes"]:
        raise ValueError(f"{states[0]['path']} has {len(states[0]['classes'])} classes; the data has "
                         f"{len(source.classes)}" + (" (other ones)" if len(source.classes) == len(
                             states[0]["classes"]) else ""))
    dev = choose_device(device)
    prepare_device(dev)
    members = [(m.to(dev).to(memory_format=torch.channels_last), r.to(dev)) for m, r in members]
    mixed = functools.partial(autocast, dev, choose_precision(precision, dev))
    loader = Loader(source, batch_size, shuffle=False, pin_memory=dev.type == "cuda")
    with tqdm(total=len(source.labels), unit="img", desc="eval", disable=not progress, leave=False) as bar:
        errors = evaluate(members, loader.epoch(0), dev, states[0]["crop"], crops, mixed, progress=bar)
    if len(loader.bad):
        print(loader.bad.summary())
    return errors


def predict_images(path: str, images: list[str], crops: int = 10) -> list[tuple[str, list[tuple[str, float]]]]:
    """`alexnet predict`: the five most probable classes of each image (§4.1 ten patches by default).

    An unreadable image raises BadImageError."""
    states, members = load_members([path])
    arrays = [preprocess(image) for image in images]
    probs = probabilities(members, torch.from_numpy(np.stack(arrays)), states[0]["crop"], crops)
    return list(zip(images, top5(probs, states[0]["names"]), strict=True))
