"""The paper's qualitative analyses (§6.1): the first-layer kernels (Figure 3), top-5 predictions (Figure 4,
left), and the fc7 features of a whole split with the nearest neighbours of query images (Figure 4, right).

Pictures are laid out in pixels (`Grid`): each tile lands at a known place at its own size (an image is
its centre crop, pixel for pixel); matplotlib's Agg backend adds the text and the bars, and every PNG is
written through a temporary file and a rename.

A features folder, made by `extract_features` (`alexnet features`):

    meta.json      written first: the checkpoint and a digest of its weights, the data and split, the
                   crop, precision and batch size, the number of rows, the classes and their names
    features.npy   float32 (N, 4096), NumPy .npy: row i is fc7 after its ReLU for the centre crop of
                   image i of the split; filled in place through a memory map, batch after batch
    labels.npy     int64 (N,): each row's class, an index into meta.json's "classes"
    files.txt      N lines: each row's image file, as an absolute path
    progress.json  {"rows": r, "bad": [...]}: rows 0..r-1 are final (rewritten after every batch);
                   "bad" lists rows whose image could not be decoded (their features stay zero)
    done.json      written last, with the final "rows" and "bad": the folder is complete exactly when
                   this file exists

Run again with the same checkpoint and data, `alexnet features` continues after the last finished batch,
with the batch size it started with, so the result equals that of an uninterrupted run.
"""

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .data.augment import center_crop
from .data.folders import DEFAULT_DATA, BadImageError, preprocess
from .data.loader import Loader, is_store, open_split
from .data.store import Store, atomic_write
from .evaluate import load_members, probabilities, top5
from .runtime import autocast, choose_device, choose_precision, keep_freed_memory

FEATURES_FORMAT = "alexnet-features-1"
FEATURE_DIM = 4096
CHUNK_ROWS = 16384  # stored features per matrix product in the neighbour search: 256 MiB of float32
DPI = 100
FONT = 8  # points: 11 pixels at DPI
LINE = 13  # pixels per line of caption text
BAR = "#9ecae1"  # a predicted class
CORRECT = "#e6550d"  # the image's own class (Figure 4 draws it red)
GREY = 200  # the tile of an image that cannot be read


@dataclass(frozen=True)
class Grid:
    """A picture's layout in pixels: rows × columns of equal tiles `gap` apart, a band of `below` pixels
    under each tile (captions, bars), a `header` band above them all and a `margin` around everything."""

    rows: int
    columns: int
    tile: tuple[int, int]  # (height, width)
    gap: int = 6
    below: int = 0
    header: int = 0
    margin: int = 8

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole picture."""
        h, w = self.tile
        return (2 * self.margin + self.header + self.rows * (h + self.below) + (self.rows - 1) * self.gap,
                2 * self.margin + self.columns * w + (self.columns - 1) * self.gap)

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """(top, left) of the tile at (row, column)."""
        h, w = self.tile
        return (self.margin + self.header + row * (h + self.below + self.gap), self.margin + column * (w + self.gap))


class Canvas:
    """A white RGB picture of exact pixel size: pasted images, text and axes, saved as a PNG."""

    def __init__(self, height: int, width: int):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.pixels = np.full((height, width, 3), 255, np.uint8)
        # a hundredth of a pixel more, so that rounding down in the backend cannot lose a row
        self.figure = plt.figure(figsize=((width + 0.01) / DPI, (height + 0.01) / DPI), dpi=DPI)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[:2]

    def paste(self, top: int, left: int, image: np.ndarray) -> None:
        """Put a uint8 (h, w, 3) image with its top-left corner at (top, left)."""
        h, w = image.shape[:2]
        self.pixels[top:top + h, left:left + w] = image

    def text(self, top: int, left: int, text: str, size: float = FONT, **kw) -> None:
        """Text whose top-left corner is at (top, left)."""
        h, w = self.size
        self.figure.text(left / w, 1 - top / h, text, fontsize=size, va="top", ha="left", **kw)

    def axes(self, top: int, left: int, height: int, width: int):
        """Matplotlib axes over the given rectangle."""
        h, w = self.size
        return self.figure.add_axes((left / w, 1 - (top + height) / h, width / w, height / h))

    def save(self, path: str | Path) -> Path:
        """Write the PNG through a temporary file (created with its folder where missing)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure.figimage(self.pixels, xo=0, yo=0, origin="upper", zorder=-1)
        try:
            atomic_write(path, lambda f: self.figure.savefig(f, dpi=DPI, format="png"))
        finally:
            self.plt.close(self.figure)
        return path


def _fit(text: str, width: int, char: int = 6) -> str:
    """Shorten `text` to what fits in `width` pixels of caption (about `char` pixels a character)."""
    most = max(4, width // char)
    return text if len(text) <= most else text[:most - 1] + "…"


def _center(image: np.ndarray, crop: int) -> np.ndarray:
    """The central crop×crop patch of a preprocessed 256×256 image, as the network sees it (before the mean)."""
    mid = (image.shape[0] - crop) // 2
    return image[mid:mid + crop, mid:mid + crop]


# ---------------------------------------------------------------------------------------------- Figure 3


def kernel_pixels(kernel: torch.Tensor, zoom: int = 1) -> np.ndarray:
    """A (3, h, w) kernel as an RGB uint8 image: min-max scaled on its own, each weight zoom×zoom pixels."""
    k = kernel.detach().double().cpu().numpy().transpose(1, 2, 0)
    low, high = k.min(), k.max()
    scaled = (k - low) / (high - low) if high > low else np.full_like(k, 0.5)
    pixels = np.rint(scaled * 255).astype(np.uint8)
    return pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)


def filter_grids(towers: list[int], columns: int = 16, zoom: int = 4, gap: int = 2,
                 margin: int = 8, label: int = 20) -> tuple[tuple[int, int], list[tuple[int, Grid]]]:
    """The layout of Figure 3: one block of tiles per tower, stacked, each under a `label` band.

    Returns the picture's (height, width) and, per tower, the block's top row and its grid (whose margin
    is 0: its tiles lie at grid.origin() + (top, margin))."""
    if columns < 1 or zoom < 1 or gap < 0:
        raise ValueError(f"columns and zoom must be positive and gap not negative, got {columns}, {zoom}, {gap}")
    blocks, top = [], margin
    for count in towers:
        grid = Grid(-(-count // columns), min(columns, count), (11 * zoom, 11 * zoom), gap, header=label, margin=0)
        blocks.append((top, grid))
        top += grid.size[0] + margin
    width = 2 * margin + max(grid.size[1] for _, grid in blocks)
    return (top, width), blocks


def plot_filters(path: str, out: str | Path, columns: int = 16, zoom: int = 4, gap: int = 2) -> Path:
    """`alexnet filters`: Figure 3, conv1's kernels as images, one labelled block per tower (§6.1)."""
    state = checkpoint.load(path)
    towers = checkpoint.model_from(state).conv1_towers()
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
    return canvas.save(out)


# ------------------------------------------------------------------------------------- Figure 4, left


def known_class(image: str | Path, classes: list[str]) -> int | None:
    """The class of an image when its place says so: its folder is named after a class (ImageNet's
    train/<wnid>/ layout), or its file name starts with one and "_" (n01440764_10026.JPEG); else None."""
    image = Path(image)
    index = {c: i for i, c in enumerate(classes)}
    if image.parent.name in index:
        return index[image.parent.name]
    return index.get(image.stem.split("_")[0]) if "_" in image.stem else None


@dataclass
class Predictions:
    """Images with their class probabilities: what `alexnet predict` prints and plots."""

    images: list[str]
    pixels: np.ndarray  # uint8 (N, 256, 256, 3): each image after the 256×256 preprocessing (§2)
    probs: torch.Tensor  # (N, classes)
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


def predict(path: str, images: list[str], crops: int = 10) -> Predictions:
    """The class probabilities of image files (§4.1: averaged over ten patches by default)."""
    states, members = load_members([path])
    state = states[0]
    pixels = np.stack([preprocess(image) for image in images])
    probs = probabilities(members, torch.from_numpy(pixels), state["crop"], crops)
    return Predictions(list(images), pixels, probs, state["classes"], state["names"], state["crop"], crops,
                       state["path"])


CAPTION = 2 * LINE + 4  # file name, then the true class
BARS = 5 * 18 + 6


def predictions_grid(count: int, crop: int, columns: int = 4) -> Grid:
    """The layout of Figure 4 (left): each image's centre crop, its caption, then its top-5 bars below."""
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    columns = min(columns, count)
    return Grid(-(-count // columns), columns, (crop, crop), gap=12, below=CAPTION + BARS, header=2 * LINE)


def plot_predictions(pred: Predictions, out: str | Path, columns: int = 4) -> Path:
    """Figure 4 (left): each image's centre crop and its top-5 classes as bars of their probabilities,
    the image's own class in red where known (§6.1)."""
    grid = predictions_grid(len(pred.images), pred.crop, columns)
    canvas = Canvas(*grid.size)
    patches = "ten patches" if pred.crops == 10 else "the centre patch"
    canvas.text(grid.margin, grid.margin, f"top-5 predictions ({patches}) of {pred.checkpoint}", size=9)
    values, indices = pred.probs.topk(min(5, pred.probs.shape[1]), dim=1)
    for n, (image, truth) in enumerate(zip(pred.images, pred.truth(), strict=True)):
        top, left = grid.origin(n // grid.columns, n % grid.columns)
        canvas.paste(top, left, _center(pred.pixels[n], pred.crop))
        below = top + pred.crop + 2
        canvas.text(below, left, _fit(Path(image).name, pred.crop))
        if truth is None:
            canvas.text(below + LINE, left, "class unknown", color="0.4")
        else:
            missed = "" if truth in indices[n].tolist() else " (not in the top 5)"
            canvas.text(below + LINE, left, _fit(pred.names[truth] + missed, pred.crop), color=CORRECT,
                        weight="bold")
        ax = canvas.axes(below + CAPTION, left, BARS - 6, pred.crop)
        ranks = range(len(values[n]))
        ax.barh(ranks, values[n].tolist(), height=0.8,
                color=[CORRECT if int(i) == truth else BAR for i in indices[n]])
        for rank, (p, i) in enumerate(zip(values[n].tolist(), indices[n].tolist(), strict=True)):
            ax.text(0.01, rank, _fit(f"{pred.names[i]}  {100 * p:.1f}%", pred.crop - 4), va="center",
                    fontsize=FONT - 1)
        ax.set(xlim=(0, 1), ylim=(len(values[n]) - 0.5, -0.5), xticks=[], yticks=[])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return canvas.save(out)


# ---------------------------------------------------------------------------------------- fc7 features


def weights_digest(state: dict) -> str:
    """A SHA-256 of a checkpoint's network weights: which network made a set of features."""
    h = hashlib.sha256()
    for name, tensor in sorted(state["model"].items()):
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)};".encode())
        h.update(tensor.detach().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


# what has to match for a features folder to be continued rather than refused
IDENTITY = ("format", "weights", "crop", "precision", "split", "count", "files", "classes")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


def extract_features(path: str, data: str | None, out: str | Path, split: str = "train", batch_size: int = 64,
                     device: str = "auto", precision: str = "auto", workers: int = 2,
                     progress: bool = True) -> Path:
    """`alexnet features`: fc7 (after ReLU) of the centre crop of every image of a split, into the folder
    `out` (see the module's docstring); an interrupted run continues where it stopped (§6.1)."""
    from tqdm import tqdm

    keep_freed_memory()
    out = Path(out)
    if batch_size < 1:
        raise ValueError(f"the batch size must be positive, got {batch_size}")
    state = checkpoint.load(path)
    model, recipe = checkpoint.model_from(state), checkpoint.recipe_from(state)
    source = open_split(data, split)
    files = [os.path.abspath(f) for f in (source.files if hasattr(source, "files") else source.paths)]
    if not files:
        raise ValueError(f"the {split} split of {data or DEFAULT_DATA} has no images")
    dev = choose_device(device)
    meta = {"format": FEATURES_FORMAT, "checkpoint": os.path.abspath(state["path"]), "weights": weights_digest(state),
            "arch": state["arch"], "crop": state["crop"], "precision": choose_precision(precision, dev),
            "data": os.path.abspath(data if data is not None else DEFAULT_DATA), "split": split,
            "count": len(files), "dim": FEATURE_DIM, "batch_size": batch_size,
            "files": hashlib.sha256("\n".join(files).encode()).hexdigest(),
            "classes": source.classes, "names": source.names}
    resume = _check_folder(out, meta)
    if resume is None:
        return out
    if resume:
        meta = _read_json(out / "meta.json")  # its batch size: the batches of the first run, for equal results
        if meta["batch_size"] != batch_size:
            print(f"continuing {out} with its batch size {meta['batch_size']}")
        batch_size = meta["batch_size"]
    done = _read_json(out / "progress.json") if resume and (out / "progress.json").is_file() else None
    if done is None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "meta.json", meta)
        features = np.lib.format.open_memmap(out / "features.npy", mode="w+", dtype=np.float32,
                                             shape=(len(files), FEATURE_DIM))
        atomic_write(out / "labels.npy", lambda f: np.save(f, np.asarray(source.labels, np.int64)))
        atomic_write(out / "files.txt", lambda f: f.write("".join(p + "\n" for p in files).encode()))
        done = {"rows": 0, "bad": []}
        _write_json(out / "progress.json", done)
    else:
        features = np.load(out / "features.npy", mmap_mode="r+")
        if features.shape != (len(files), FEATURE_DIM):
            raise ValueError(f"{out}/features.npy has shape {features.shape}, expected {(len(files), FEATURE_DIM)}")

    model = model.to(dev).to(memory_format=torch.channels_last)
    recipe = recipe.to(dev)
    mixed = functools.partial(autocast, dev, meta["precision"])
    loader = Loader(source, batch_size, shuffle=False, workers=workers)
    rows, bad = done["rows"], list(done["bad"])
    started = time.monotonic()
    with tqdm(total=len(files), initial=rows, unit="img", desc="features", disable=not progress,
              dynamic_ncols=True) as bar, torch.no_grad():
        for number, (images, _, indices) in enumerate(loader.epoch(0, start=rows // batch_size), rows // batch_size):
            end = min((number + 1) * batch_size, len(files))
            if len(indices):
                with mixed():
                    fc7 = model.forward_fc7(center_crop(images.to(dev, non_blocking=True), recipe, meta["crop"]))
                features[indices] = fc7.float().cpu().numpy()
                features.flush()
            bad += sorted(set(range(number * batch_size, end)) - set(indices.tolist()))
            rows = end
            _write_json(out / "progress.json", {"rows": rows, "bad": bad})  # after the rows are on disk
            bar.update(end - number * batch_size)
    del features
    _write_json(out / "done.json", {"rows": rows, "bad": bad, "seconds": time.monotonic() - started})
    if progress:
        note = f"; {loader.bad.summary()} (their rows are listed as bad)" if bad else ""
        print(f"wrote the fc7 features of {len(files)} {split} images to {out}{note}")
    return out


def _check_folder(out: Path, meta: dict) -> bool | None:
    """Whether `out` holds a started extraction of the same features (True), nothing yet (False), or the
    finished one (None); a folder with something else raises ValueError."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"{out} is not a folder")
    if not (out / "meta.json").is_file():
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty and is not a features folder; choose another --out")
        return False
    old = _read_json(out / "meta.json")
    for key in IDENTITY:
        if old.get(key) != meta[key]:
            show = (lambda v: str(v)[:12]) if key in ("weights", "files") else (lambda v: repr(v)[:60])
            raise ValueError(f"{out} holds other features ({key} {show(old.get(key))} there, {show(meta[key])} "
                             f"now); choose another --out or delete it")
    if (out / "done.json").is_file():
        print(f"{out} is complete already")
        return None
    return True


class Features:
    """A complete features folder: the fc7 features as a memory map, with labels, files and class names."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise ValueError(f"{self.path} is not a features folder made by `alexnet features`")
        if not (self.path / "done.json").is_file():
            raise ValueError(f"{self.path} is unfinished: run `alexnet features` again to complete it")
        self.meta = _read_json(self.path / "meta.json")
        if self.meta.get("format") != FEATURES_FORMAT:
            raise ValueError(f"{self.path} has features of an unknown format {self.meta.get('format')!r}")
        self.bad = _read_json(self.path / "done.json")["bad"]
        self.features = np.load(self.path / "features.npy", mmap_mode="r")
        self.labels = np.load(self.path / "labels.npy")
        self.files = (self.path / "files.txt").read_text().splitlines()
        self.names: list[str] = self.meta["names"]
        if not (len(self.features) == len(self.labels) == len(self.files) == self.meta["count"]):
            raise ValueError(f"{self.path}: features, labels and files disagree in length")

    def __len__(self) -> int:
        return len(self.files)

    @functools.cached_property
    def _store(self):
        data = self.meta["data"]
        if not is_store(data):
            return None
        with contextlib.suppress(ValueError, OSError):
            return Store(data).split(self.meta["split"])
        return None

    def image(self, row: int) -> np.ndarray | None:
        """The preprocessed 256×256 image of a row: from the store it was read from, or its file; None if
        neither can be read any more."""
        split = self._store
        if split is not None and os.path.abspath(split.files[row]) == self.files[row]:
            return split.read(np.array([row]))[0]
        try:
            return preprocess(self.files[row])
        except BadImageError:
            return None


# -------------------------------------------------------------------------------------- Figure 4, right


def _blocks(features: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Consecutive blocks of `rows` rows in memory, the next one read by a background thread meanwhile.

    A memory-mapped .npy is read with plain file reads into two reused buffers (faster than copying from the
    map, and the page cache is the only memory the file takes); a block is valid until the next one is asked for."""
    n, dim = features.shape
    path = getattr(features, "filename", None)
    # the whole of a file's array (not a slice of one, which keeps its parent's file name and offset)
    direct = (path is not None and features.dtype == np.float32 and features.flags.c_contiguous
              and features.offset + features.nbytes == os.path.getsize(path))
    buffers = [np.empty((min(rows, n), dim), np.float32) for _ in range(2 if n > rows else 1)]
    with contextlib.ExitStack() as stack:
        file = stack.enter_context(open(path, "rb", buffering=0)) if direct else None

        def read(start: int) -> np.ndarray:
            out = buffers[start // rows % len(buffers)][:min(rows, n - start)]
            if file is None:
                out[...] = features[start:start + len(out)]
                return out
            view, offset = memoryview(out).cast("B"), features.offset + start * dim * 4
            while len(view):
                got = os.preadv(file.fileno(), [view], offset)
                if got <= 0:
                    raise OSError(f"{path} ended early: is it being rewritten?")
                view, offset = view[got:], offset + got
            return out

        pool = stack.enter_context(ThreadPoolExecutor(1))
        pending = pool.submit(read, 0)
        for start in range(0, n, rows):
            block = pending.result()
            if start + rows < n:
                pending = pool.submit(read, start + rows)
            yield start, block


def nearest(features: np.ndarray, queries: torch.Tensor, k: int, chunk: int = CHUNK_ROWS,
            skip: list[int] | None = None, exclude: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of `features` (N, D; an array or memory map) nearest each query (Q, D) in Euclidean
    distance, exactly: (distances float64 (Q, k'), row indices int64 (Q, k')), nearest first, k' = min(k, rows
    left). `skip`: rows never returned; `exclude[q]`: a row left out for query q (-1: none).

    One pass over `features` in blocks of `chunk` rows, each with one matrix product
    ||a − b||² = ||a||² − 2a·b + ||b||² (float32, after subtracting the first block's mean, which keeps the
    cancellation small) and a running top-(k+8); the survivors are ranked by their exact float64 distance.
    Memory: two blocks (chunk × D × 4 bytes each) and Q × chunk distances, whatever N is.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if chunk < 1:
        raise ValueError(f"the chunk size must be at least 1 row, got {chunk}")
    n, dim = features.shape
    queries = queries.detach().float().cpu()
    if queries.dim() != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries of shape {tuple(queries.shape)} do not match features of dimension {dim}")
    count = len(queries)
    skip_rows = np.unique(np.asarray(skip or [], np.int64))
    exclude_rows = torch.as_tensor(exclude if exclude is not None else [-1] * count, dtype=torch.int64)
    keep = min(k + 8, n)  # candidates carried from block to block
    best_d = torch.empty(count, 0)
    best_i = torch.empty(count, 0, dtype=torch.int64)
    center = q = qn = None
    for start, block in _blocks(features, chunk):
        b = torch.from_numpy(block)
        if center is None:
            center = torch.from_numpy(block.mean(0, dtype=np.float64).astype(np.float32))
            q = queries - center
            qn = q.square().sum(1)
        b -= center
        d = torch.addmm(qn[:, None] + torch.linalg.vector_norm(b, dim=1).square()[None, :], q, b.T, alpha=-2)
        end = start + len(b)
        local = skip_rows[(skip_rows >= start) & (skip_rows < end)] - start
        d[:, torch.from_numpy(local)] = math.inf
        mine = ((exclude_rows >= start) & (exclude_rows < end)).nonzero().squeeze(1)
        d[mine, exclude_rows[mine] - start] = math.inf
        d = torch.cat([best_d, d], 1)
        index = torch.cat([best_i, torch.arange(start, end).expand(count, -1)], 1)
        best_d, pick = d.topk(min(keep, d.shape[1]), dim=1, largest=False)
        best_i = index.gather(1, pick)
    return _exact_rank(features, queries, best_d, best_i, k)


def _exact_rank(features: np.ndarray, queries: torch.Tensor, approx: torch.Tensor, rows: torch.Tensor,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k candidates nearest each query by their exact float64 distance (ties: the lower row first)."""
    out_d, out_i = [], []
    for q, a, r in zip(queries.double().numpy(), approx.numpy(), rows.numpy(), strict=True):
        r = r[np.isfinite(a)]  # skipped or excluded rows that only filled the candidate list
        r = np.sort(r)
        d = np.sqrt(((np.asarray(features[r], np.float64) - q) ** 2).sum(1))
        order = np.argsort(d, kind="stable")[:k]
        out_d.append(d[order])
        out_i.append(r[order])
    width = min(len(d) for d in out_d) if out_d else 0
    return np.stack([d[:width] for d in out_d]), np.stack([i[:width] for i in out_i]).astype(np.int64)


@dataclass
class Neighbours:
    """Query images with the rows of a features folder nearest to each."""

    queries: list[str]
    pixels: np.ndarray  # uint8 (Q, 256, 256, 3): the queries after preprocessing
    truth: list[int | None]  # each query's class, where its location tells it
    distances: np.ndarray  # float64 (Q, k)
    rows: np.ndarray  # int64 (Q, k)
    features: Features

    def records(self) -> list[dict]:
        """Each query with its neighbours' files, classes and distances (for JSON)."""
        f = self.features
        return [{"query": query, "class": None if truth is None else f.names[truth],
                 "neighbors": [{"rank": rank, "file": f.files[row], "row": int(row), "label": int(f.labels[row]),
                                "class": f.names[f.labels[row]], "distance": float(d)}
                               for rank, (d, row) in enumerate(zip(dists, rows, strict=True), 1)]}
                for query, truth, dists, rows in zip(self.queries, self.truth, self.distances, self.rows,
                                                     strict=True)]


def find_neighbours(path: str, queries: list[str], features: str | Path, k: int = 6, chunk: int = CHUNK_ROWS,
                    device: str = "auto") -> Neighbours:
    """`alexnet neighbors`: the k images of a features folder whose fc7 features are nearest (Euclidean) to
    each query image's (§6.1, Figure 4); a query that is itself in the folder is left out of its list."""
    store = Features(features)
    state = checkpoint.load(path)
    if weights_digest(state) != store.meta["weights"]:
        raise ValueError(f"{store.path} holds the features of another network ({store.meta['checkpoint']}), "
                         f"not of {state['path']}")
    dev = choose_device(device)
    model = checkpoint.model_from(state).to(dev)
    recipe = checkpoint.recipe_from(state).to(dev)
    pixels = np.stack([preprocess(q) for q in queries])
    with torch.no_grad(), autocast(dev, store.meta["precision"]):
        fc7 = model.forward_fc7(center_crop(torch.from_numpy(pixels).to(dev), recipe, store.meta["crop"]))
    where = {f: i for i, f in enumerate(store.files)}
    exclude = [where.get(os.path.abspath(q), -1) for q in queries]
    distances, rows = nearest(store.features, fc7.float().cpu(), k, chunk, store.bad, exclude)
    return Neighbours(list(queries), pixels, [known_class(q, store.meta["classes"]) for q in queries], distances,
                      rows, store)


def neighbours_grid(queries: int, k: int, crop: int) -> Grid:
    """The layout of Figure 4 (right): one row per query, the query then its k neighbours, each captioned."""
    return Grid(queries, 1 + k, (crop, crop), gap=6, below=CAPTION, header=2 * LINE)


def plot_neighbours(found: Neighbours, out: str | Path) -> Path:
    """Figure 4 (right): each query's centre crop, then its nearest images by fc7 distance (§6.1)."""
    f = found.features
    crop = f.meta["crop"]
    grid = neighbours_grid(len(found.queries), found.rows.shape[1], crop)
    canvas = Canvas(*grid.size)
    canvas.text(grid.margin, grid.margin, f"nearest {f.meta['split']} images by fc7 distance, from {f.path} "
                f"({len(f)} images)", size=9)
    for q, query in enumerate(found.queries):
        top, left = grid.origin(q, 0)
        canvas.paste(top, left, _center(found.pixels[q], crop))
        canvas.text(top + crop + 2, left, _fit(f"query: {Path(query).name}", crop, char=7), weight="bold")
        truth = found.truth[q]
        canvas.text(top + crop + 2 + LINE, left, "class unknown" if truth is None else _fit(f.names[truth], crop))
        for n, (d, row) in enumerate(zip(found.distances[q], found.rows[q], strict=True), 1):
            top, left = grid.origin(q, n)
            image = f.image(int(row))
            tile = np.full((crop, crop, 3), GREY, np.uint8) if image is None else _center(image, crop)
            canvas.paste(top, left, tile)
            same = truth is not None and int(f.labels[row]) == truth
            canvas.text(top + crop + 2, left, _fit(f.names[f.labels[row]], crop), color=CORRECT if same else "k")
            canvas.text(top + crop + 2 + LINE, left, _fit(f"#{n}  distance {d:.4g}", crop), color="0.3")
    return canvas.save(out)
