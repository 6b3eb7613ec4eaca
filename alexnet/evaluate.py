"""Evaluation as in the paper: top-1 and top-5 error, one centre crop or ten patches, ensembles (§4.1, §6),
and the predictions of image files."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .data.augment import center_crop, ten_crop
from .data.folders import known_class
from .data.loader import Loader
from .data.sources import open_split, prepared_root
from .errors import InputError
from .inference import Network, load_networks
from .options import COUNT, argument, option, png
from .runtime import PRECISIONS

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass
class EvalConfig:
    """`alexnet eval`'s arguments."""

    checkpoints: list[str] = argument("checkpoint files or run folders", nargs="+")
    data: str | None = option(None, "a store or an image folder (default: the one the first checkpoint was trained "
                                    "on; the built-in photos where it records none)")
    split: str = option("val", "split to evaluate")
    crops: int = option(1, "1: centre crop; 10: ten patches", choices=(1, 10))
    batch_size: int = option(128, "images per batch", accepts=COUNT)
    device: str = option("auto", "auto, cpu, cuda, ...")
    precision: str = option("auto", "arithmetic precision", choices=PRECISIONS)
    json: bool = option(False, "print the result as JSON")


@dataclass
class PredictConfig:
    """`alexnet predict`'s arguments."""

    checkpoint: str = argument("a checkpoint file or run folder")
    images: list[str] = argument("image files", nargs="+")
    crops: int = option(10, "1: centre crop; 10: ten patches", choices=(1, 10))
    device: str = option("auto", "auto, cpu, cuda, ...")
    precision: str = option("auto", "arithmetic precision", choices=PRECISIONS)
    json: bool = option(False, "print the result as JSON")
    plot: str | None = option(None, "also draw Figure 4 (left): each centre crop with its top-5 bars, the true "
                                    "class (from the image's folder or file name) in red", parse=png, metavar="PNG")
    plot_columns: int = option(4, "images per row of the plot", accepts=COUNT)


@dataclass
class Errors:
    """Top-1 and top-5 error rates over `count` images of `classes` classes, and the mean cross-entropy where
    computed."""

    top1: float
    top5: float
    count: int
    classes: int
    loss: float = float("nan")

    def line(self) -> str:
        """One line for people."""
        few = f" (of {self.classes} classes, all are in the top 5)" if 0 < self.classes <= 5 else ""
        return f"top-1 error {100 * self.top1:.2f}%, top-5 error {100 * self.top5:.2f}%{few} on {self.count} images"


@torch.no_grad()
def probabilities(networks: list[Network], images: torch.Tensor, crops: int = 1) -> torch.Tensor:
    """Class probabilities of a batch of uint8 (B, side, side, 3) images: the softmax averaged over the
    patches (§4.1: the ten patches at test time) and over the networks (Table 2: an ensemble)."""
    if crops not in (1, 10):
        raise InputError(f"crops must be 1 or 10, got {crops}")
    total = None
    for net in networks:
        x = images.to(net.device, non_blocking=True)
        views = [center_crop(x, net.recipe, net.crop)] if crops == 1 else ten_crop(x, net.recipe, net.crop)
        for view in views:
            with net.autocast():
                p = F.softmax(net.model(view).float(), dim=1)
            total = p if total is None else total + p
    return total / (len(networks) * len(views))


def wrong(probs: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many labels are not the top-1 class, and not among the top-5 classes."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return int((~hit[:, 0]).sum()), int((~hit.any(1)).sum())


def evaluate(networks: list[Network], batches: Iterable, crops: int = 1,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: "tqdm | None" = None) -> Errors:
    """Top-1/top-5 error of the (averaged) networks on batches of (uint8 images, labels, ...).

    With one network and one crop the mean cross-entropy is reported too. `reduce` sums the counts
    over processes (DDP), each of which has seen its own images.
    """
    for net in networks:
        net.model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # wrong top-1, wrong top-5, images, summed loss
    classes = 0
    for images, labels, *_ in batches:
        probs = probabilities(networks, images, crops)
        labels, classes = labels.to(probs.device), probs.shape[1]
        w1, w5 = wrong(probs, labels)
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        sums += torch.tensor([w1, w5, len(labels), nll], dtype=torch.float64)
        if progress is not None:
            progress.update(len(labels))
    if reduce is not None:
        sums = reduce(sums)
    w1, w5, n, nll = sums.tolist()
    if n == 0:
        raise InputError("no images to evaluate")
    loss = nll / n if len(networks) == 1 and crops == 1 else float("nan")
    return Errors(w1 / n, w5 / n, int(n), classes, loss)


def top5(probs: torch.Tensor, names: list[str]) -> list[list[tuple[str, float]]]:
    """The five most probable class names with their probabilities, for each image."""
    values, indices = probs.topk(min(5, probs.shape[1]), dim=1)
    return [[(names[i], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)]


def top5_records(top: list[tuple[str, float]]) -> list[dict]:
    """One image's top-5 (see top5) as JSON records: {"class": name, "probability": p}, most probable first."""
    return [{"class": name, "probability": p} for name, p in top]


def evaluate_checkpoints(paths: list[str], data: str | None, split: str = EvalConfig.split,
                         crops: int = EvalConfig.crops, batch_size: int = EvalConfig.batch_size,
                         device: str = EvalConfig.device, precision: str = EvalConfig.precision,
                         progress: bool = True) -> Errors:
    """`alexnet eval`: the error of one checkpoint, or of several averaged (an ensemble), on a split of `data`,
    by default the data set the first checkpoint was trained on (the built-in photos where it records none)."""
    from tqdm import tqdm

    networks = load_networks(paths, device, precision)
    first = networks[0]
    saved = first.info.get("config") or {}  # a run's; an import's has no data set
    recorded = data is None and "data" in saved
    data = saved["data"] if recorded else data
    source = open_split(prepared_root(data), split, saved.get("val_fraction", 0) if recorded else 0)
    for net in networks:
        net.check_side(source, data or "the built-in photos")
    if source.classes != first.classes:
        which = "other ones" if len(source.classes) == len(first.classes) else len(source.classes)
        where = "the built-in photos have" if data is None else f"{data} has" if recorded else "the data has"
        hint = "; give --data" if data is None and not recorded else ""
        raise InputError(f"{first.info['path']} has {len(first.classes)} classes; {where} {which}{hint}")
    loader = Loader(source, batch_size, shuffle=False, pin_memory=first.device.type == "cuda")
    with tqdm(total=len(source), unit="img", desc="eval", disable=not progress, leave=False) as bar:
        errors = evaluate(networks, loader.epoch(0), crops, progress=bar)
    if len(loader.bad):
        print(loader.bad.summary())
    return errors


@dataclass
class Predictions:
    """Images with their class probabilities: what `alexnet predict` prints and plots."""

    images: list[str]
    pixels: np.ndarray  # uint8 (N, side, side, 3): each image after the preprocessing (§2)
    probs: torch.Tensor  # (N, classes), on the CPU
    classes: list[str]
    names: list[str]
    crop: int
    crops: int
    checkpoint: str

    def truth(self) -> list[int | None]:
        """Each image's class where its location tells it (see known_class)."""
        return [known_class(image, self.classes) for image in self.images]

    def top5(self) -> list[tuple[str, list[tuple[str, float]]]]:
        """Each image with its five most probable class names and their probabilities."""
        return list(zip(self.images, top5(self.probs, self.names), strict=True))


def predict(path: str, images: list[str], crops: int = PredictConfig.crops, device: str = PredictConfig.device,
            precision: str = PredictConfig.precision) -> Predictions:
    """`alexnet predict`: the class probabilities of image files (§4.1: averaged over ten patches by default).

    An unreadable image raises BadImageError."""
    (net,) = load_networks([path], device, precision)
    pixels = np.stack([net.preprocess(image) for image in images])
    probs = probabilities([net], torch.from_numpy(pixels), crops).cpu()
    return Predictions(list(images), pixels, probs, net.classes, net.names, net.crop, crops, net.info["path"])
