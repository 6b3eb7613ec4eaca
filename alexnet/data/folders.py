"""Image folders on disk: ImageNet's layouts, labels and class names, and robust decoding of messy files.

Layouts that `list_images` reads (class index = position in the sorted list of class folder names, so for
ImageNet tench n01440764 = 0):

    ROOT/train/<class>/*  and  ROOT/val/<class>/*       ImageNet's folder layout
    ROOT/val/ILSVRC2012_val_00000001.JPEG ...            the official flat validation folder, labelled by
                                                         LOC_val_solution.csv (Kaggle), or by the devkit's
                                                         ILSVRC2012_validation_ground_truth.txt + meta.mat
    ROOT/<class>/*                                       any ImageFolder-style set: a train split, no val
"""

import contextlib
import csv
import errno
import functools
import logging
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, first_words, printable
from .split import Batch, Split

SPLITS = ("train", "val")
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"})
# the formats PIL may decode, whatever a file is named: photos' formats only (JPEG's includes MPO, a phone's JPEG
# with a second picture), never a plugin that runs another program (EPS runs Ghostscript) or a rarely used parser
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS), about 90 million
RESAMPLE = Image.BILINEAR  # PIL's bilinear filter, widened when shrinking (antialiased), as torchvision's Resize
TOO_MANY_PIXELS = "too many pixels"  # the reason a decompression bomb is refused with, read from its header
SIDE = 256  # §2 (docs/paper.md#preprocessing): the side of the square images after the preprocessing
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "assets" / "imagenette"

CSV_LABELS = "LOC_val_solution.csv"
DEVKIT_LABELS = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"

log = logging.getLogger("alexnet")


@dataclass(frozen=True)
class ImageList(Split):
    """One split of an image folder: image paths with their labels, and the class list the labels index.
    Its batches are decoded as they are read (the quick path: no prepare), in DataLoader worker processes."""

    side = SIDE

    root: Path  # the folder the images were listed from, e.g. ROOT/train
    paths: list[Path]
    labels: np.ndarray  # int64, one per path: an index into `classes`
    classes: list[str]  # class folder names (ImageNet: wnids), sorted
    names: list[str]  # human-readable class names, same order
    skipped: int = 0  # files without an image extension, left out when listing

    @functools.cached_property
    def files(self) -> list[str]:
        """Each image's file, as a string."""
        return [str(p) for p in self.paths]

    def batches(self, batches: list[np.ndarray], workers: int, pin_memory: bool,
                bad: Callable[[str, str], None]) -> Iterator[Batch]:
        """Decode the batches in `workers` processes (none: in this one), four batches ahead per worker."""
        loader = torch.utils.data.DataLoader(_Decoded(self, batches), batch_size=None, num_workers=workers,
                                             prefetch_factor=4 if workers else None, pin_memory=pin_memory)
        for images, labels, indices, refused in loader:
            for path, reason in refused:
                bad(path, reason)
            yield images, labels, indices.numpy()  # the DataLoader made the indices a tensor


class _Decoded(torch.utils.data.Dataset):
    """Whole batches of an ImageList, decoded in a DataLoader worker."""

    def __init__(self, images: ImageList, batches: list[np.ndarray]):
        self.images, self.batches = images, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        arrays, kept, refused = [], [], []
        for index in self.batches[i]:
            path = self.images.paths[index]
            try:
                arrays.append(preprocess(path))
                kept.append(index)
            except BadImageError as err:
                refused.append((str(path), err.reason))
        images = np.stack(arrays) if arrays else np.zeros((0, SIDE, SIDE, 3), np.uint8)
        kept = np.array(kept, np.int64)
        return torch.from_numpy(images), torch.from_numpy(self.images.labels[kept]), kept, refused


def splits(root: str | Path) -> list[str]:
    """The splits present in `root`: ["train", "val"], ["train"] for a plain ImageFolder, or ["val"]; those a
    list of images (a CSV file) names."""
    if is_list(root):
        return [split for split in SPLITS if split in {row.get("split") or "train" for row in _rows(Path(root))}]
    root = _folder(root)
    found = [split for split in SPLITS if (root / split).is_dir()]
    return found or ["train"]


def list_images(root: str | Path, split: str = "train", label_file: str | Path | None = None) -> ImageList:
    """List one split of the data set in `root` (a folder, or a list of images: a CSV file), with labels;
    `label_file` labels a flat val folder."""
    if is_list(root):
        return _list_rows(Path(root), split)
    root = _folder(root)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    has_split_folders = any((root / s).is_dir() for s in SPLITS)
    if split == "train":
        if has_split_folders and not (root / "train").is_dir():
            raise InputError(f"no train split: {root / 'train'} is missing")
        folder = root / "train" if has_split_folders else root
        return _list_class_folders(folder, _class_folders(folder))
    folder = root / "val"
    if not folder.is_dir():
        raise InputError(f"no val split: {folder} is missing")
    train_classes = _class_folders(root / "train") if (root / "train").is_dir() else None
    if _subfolders(folder):
        val_classes = _class_folders(folder)
        unknown = sorted(set(val_classes) - set(train_classes or val_classes))
        if unknown:
            raise InputError(f"val class folder {folder / unknown[0]} has no train class of that name")
        return _list_class_folders(folder, train_classes or val_classes, val_classes)
    return _list_flat_val(root, folder, train_classes or list(imagenet_classes()), label_file)


def hold_out(images: ImageList, fraction: float, seed: int = 0) -> tuple[ImageList, ImageList]:
    """A training list split into training and validation images: `fraction` of each class's images (rounded,
    and at least one of a class of two or more), drawn by `seed`, held out; the same list, fraction and seed
    always give the same split."""
    rng, held = np.random.default_rng(seed), np.zeros(len(images.paths), bool)
    for label in range(len(images.classes)):
        members = np.flatnonzero(images.labels == label)
        count = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        held[rng.permutation(members)[:count]] = True
    if not held.any():
        raise InputError(f"--val-fraction {fraction}: holds out no image of {images.root}")

    def part(keep: np.ndarray) -> ImageList:
        return replace(images, paths=[p for p, k in zip(images.paths, keep, strict=True) if k],
                                   labels=images.labels[keep])

    return part(~held), part(held)


def is_list(source: str | Path) -> bool:
    """Whether a data source is a list of images: a CSV file of the columns file and label (and split)."""
    return Path(source).suffix.lower() == ".csv" and Path(source).expanduser().is_file()


def _rows(path: Path) -> list[dict]:
    """The rows of a list of images, each with a file and a label; InputError where it is not such a list."""
    try:
        with open(path.expanduser(), newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path} is not a readable list of images ({first_words(err)})") from None
    if not rows or not {"file", "label"} <= set(rows[0]) or any(not row["file"] or not row["label"] for row in rows):
        raise InputError(f"{path}: expected a header row naming the columns file and label (and split, train or "
                         "val), then a row for each image, none empty")
    return rows


def _list_rows(path: Path, split: str) -> ImageList:
    """One split of a list of images: its rows of that split (no split column: all are train), each file relative
    to the list's folder where it is not absolute; the classes are every label of the list, sorted."""
    rows = _rows(path)
    classes = sorted({row["label"] for row in rows})
    mine = [row for row in rows if (row.get("split") or "train") == split]
    if not mine:
        raise InputError(f"no {split} split: {path} has no rows of it")
    index = {c: i for i, c in enumerate(classes)}
    paths = [path.expanduser().parent / row["file"] for row in mine]  # an absolute file stays as it is
    return ImageList(path, paths, np.array([index[row["label"]] for row in mine], np.int64), classes,
                     class_names(classes))


def known_class(image: str | Path, classes: list[str]) -> int | None:
    """The class of an image when its place says so: its folder is named after a class (ImageNet's
    train/<wnid>/ layout), or its file name starts with one and "_" (n01440764_10026.JPEG); else None."""
    image = Path(image)
    index = {c: i for i, c in enumerate(classes)}
    if image.parent.name in index:
        return index[image.parent.name]
    return index.get(image.stem.split("_")[0]) if "_" in image.stem else None


def class_names(classes: list[str]) -> list[str]:
    """Human-readable names: an ILSVRC-2012 wnid becomes its name (n01440764 → tench), anything else stays."""
    known = imagenet_classes()
    return [known.get(c, c) for c in classes]


@functools.cache
def imagenet_classes() -> dict[str, str]:
    """The 1000 ILSVRC-2012 classes, wnid → name, in sorted-wnid order (the class index order)."""
    text = resources.files("alexnet").joinpath("assets", "imagenet_classes.txt").read_text(encoding="utf-8")
    return dict(line.split("\t") for line in text.splitlines())


def _folder(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    return root


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path) -> list[str]:
    classes = [p.name for p in _subfolders(folder)]
    if not classes:
        raise InputError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    return classes


def images_under(folder: Path) -> tuple[list[Path], int]:
    """The image files under `folder` (any depth, sorted), each once however links lead to it, and how many
    other files were passed over. Links are followed, but not to a folder reached before or to one above
    `folder` (either makes a cycle); a name with an image's suffix that is not a regular file (a pipe, a
    socket, a device, a dead link) is passed over with a warning, as reading it could wait for ever."""
    images, others, listed = [], 0, set()
    walked = {(up.st_dev, up.st_ino) for up in map(os.stat, Path(folder).resolve().parents)}  # a link up: a cycle
    for parent, dirs, files in os.walk(folder, followlinks=True):
        where = os.stat(parent)
        if (where.st_dev, where.st_ino) in walked:
            dirs[:] = []
            continue
        walked.add((where.st_dev, where.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .ipynb_checkpoints and the like
        for name in sorted(files):
            path = Path(parent, name)
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
                others += 1
                continue
            try:
                found = os.stat(path)
            except OSError:
                found = None
            if found is None or not stat.S_ISREG(found.st_mode):
                log.warning("skipped %s: not a regular file (a pipe, socket, device or dead link)", printable(path))
                others += 1
            elif (found.st_dev, found.st_ino) not in listed:  # the same file through another link: once
                listed.add((found.st_dev, found.st_ino))
                images.append(path)
    return sorted(images), others


def _list_class_folders(folder: Path, classes: list[str], present: list[str] | None = None) -> ImageList:
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, skipped = [], [], 0
    for name in present or classes:
        images, others = images_under(folder / name)
        if not images:
            raise InputError(f"empty class folder: {printable(folder / name)} has no image files")
        paths += images
        labels += [index[name]] * len(images)
        skipped += others
    return ImageList(folder, paths, np.array(labels, dtype=np.int64), classes, class_names(classes), skipped)


def _list_flat_val(root: Path, folder: Path, classes: list[str], label_file: str | Path | None) -> ImageList:
    paths, skipped = images_under(folder)
    if not paths:
        raise InputError(f"no images in {folder}")
    wnid_of = _val_labels(root, folder, label_file)
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for path in paths:
        wnid = wnid_of.get(path.stem)
        if wnid is None:
            raise InputError(f"no label for {path} in the val label file")
        if wnid not in index:
            raise InputError(f"{path} is labelled {wnid}, which is not one of the {len(classes)} classes")
        labels.append(index[wnid])
    return ImageList(folder, paths, np.array(labels, dtype=np.int64), classes, class_names(classes), skipped)


def _val_labels(root: Path, folder: Path, label_file: str | Path | None) -> dict[str, str]:
    """Image stem (ILSVRC2012_val_00000001) → wnid, from the given label file or one found near the data."""
    places = [root, folder, *sorted(root.glob("*devkit*/data")), *sorted(root.glob("*devkit*"))]
    if label_file is None:
        found = [p / name for name in (CSV_LABELS, DEVKIT_LABELS) for p in places if (p / name).is_file()]
        if not found:
            raise InputError(f"flat val folder {folder} has no label file: put {CSV_LABELS} or the devkit's "
                                    f"{DEVKIT_LABELS} with {DEVKIT_META} in {root}, or name one")
        label_file = found[0]
    label_file = Path(label_file).expanduser()
    if not label_file.is_file():
        raise InputError(f"val label file not found: {label_file}")
    if label_file.suffix.lower() == ".csv":
        return _csv_labels(label_file)
    metas = [p / DEVKIT_META for p in (label_file.parent, *places) if (p / DEVKIT_META).is_file()]
    if not metas:
        raise InputError(f"{label_file} needs the devkit's {DEVKIT_META} (ILSVRC2012_ID → wnid) beside it")
    wnid_of_id = _devkit_wnids(metas[0])
    labels = {}
    for number, line in enumerate(label_file.read_text().split(), start=1):  # line n labels ILSVRC2012_val_n
        if not line.isdigit() or int(line) not in wnid_of_id:
            raise InputError(f"{label_file}, line {number}: {line!r} is not an ILSVRC2012_ID of {metas[0]}")
        labels[f"ILSVRC2012_val_{number:08d}"] = wnid_of_id[int(line)]
    return labels


def _csv_labels(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: ImageId,PredictionString; the first token of the prediction is the wnid."""
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        if rows.fieldnames is None or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
            raise InputError(f"{path} is not a LOC_val_solution.csv: expected columns ImageId,PredictionString")
        labels = {row["ImageId"]: (row["PredictionString"] or "").split()[:1] for row in rows}
    empty = [image for image, wnid in labels.items() if not wnid]
    if empty:
        raise InputError(f"{path}: no wnid in the PredictionString of {empty[0]}")
    return {image: wnid[0] for image, wnid in labels.items()}


def _devkit_wnids(meta: Path) -> dict[int, str]:
    """The devkit's meta.mat: ILSVRC2012_ID (1..1000, not in sorted-wnid order) → wnid."""
    from scipy.io import loadmat

    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    ids, wnids = np.ravel(synsets["ILSVRC2012_ID"]), np.ravel(synsets["WNID"])
    return {int(i): str(w) for i, w in zip(ids, wnids, strict=True) if 1 <= i <= 1000}  # above 1000: inner nodes


class BadImageError(InputError):
    """A file that cannot be used as an image; `reason` is a short category such as "truncated"."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(path, reason)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{printable(self.path)}: {self.reason}"


class BadFiles:
    """A tally of the files refused while reading: one warning line for each, one summary line at the end."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.paths: set[str] = set()

    def add(self, path: str | Path, reason: str) -> None:
        """Count a refused file and log one warning line naming it; a file refused again (next epoch) is not."""
        if str(path) in self.paths:
            return
        self.paths.add(str(path))
        self.counts[reason] += 1
        log.warning("skipped %s: %s", printable(path), reason)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line with the number of files skipped for each reason."""
        if not self.counts:
            return "no bad files"
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"{len(self)} bad file{'s' if len(self) > 1 else ''} skipped: {reasons}"


def open_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file to RGB (from CMYK, grayscale, palette; of the FORMATS), or raise BadImageError."""
    return _decode(Path(path), max_pixels)[0].convert("RGB")


def preprocess(path: str | Path | BinaryIO, size: int = SIDE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode, rescale so the shorter side is `size`, crop the central size×size: uint8 array (size, size, 3).
    `path` may be an open binary file (an upload): its errors name it by its `name` attribute."""
    im, whole = _decode(Path(path) if isinstance(path, str) else path, max_pixels, draft_side=size)
    return square(im, size, whole)


def square(im: Image.Image, size: int = SIDE, whole: tuple[float, float] | None = None) -> np.ndarray:
    """A decoded image (any mode) rescaled so the shorter side is `size`, its central size×size kept: uint8 array
    (size, size, 3). `whole` is the whole picture's (width, height) in `im`'s pixels (default: its size)."""
    # §2 (docs/paper.md#preprocessing): rescale the shorter side to SIDE, then crop out the central square patch.
    im = _eight_bit(im)
    w, h = whole or im.size
    rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    left, top = (rw - size) // 2, (rh - size) // 2
    # Resampling only the crop's box computes exactly the crop's pixels of the whole resized image.
    box = (left * w / rw, top * h / rh, (left + size) * w / rw, (top + size) * h / rh)
    return np.array(im.resize((size, size), RESAMPLE, box=box).convert("RGB"))


def _decode(source: Path | BinaryIO, max_pixels: int,
            draft_side: int | None = None) -> tuple[Image.Image, tuple[float, float]]:
    """An 8-bit RGB or gray image and the whole picture's size in its pixels, from a file or an open binary file; a JPEG
    decodes at 1/2, 1/4 or 1/8 scale (draft mode) where its shorter side stays at least `draft_side`, which is
    much faster for large photos."""
    path = source if isinstance(source, Path) else getattr(source, "name", "image")
    try:
        opened = source.open("rb") if isinstance(source, Path) else contextlib.nullcontext(source)
    except OSError as err:
        reason = {errno.ENOENT: "no such file", errno.EISDIR: "a folder, not an image"}.get(err.errno, "unreadable")
        raise BadImageError(path, reason) from err
    with opened as f:
        try:
            with warnings.catch_warnings():  # PIL warns above its own limit; `max_pixels` decides instead
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(f, formats=FORMATS)
        except Image.DecompressionBombError as err:
            raise BadImageError(path, TOO_MANY_PIXELS) from err
        except UnidentifiedImageError as err:
            raise BadImageError(path, "empty file" if f.seek(0, os.SEEK_END) == 0 else "not an image") from err
        except Exception as err:  # a damaged file can raise almost anything inside PIL's plugins
            raise BadImageError(path, _damage(err)) from err
        size: tuple[float, float] = im.size
        if size[0] * size[1] > max_pixels:  # from the header, before decoding: decompression bombs
            raise BadImageError(path, TOO_MANY_PIXELS)
        if draft_side is not None and im.format in ("JPEG", "MPO"):
            drafted = im.draft(None, (draft_side, draft_side))
            if drafted is not None:
                size = drafted[1][2:]  # the whole picture's (width, height) at the reduced scale
        try:
            im.load()
            # a phone photo's pixels lie as the sensor read them; EXIF's orientation says how to turn them upright
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
                size = size[::-1] if orientation in (5, 6, 7, 8) else size  # turned a quarter: width and height swap
            return _eight_bit(im), size
        except Exception as err:
            raise BadImageError(path, _damage(err)) from err


def _eight_bit(im: Image.Image) -> Image.Image:
    """An image of any mode as 8-bit RGB, or as 8-bit gray ("L") where it has no colour: resized before it is made
    RGB, as it gives the same pixels from a third of the memory (a 1-bit decompression bomb's included). A 16-bit
    image is scaled (PIL's own conversion clips it at 255)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit PNG and TIFF: 0..65535
        levels = np.array(im)
        levels = levels.clip(0, 65535) if levels.dtype.kind == "i" else levels  # mode I: 32 bits, signed
        im = Image.fromarray((np.floor_divide(levels, 257, out=levels)).astype(np.uint8), "L")
    return im if im.mode in ("L", "RGB") else im.convert("L" if im.mode == "1" else "RGB")


def _damage(err: Exception) -> str:
    return "truncated" if "truncated" in str(err).lower() else "corrupt"
