"""The fc7 features of a whole split (§6.1: the activations of the last hidden layer, 4096 in the paper's
network, after its ReLU, describe an image for the nearest-neighbor search of Figure 4), in a folder that
survives interruptions.

A features folder, made by `extract_features` (`alexnet features`):

    meta.json      written first: the checkpoint and a digest of its weights, the data and split, the
                   crop, precision and batch size, the number of rows and of fc7's units (D), the classes
                   and their names
    features.npy   float32 (N, D), NumPy .npy: row i is fc7 after its ReLU for the centre crop of
                   image i of the split; filled in place through a memory map, batch after batch
    labels.npy     int64 (N,): each row's class, an index into meta.json's "classes"
    files.json     a JSON list of N names: each row's image file, as an absolute path (any name the file
                   system allows, as the store's files.json)
    progress.json  {"rows": r, "bad": [...]}: rows 0..r-1 are final (rewritten after every batch);
                   "bad" lists rows whose image could not be decoded (their features stay zero)
    done.json      written last, with the final "rows" and "bad": the folder is complete exactly when
                   this file exists

Run again with the same checkpoint and data, `alexnet features` continues after the last finished batch,
with the batch size it started with, so the result equals that of an uninterrupted run; a folder whose
first batch never finished starts over with the settings of the run that finds it.
"""

import contextlib
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.augment import center_crop
from .data.folders import SIDE, BadImageError, preprocess
from .data.loader import Loader
from .data.sources import is_store, open_split, prepared_root
from .data.store import Store
from .errors import InputError
from .files import atomic_write, read_json, write_json
from .inference import Network, load_network
from .options import COUNT, SIZE, argument, option
from .runtime import PRECISIONS

FEATURES_FORMAT = "alexnet-features-2"  # 2: files.json (1 had files.txt, one name a line)


@dataclass
class FeaturesConfig:
    """`alexnet features`'s arguments."""

    checkpoint: str = argument("a checkpoint file or run folder")
    data: str | None = option(None, "a store or an image folder (default: the built-in photos)")
    split: str = option("train", "split to describe")
    out: str = option(None, "features folder to write (features.npy, labels.npy, files.json)", required=True)
    batch_size: int = option(64, "images per batch (a resumed run keeps its own)", accepts=COUNT)
    device: str = option("auto", "auto, cpu, cuda, ...")
    precision: str = option("auto", "arithmetic precision", choices=PRECISIONS)
    workers: int = option(2, "decoding processes when reading JPEG folders", accepts=SIZE)
    progress: bool = option(True, "no progress bar")


def weights_digest(model: torch.nn.Module) -> str:
    """A SHA-256 of a network's weights: which network made a set of features."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)};".encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


@torch.no_grad()
def fc7(net: Network, images: torch.Tensor, crop: int) -> torch.Tensor:
    """fc7 after its ReLU of the centre crops of uint8 (B, side, side, 3) images: float32, on the CPU."""
    with net.autocast():
        return net.model.forward_fc7(center_crop(images.to(net.device, non_blocking=True), net.recipe,
                                                 crop)).float().cpu()


# what has to match for a features folder to be continued rather than refused
IDENTITY = ("format", "weights", "crop", "precision", "split", "count", "files", "classes")


def extract_features(path: str, data: str | None, out: str | Path, split: str = FeaturesConfig.split,
                     batch_size: int = FeaturesConfig.batch_size, device: str = FeaturesConfig.device,
                     precision: str = FeaturesConfig.precision, workers: int = FeaturesConfig.workers,
                     progress: bool = FeaturesConfig.progress) -> Path:
    """`alexnet features`: fc7 (after ReLU) of the centre crop of every image of a split, into the folder
    `out` (see the module's docstring); an interrupted run continues where it stopped (§6.1)."""
    from tqdm import tqdm

    out = Path(out)
    if batch_size < 1:
        raise InputError(f"the batch size must be positive, got {batch_size}")
    net = load_network(path, device, precision)
    root = prepared_root(data)
    source = open_split(root, split)
    net.check_side(source, root)
    files = [os.path.abspath(f) for f in source.files]
    if not files:
        raise InputError(f"the {split} split of {root} has no images")
    meta = {"format": FEATURES_FORMAT, "checkpoint": os.path.abspath(net.info["path"]),
            "weights": weights_digest(net.model), "arch": net.record.arch, "side": source.side, "crop": net.crop,
            "precision": net.precision, "data": os.path.abspath(root), "split": split,
            "count": len(files), "dim": net.model.layers()["fc7"].out_features, "batch_size": batch_size,
            "files": hashlib.sha256(json.dumps(files).encode()).hexdigest(),
            "classes": source.classes, "names": source.names}
    resume = _check_folder(out, meta)
    if resume is None:
        return out
    done = read_json(out / "progress.json") if resume and (out / "progress.json").is_file() else None
    if done is None or done["rows"] == 0:  # no row is final yet: nothing to keep, this run's settings apply
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "meta.json", meta)
        features = np.lib.format.open_memmap(out / "features.npy", mode="w+", dtype=np.float32,
                                             shape=(len(files), meta["dim"]))
        atomic_write(out / "labels.npy", lambda f: np.save(f, np.asarray(source.labels, np.int64)))
        write_json(out / "files.json", files)
        done = {"rows": 0, "bad": []}
        write_json(out / "progress.json", done)
    else:
        meta = read_json(out / "meta.json")  # its batch size: the batches of the first run, for equal results
        if meta["batch_size"] != batch_size:
            print(f"continuing {out} with its batch size {meta['batch_size']}")
        batch_size = meta["batch_size"]
        features = np.load(out / "features.npy", mmap_mode="r+")
        if features.shape != (len(files), meta["dim"]):
            raise InputError(f"{out}/features.npy has shape {features.shape}, expected {(len(files), meta['dim'])}")

    loader = Loader(source, batch_size, shuffle=False, workers=workers)
    rows, bad = done["rows"], list(done["bad"])
    started = time.monotonic()
    with tqdm(total=len(files), initial=rows, unit="img", desc="features", disable=not progress,
              dynamic_ncols=True) as bar:
        for number, (images, _, indices) in enumerate(loader.epoch(0, start=rows // batch_size), rows // batch_size):
            end = min((number + 1) * batch_size, len(files))
            if len(indices):
                features[indices] = fc7(net, images, meta["crop"]).numpy()
                features.flush()
            bad += sorted(set(range(number * batch_size, end)) - set(indices.tolist()))
            rows = end
            write_json(out / "progress.json", {"rows": rows, "bad": bad})  # after the rows are on disk
            bar.update(end - number * batch_size)
    del features
    write_json(out / "done.json", {"rows": rows, "bad": bad, "seconds": time.monotonic() - started})
    note = f"; {loader.bad.summary()} (their rows are listed as bad)" if bad else ""
    print(f"wrote the fc7 features of {len(files)} {split} images to {out}{note}")  # with or without the bar
    return out


def _check_folder(out: Path, meta: dict) -> bool | None:
    """Whether `out` holds a started extraction of the same features (True), nothing yet (False), or the
    finished one (None); a folder with something else raises ValueError."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError(f"{out} is not a folder")
    if not (out / "meta.json").is_file():
        if any(out.iterdir()):
            raise InputError(f"{out} is not empty and is not a features folder; choose another --out")
        return False
    old = read_json(out / "meta.json")
    for key in IDENTITY:
        if old.get(key) != meta[key]:
            show = (lambda v: str(v)[:12]) if key in ("weights", "files") else (lambda v: repr(v)[:60])
            raise InputError(f"{out} holds other features ({key} {show(old.get(key))} there, {show(meta[key])} "
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
            raise InputError(f"{self.path} is not a features folder made by `alexnet features`")
        if not (self.path / "done.json").is_file():
            raise InputError(f"{self.path} is unfinished: run `alexnet features` again to complete it")
        self.meta = read_json(self.path / "meta.json")
        if self.meta.get("format") != FEATURES_FORMAT:
            raise InputError(f"{self.path} holds features of format {self.meta.get('format')!r}, this alexnet reads "
                             f"{FEATURES_FORMAT!r}: run `alexnet features` again into another folder")
        self.bad = read_json(self.path / "done.json")["bad"]
        self.features = np.load(self.path / "features.npy", mmap_mode="r")
        self.labels = np.load(self.path / "labels.npy")
        self.files: list[str] = read_json(self.path / "files.json")
        self.names: list[str] = self.meta["names"]
        if not (len(self.features) == len(self.labels) == len(self.files) == self.meta["count"]):
            raise InputError(f"{self.path}: features, labels and files disagree in length")

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
        """The preprocessed image of a row (side×side): from the store it was read from, or its file; None if
        neither can be read any more."""
        split = self._store
        if split is not None and os.path.abspath(split.files[row]) == self.files[row]:
            return split.read(np.array([row]))[0]
        try:
            return preprocess(self.files[row], self.meta.get("side", SIDE))  # a folder without "side" holds SIDE
        except BadImageError:
            return None
