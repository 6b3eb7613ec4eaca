"""The paper's figures (§6.1): the first-layer kernels (Figure 3), top-5 predictions (Figure 4, left) and
nearest neighbors in fc7 space (Figure 4, right), drawn pixel for pixel (draw.py); and an evaluation's confusion
matrix."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .draw import FONT, LINE, Canvas, Grid, center, fit, shown
from .errors import InputError
from .evaluate import PerClass, PredictConfig, Predictions
from .files import atomic_write
from .inference import load_network
from .neighbors import Neighbors
from .options import COUNT, SIZE, argument, option, png, up_to

BAR = "#9ecae1"  # a predicted class
CORRECT = "#e6550d"  # the image's own class (Figure 4 draws it red)
GREY = 200  # the tile of an image that cannot be read


# ---------------------------------------------------------------------------------------------- Figure 3


@dataclass
class FiltersConfig:
    """`alexnet filters`'s arguments."""

    checkpoint: str = argument("a checkpoint file or run folder")
    out: str = option("conv1.png", "PNG file to write", parse=png)
    columns: int = option(16, "kernels per row", accepts=COUNT)
    zoom: int = option(4, "pixels per weight, each way", accepts=up_to(64))
    gap: int = option(2, "pixels between kernels", accepts=SIZE)


def kernel_pixels(kernel: torch.Tensor, zoom: int = 1) -> np.ndarray:
    """A (3, h, w) kernel as an RGB uint8 image: min-max scaled on its own, each weight zoom×zoom pixels."""
    k = kernel.detach().double().cpu().numpy().transpose(1, 2, 0)
    low, high = k.min(), k.max()
    scaled = (k - low) / (high - low) if high > low else np.full_like(k, 0.5)
    pixels = np.rint(scaled * 255).astype(np.uint8)
    return pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)


def filter_grids(towers: list[int], columns: int, zoom: int, gap: int, margin: int = 8,
                 label: int = 20) -> tuple[tuple[int, int], list[tuple[int, Grid]]]:
    """The layout of Figure 3: one block of tiles per tower, stacked, each under a `label` band.

    Returns the picture's (height, width) and, per tower, the block's top row and its grid (whose margin
    is 0: its tiles lie at grid.origin() + (top, margin))."""
    if columns < 1 or zoom < 1 or gap < 0:
        raise InputError(f"columns and zoom must be positive and gap not negative, got {columns}, {zoom}, {gap}")
    blocks, top = [], margin
    for count in towers:
        grid = Grid(-(-count // columns), min(columns, count), (11 * zoom, 11 * zoom), gap, header=label, margin=0)
        blocks.append((top, grid))
        top += grid.size[0] + margin
    width = 2 * margin + max(grid.size[1] for _, grid in blocks)
    return (top, width), blocks


def filters_canvas(towers: list[torch.Tensor], columns: int = FiltersConfig.columns, zoom: int = FiltersConfig.zoom,
                   gap: int = FiltersConfig.gap) -> Canvas:
    """Figure 3 of conv1's kernels, one (kernels, 3, h, w) block per tower: its pixels are the kernels without the
    labels, which saving it adds."""
    (height, width), blocks = filter_grids([len(t) for t in towers], columns, zoom, gap)
    canvas = Canvas(height, width)
    margin = 8
    for t, (kernels, (top, grid)) in enumerate(zip(towers, blocks, strict=True)):
        size = kernels.shape[-1]
        if len(towers) > 1:
            what = f"tower {t + 1} (GPU {t + 1} in the paper): conv1 kernels {t * len(kernels) + 1}–" \
                   f"{(t + 1) * len(kernels)}, {size}×{size}×3"
        else:
            what = f"conv1: {len(kernels)} kernels, {size}×{size}×3 (one tower)"
        canvas.text(top + 3, margin, what, size=9)
        for i, kernel in enumerate(kernels):
            y, x = grid.origin(i // grid.columns, i % grid.columns)
            canvas.paste(top + y, margin + x, kernel_pixels(kernel, zoom * 11 // size))
    return canvas


def plot_filters(path: str, out: str | Path = FiltersConfig.out, columns: int = FiltersConfig.columns,
                 zoom: int = FiltersConfig.zoom, gap: int = FiltersConfig.gap) -> Path:
    """`alexnet filters`: Figure 3, conv1's kernels as images, one labelled block per tower (§6.1)."""
    return filters_canvas(load_network(path, "cpu", "fp32").model.conv1_towers(), columns, zoom, gap).save(out)


# ------------------------------------------------------------------------------------- Figure 4, left


CAPTION = 2 * LINE + 4  # file name, then the true class
BARS = 5 * 18 + 6


def predictions_grid(count: int, crop: int, columns: int) -> Grid:
    """The layout of Figure 4 (left): each image's centre crop, its caption, then its top-5 bars below."""
    if columns < 1:
        raise InputError(f"columns must be positive, got {columns}")
    columns = min(columns, count)
    return Grid(-(-count // columns), columns, (crop, crop), gap=12, below=CAPTION + BARS, header=2 * LINE)


def plot_predictions(pred: Predictions, out: str | Path, columns: int = PredictConfig.plot_columns) -> Path:
    """Figure 4 (left): each image's centre crop and its top-5 classes as bars of their probabilities,
    the image's own class in red where known (§6.1)."""
    grid = predictions_grid(len(pred.images), pred.crop, columns)
    canvas = Canvas(*grid.size)
    patches = "ten patches" if pred.crops == 10 else "the centre patch"
    canvas.text(grid.margin, grid.margin, f"top-5 predictions ({patches}) of {shown(pred.checkpoint)}", size=9)
    values, indices = pred.probs.topk(min(5, pred.probs.shape[1]), dim=1)
    for n, (image, truth) in enumerate(zip(pred.images, pred.truth(), strict=True)):
        top, left = grid.origin(n // grid.columns, n % grid.columns)
        canvas.paste(top, left, center(pred.pixels[n], pred.crop))
        below = top + pred.crop + 2
        canvas.text(below, left, fit(Path(image).name, pred.crop))
        if truth is None:
            canvas.text(below + LINE, left, "class unknown", color="0.4")
        else:
            missed = "" if truth in indices[n].tolist() else " (not in the top 5)"
            canvas.text(below + LINE, left, fit(pred.names[truth] + missed, pred.crop), color=CORRECT,
                        weight="bold")
        ax = canvas.axes(below + CAPTION, left, BARS - 6, pred.crop)
        ranks = range(len(values[n]))
        ax.barh(ranks, values[n].tolist(), height=0.8,
                color=[CORRECT if int(i) == truth else BAR for i in indices[n]])
        for rank, (p, i) in enumerate(zip(values[n].tolist(), indices[n].tolist(), strict=True)):
            ax.text(0.01, rank, fit(f"{pred.names[i]}  {100 * p:.1f}%", pred.crop - 4), va="center",
                    fontsize=FONT - 1)
        ax.set(xlim=(0, 1), ylim=(len(values[n]) - 0.5, -0.5), xticks=[], yticks=[])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return canvas.save(out)


# -------------------------------------------------------------------------------------- Figure 4, right


def neighbors_grid(queries: int, k: int, crop: int) -> Grid:
    """The layout of Figure 4 (right): one row per query, the query then its k neighbors, each captioned."""
    return Grid(queries, 1 + k, (crop, crop), gap=6, below=CAPTION, header=2 * LINE)


def plot_neighbors(found: Neighbors, out: str | Path) -> Path:
    """Figure 4 (right): each query's centre crop, then its nearest images by fc7 distance (§6.1)."""
    f = found.features
    crop = f.meta["crop"]
    grid = neighbors_grid(len(found.queries), found.rows.shape[1], crop)
    canvas = Canvas(*grid.size)
    canvas.text(grid.margin, grid.margin, f"nearest {f.meta['split']} images by fc7 distance, from {shown(f.path)} "
                f"({len(f)} images)", size=9)
    for q, query in enumerate(found.queries):
        top, left = grid.origin(q, 0)
        canvas.paste(top, left, center(found.pixels[q], crop))
        canvas.text(top + crop + 2, left, fit(f"query: {Path(query).name}", crop, char=7), weight="bold")
        truth = found.truth[q]
        canvas.text(top + crop + 2 + LINE, left, "class unknown" if truth is None else fit(f.names[truth], crop))
        for n, (d, row) in enumerate(zip(found.distances[q], found.rows[q], strict=True), 1):
            top, left = grid.origin(q, n)
            image = f.image(int(row))
            tile = np.full((crop, crop, 3), GREY, np.uint8) if image is None else center(image, crop)
            canvas.paste(top, left, tile)
            same = truth is not None and int(f.labels[row]) == truth
            canvas.text(top + crop + 2, left, fit(f.names[f.labels[row]], crop), color=CORRECT if same else "k")
            canvas.text(top + crop + 2 + LINE, left, fit(f"#{n}  distance {d:.4g}", crop), color="0.3")
    return canvas.save(out)


# -------------------------------------------------------------------------------------- confusion matrix


NAMED = 100  # classes up to which the confusion matrix names each one (beyond: indices every so often)
NAME_CHARS = 24  # a class name's characters on an axis, at most


def plot_confusion(per_class: PerClass, out: str | Path) -> Path:
    """The confusion matrix of an evaluation's top-1 classes as a PNG: each row the fraction of a true class's
    images predicted as each class, the classes named on both axes up to NAMED of them (counts in the cells up
    to 20)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = per_class.confusion
    n = len(counts)
    images = counts.sum(1, keepdims=True)
    fractions = counts / np.maximum(images, 1)
    side = min(20.0, max(4.0, 0.13 * n))  # inches of matrix: about 13 pixels a class at 100 classes
    named = n <= NAMED
    font = max(4.0, min(9.0, 500 / n))
    margin = 0.06 * NAME_CHARS * font / 8 + 0.5 if named else 0.8  # inches for the names beside the axes
    fig = Figure(figsize=(side + margin + 1.5, side + margin + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if named:
        names = [fit(name, NAME_CHARS * 6) for name in per_class.names]
        ax.set_xticks(range(n), names, rotation=90, fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
    if n <= 20:
        for (true, predicted), c in np.ndenumerate(counts):
            if c:
                ax.text(predicted, true, str(c), ha="center", va="center", fontsize=font,
                        color="white" if fractions[true, predicted] > 0.5 else "black")
    right = int(np.trace(counts))
    ax.set(xlabel="predicted class (top-1)", ylabel="true class",
           title=f"confusion matrix: {int(images.sum())} images, {right} right (top-1)")
    fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02, label="fraction of the true class's images")
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png"))
    return Path(out)
