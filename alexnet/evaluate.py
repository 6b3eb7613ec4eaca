"""Evaluation as in the paper: top-1 and top-5 error, one centre crop or ten patches, ensembles (§4.1, §6),
and the predictions of image files, printed or written to CSV as they come."""

import argparse
import csv
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .data.augment import center_crop, ten_crop
from .data.folders import BadImageError, images_under, known_class
from .data.loader import Loader
from .data.sources import open_split, prepared_root
from .errors import InputError, printable
from .files import atomic_write, write_text
from .inference import Network, load_networks
from .options import COUNT, argument, option, png
from .runtime import PRECISIONS

if TYPE_CHECKING:
    from tqdm import tqdm


def csv_name(name: str) -> str:
    """A table's file name, which must say what it holds: .csv (an option's `parse`)."""
    if not name.lower().endswith(".csv"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .csv, got {name}")
    return name


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
    per_class: str | None = option(None, "also write each class's images, precision, recall, top-1 and top-5 "
                                         "error to this CSV file, and the confusion matrix beside it (the same "
                                         "name, .png)", parse=csv_name, metavar="CSV")


@dataclass
class PredictConfig:
    """`alexnet predict`'s arguments."""

    checkpoint: str = argument("a checkpoint file or run folder")
    images: list[str] = argument("image files, or folders searched for images at any depth", nargs="+")
    crops: int = option(10, "1: centre crop; 10: ten patches", choices=(1, 10))
    device: str = option("auto", "auto, cpu, cuda, ...")
    precision: str = option("auto", "arithmetic precision", choices=PRECISIONS)
    json: bool = option(False, "print the result as JSON")
    plot: str | None = option(None, "also draw Figure 4 (left): each centre crop with its top-5 bars, the true "
                                    "class (from the image's folder or file name) in red", parse=png, metavar="PNG")
    plot_columns: int = option(4, "images per row of the plot", accepts=COUNT)
    csv: str | None = option(None, "write one row per image to this CSV file, batch by batch, instead of printing "
                                   "(a rerun with the same file continues after its last whole row)",
                             parse=csv_name, metavar="CSV")
    batch_size: int = option(32, "images per batch with --csv", accepts=COUNT)


@dataclass
class Errors:
    """Top-1 and top-5 error rates over `count` images of `classes` classes, and the mean cross-entropy where
    computed."""

    top1: float
    top5: float
    count: int
    classes: int
    loss: float = float("nan")
    per_class: "PerClass | None" = None

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


@dataclass
class PerClass:
    """An evaluation's counts by class: the confusion matrix of the top-1 class (rows: the true class, columns:
    the predicted one) and how many images of each class miss the top 5."""

    classes: list[str]  # wnids (class folder names)
    names: list[str]
    confusion: np.ndarray  # int64 (classes, classes)
    top5_wrong: np.ndarray  # int64 (classes,)

    def rows(self) -> list[dict]:
        """One record per class: images, top-1 predictions, precision, recall, top-1 and top-5 error (None
        where a class has no images, or no image is predicted as it)."""
        images, predicted, right = self.confusion.sum(1), self.confusion.sum(0), np.diag(self.confusion)
        return [{"index": c, "wnid": wnid, "name": name, "images": int(images[c]), "predicted": int(predicted[c]),
                 "precision": right[c] / predicted[c] if predicted[c] else None,
                 "recall": right[c] / images[c] if images[c] else None,
                 "top1_error": 1 - right[c] / images[c] if images[c] else None,
                 "top5_error": self.top5_wrong[c] / images[c] if images[c] else None}
                for c, (wnid, name) in enumerate(zip(self.classes, self.names, strict=True))]


def write_per_class(per_class: PerClass, out: str | Path) -> tuple[Path, Path]:
    """The per-class table as CSV at `out` and the confusion matrix as a PNG beside it; both paths."""
    from .figures import plot_confusion

    rows = per_class.rows()
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()}
                     for row in rows)
    out = Path(out)
    write_text(out, table.getvalue())
    return out, plot_confusion(per_class, out.with_suffix(".png"))


def evaluate(networks: list[Network], batches: Iterable, crops: int = 1,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: "tqdm | None" = None,
             per_class: bool = False) -> Errors:
    """Top-1/top-5 error of the (averaged) networks on batches of (uint8 images, labels, ...).

    With one network and one crop the mean cross-entropy is reported too. `reduce` sums the counts
    over processes (DDP), each of which has seen its own images. `per_class` counts by class too (one process).
    """
    for net in networks:
        net.model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # wrong top-1, wrong top-5, images, summed loss
    classes = 0
    known = len(networks[0].classes)
    confusion = torch.zeros(known * known, dtype=torch.int64) if per_class else None
    top5_wrong = torch.zeros(known, dtype=torch.int64) if per_class else None
    for images, labels, *_ in batches:
        probs = probabilities(networks, images, crops)
        labels, classes = labels.to(probs.device), probs.shape[1]
        w1, w5 = wrong(probs, labels)
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        sums += torch.tensor([w1, w5, len(labels), nll], dtype=torch.float64)
        if per_class:
            top = probs.topk(min(5, known), dim=1).indices
            confusion += torch.bincount(labels * known + top[:, 0], minlength=known * known).cpu()
            top5_wrong += torch.bincount(labels[~(top == labels[:, None]).any(1)], minlength=known).cpu()
        if progress is not None:
            progress.update(len(labels))
    if reduce is not None:
        sums = reduce(sums)
    w1, w5, n, nll = sums.tolist()
    if n == 0:
        raise InputError("no images to evaluate")
    loss = nll / n if len(networks) == 1 and crops == 1 else float("nan")
    counts = PerClass(networks[0].classes, networks[0].names, confusion.view(known, known).numpy(),
                      top5_wrong.numpy()) if per_class else None
    return Errors(w1 / n, w5 / n, int(n), classes, loss, counts)


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
                         progress: bool = True, per_class: bool = False) -> Errors:
    """`alexnet eval`: the error of one checkpoint, or of several averaged (an ensemble), on a split of `data`,
    by default the data set the first checkpoint was trained on (the built-in photos where it records none);
    `per_class`: with the counts by class."""
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
        errors = evaluate(networks, loader.epoch(0), crops, progress=bar, per_class=per_class)
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


def images_of(inputs: list[str]) -> list[str]:
    """Image files and folders as image files: each folder's images at any depth, sorted (as a data set's are
    listed: other files, pipes and link cycles passed over); a file as it is named."""
    files = []
    for item in inputs:
        if not os.path.isdir(item):
            files.append(item)
            continue
        found, _ = images_under(Path(item))
        if not found:
            raise InputError(f"{printable(item)}: no image files in this folder")
        files += map(str, found)
    return files


def predict(path: str, images: list[str], crops: int = PredictConfig.crops, device: str = PredictConfig.device,
            precision: str = PredictConfig.precision) -> Predictions:
    """`alexnet predict`: the class probabilities of image files and of the images in folders (§4.1: averaged
    over ten patches by default).

    An unreadable image raises BadImageError."""
    images = images_of(images)
    (net,) = load_networks([path], device, precision)
    pixels = np.stack([net.preprocess(image) for image in images])
    probs = probabilities([net], torch.from_numpy(pixels), crops).cpu()
    return Predictions(list(images), pixels, probs, net.classes, net.names, net.crop, crops, net.info["path"])


def predict_csv(path: str, images: list[str], out: str | Path, crops: int = PredictConfig.crops,
                batch_size: int = PredictConfig.batch_size, device: str = PredictConfig.device,
                precision: str = PredictConfig.precision, progress: bool = True) -> tuple[int, int, int]:
    """`alexnet predict --csv`: one row per image appended to the CSV file `out`, batch by batch (its file, its
    top-5 classes and their probabilities, or the reason it could not be read); only a batch's images are in
    memory at a time. A rerun with the same `out` continues after its last whole row. Returns the rows written
    now, the rows that were there, and the unreadable images among those written now."""
    from tqdm import tqdm

    files = list(dict.fromkeys(images_of(images)))  # each once
    (net,) = load_networks([path], device, precision, batch_size)
    header = ["file"] + [f"{what}_{rank}" for rank in range(1, min(5, len(net.classes)) + 1)
                         for what in ("class", "probability")] + ["error"]
    done = _rows_done(Path(out), header)
    todo = [f for f in files if f not in done]
    unreadable = 0
    with open(out, "a", encoding="utf-8", errors="surrogateescape", newline="") as f, \
            tqdm(total=len(files), initial=len(files) - len(todo), unit="img", desc="predict",
                 disable=not progress, leave=False) as bar:
        for start in range(0, len(todo), batch_size):
            batch, rows, pixels = todo[start:start + batch_size], {}, []
            for file in batch:
                try:
                    pixels.append(net.preprocess(file))
                    rows[file] = None
                except BadImageError as err:
                    rows[file] = [file] + [""] * (len(header) - 2) + [err.reason]
                    unreadable += 1
            if pixels:
                probs = probabilities([net], torch.from_numpy(np.stack(pixels)), crops).cpu()
                read = [file for file, row in rows.items() if row is None]
                for file, top in zip(read, top5(probs, net.names), strict=True):
                    rows[file] = [file] + [x for name, p in top for x in (name, f"{p:.6f}")] + [""]
            f.write(_csv_lines(rows.values()))
            f.flush()  # a whole batch's rows, so that a killed run loses at most the batch it was on
            bar.update(len(batch))
    return len(todo), len(files) - len(todo), unreadable


def _csv_lines(rows: Iterable[list[str]]) -> str:
    """Rows as CSV text, each ending in a newline (a field with a comma, a quote or a newline quoted)."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def _rows_done(out: Path, header: list[str]) -> set[str]:
    """The files that have a whole row in `out`, a CSV file that predict_csv wrote with `header` (made with only
    the header where missing). A torn last row, which a run killed while writing leaves, is removed from the
    file; InputError where `out` holds something else."""
    if not out.exists():
        write_text(out, _csv_lines([header]))
        return set()
    text = out.read_bytes().decode("utf-8", "surrogateescape")
    rows = []
    try:
        for row in csv.reader(io.StringIO(text, newline="")):
            rows.append(row)
    except csv.Error:  # a quoted field that a kill cut short
        pass
    if not rows or rows[0] != header:
        raise InputError(f"{printable(out)}: not the CSV file of an `alexnet predict` of this network's classes; "
                         "give another --csv")
    whole = [row for row in rows if len(row) == len(header)]
    if not text.endswith("\n") and whole and whole[-1] is rows[-1]:  # cut short after its last field began
        whole.pop()
    kept = _csv_lines(whole)
    if kept != text:
        atomic_write(out, lambda f: f.write(kept.encode("utf-8", "surrogateescape")))
    return {row[0] for row in whole[1:]}
