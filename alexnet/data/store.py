"""`alexnet prepare`: the paper's preprocessing done once, into a store built for fast training (§2, §4.1).

Every image is decoded once, its shorter side rescaled to 256 and the central 256×256 kept (§2), and
written as raw uint8 RGB into shards that training reads as memory maps. The same pass accumulates,
over the training split, the mean image (in float64) and the 3×3 covariance of the RGB values of all
pixels, whose eigen-decomposition drives the colour noise (§4.1).

The store, a folder:

    plan.json                    what is being prepared: the source files, labels and shard ranges
    train/images-00000.npy       uint8 (n, 256, 256, 3), NumPy .npy format, up to `shard_size` images
    train/shard-00000.npz        that shard's labels, source files and pixel statistics; written after
                                 the images, so a shard without it is unfinished and is redone
    train/labels.npy             int64 (N,): every image's class
    train/files.json             a JSON list of every image's source file (any name the file system allows)
    train/...                    more shards; val/ likewise
    mean.npy                     float64 (256, 256, 3): the mean image of the train split
    rgb.npz                      eigval (3,), eigvec (3, 3) (columns), cov (3, 3), mean (3,): the PCA of
                                 the RGB values of all training pixels, on the [0, 1] scale
    store.json                   written last: the store is complete exactly when this file exists

Run again on the same source, `prepare` finishes what an interrupted run left (finished shards are
kept), also after a worker process died or the disk filled up. A store of other files or settings is
refused, with the first difference named, unless --overwrite; a store an older alexnet made is made again.
Either way only the files above are deleted: whatever else DST holds stays. A multi-node run can copy or
split the shards.
"""

import errno
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import Failure, InputError, printable
from ..files import atomic_write, read_json, write_json
from ..kernels import cpu_kernels
from ..options import COUNT, FRACTION, argument, option, up_to
from .folders import MAX_PIXELS, SIDE, BadFiles, BadImageError, ImageList, hold_out, list_images, preprocess, splits
from .split import Batch, Split
from .stats import PixelStats, Recipe

VERSION = 3  # 3: files.json (2 had files.txt, one name a line); 2: rgb.npz on the [0, 1] scale (1: 0-255)


@dataclass
class PrepareConfig:
    """`alexnet prepare`'s arguments."""

    src: str = argument("image folder (ROOT/train/<class>/*, ROOT/val/..., or ROOT/<class>/*) or a CSV list of images")
    dst: str = argument("store folder to write")
    shard_size: int = option(4096, "images per shard file", accepts=COUNT)
    workers: int | None = option(None, "decoding processes (default: one per core)", accepts=COUNT)
    labels: str | None = option(None, "label file of a flat validation folder (default: found in SRC)")
    val_fraction: float = option(0.0, "SRC without val/: the fraction of each class's images held out as the "
                                      "store's validation split", accepts=FRACTION)
    size: int = option(SIDE, "side of the stored square images", accepts=up_to(4 * SIDE))
    overwrite: bool = option(False, "replace a store in DST that was made of other files or settings (its own "
                                    "files only: nothing else in DST is touched)")


def _load_chunk(job: tuple[str, int, list[str], int, bool]) -> tuple[list[str | None], PixelStats]:
    """In a worker: preprocess consecutive files into their rows of the shard; return the reason each
    refused file was refused (None where it was written) and, for the training split, their statistics."""
    shard_path, first, files, size, train = job
    shard = np.load(shard_path, mmap_mode="r+")
    stats = PixelStats.empty(size, size)
    reasons: list[str | None] = []
    for row, path in enumerate(files, first):
        try:
            image = preprocess(path, size, MAX_PIXELS)
        except BadImageError as err:
            reasons.append(err.reason)
            continue
        shard[row] = image
        reasons.append(None)
        if train:
            stats.add(image)
    shard.flush()
    return reasons, stats


def _plan(src: Path, size: int, shard_size: int, label_file: str | Path | None, val_fraction: float = 0) -> dict:
    src = src.resolve()  # each file by its absolute path: features and neighbors name it from any folder
    lists: dict[str, ImageList] = {split: list_images(src, split, label_file) for split in splits(src)}
    plan = {"version": VERSION, "source": str(src), "size": size, "shard_size": shard_size, "splits": {}}
    if val_fraction:  # recorded only where given, so that the plans of other stores stay as they were
        if "val" in lists:
            raise InputError(f"--val-fraction {val_fraction}: {src} has a validation split of its own")
        lists["train"], lists["val"] = hold_out(lists["train"], val_fraction)
        plan["val_fraction"] = val_fraction
    for split, images in lists.items():
        plan["splits"][split] = {
            "files": [str(p) for p in images.paths], "labels": images.labels.tolist(),
            "classes": images.classes, "names": images.names, "not_images": images.skipped,
        }
    plan["digest"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return plan


def _made(plan: dict) -> dict:
    """What a plan makes: its files, labels, classes and settings, without the count of other files beside the
    images (a Thumbs.db, say, changes nothing in the store) and without the digest, which counts it."""
    return {**{k: v for k, v in plan.items() if k != "digest"},
            "splits": {split: {k: v for k, v in part.items() if k != "not_images"}
                       for split, part in plan["splits"].items()}}


def _difference(old: dict, new: dict) -> str:
    """The first way the store of plan `old` differs from what plan `new` would make, in words."""
    if old.get("source") != new["source"]:
        return f"from {old.get('source')}, not {new['source']}"
    for key in ("size", "shard_size"):
        if old.get(key) != new[key]:
            return f"with --{key.replace('_', '-')} {old.get(key)}, not {new[key]}"
    if list(old["splits"]) != list(new["splits"]):
        return f"with the splits {', '.join(old['splits'])}, where the source has {', '.join(new['splits'])}"
    for split, part in new["splits"].items():
        was = old["splits"][split]
        if was["classes"] != part["classes"]:
            return f"with other {split} classes ({len(was['classes'])} then, {len(part['classes'])} now)"
        added, removed = set(part["files"]) - set(was["files"]), set(was["files"]) - set(part["files"])
        if added or removed:
            some = f"{printable(min(added))} is new" if added else f"{printable(min(removed))} is gone"
            return f"from other {split} files ({len(added)} new, {len(removed)} gone: {some})"
    return "from the same files with other labels"


def _upgraded(dst: Path, old: dict, plan: dict) -> bool:
    """Whether the complete format-2 store of `old` in `dst`, made from what `plan` makes, has become a store of
    this format: its files.txt (one name a line) rewritten as files.json, its images kept. False where a name held
    a newline (the lines do not match the images), and for any other store: made again."""
    if old.get("version") != 2 or _made({**old, "version": VERSION}) != _made(plan) or not (
            dst / "store.json").is_file():
        return False
    lists = {split: (dst / split / "files.txt").read_text().splitlines() for split in old["splits"]}
    if any(len(files) != len(np.load(dst / split / "labels.npy", mmap_mode="r")) for split, files in lists.items()):
        return False
    for split, files in lists.items():
        write_json(dst / split / "files.json", files)
        (dst / split / "files.txt").unlink()
    write_json(dst / "plan.json", plan)
    write_json(dst / "store.json", {**read_json(dst / "store.json"), "version": VERSION, "digest": plan["digest"]})
    return True


def _remove_store(dst: Path, splits: list[str]) -> None:
    """Delete what `prepare` wrote into `dst` for a plan of `splits` (see the module's docstring), nothing else."""
    for split in (dst / name for name in splits if (dst / name).is_dir() and not (dst / name).is_symlink()):
        for pattern in ("images-*.npy", "shard-*.npz", "labels.npy", "files.json", "files.txt"):  # .txt: format 2
            for f in split.glob(pattern):
                f.unlink()
        if not any(split.iterdir()):
            split.rmdir()
    for name in ("store.json", "mean.npy", "rgb.npz", "plan.json"):  # plan.json last: it marks a store
        (dst / name).unlink(missing_ok=True)


def prepare(src: str | Path, dst: str | Path, size: int = PrepareConfig.size,
            shard_size: int = PrepareConfig.shard_size, workers: int | None = PrepareConfig.workers,
            label_file: str | Path | None = PrepareConfig.labels, overwrite: bool = PrepareConfig.overwrite,
            progress: bool = True, val_fraction: float = PrepareConfig.val_fraction) -> "Store":
    """Preprocess every split of the image folder `src` into the store `dst` on all cores (see above); a store
    there of other files or settings is refused unless `overwrite`, which deletes its files and no others."""
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    plan = _plan(src, size, shard_size, label_file, val_fraction)
    if dst.is_dir() and any(dst.iterdir()):
        if not (dst / "plan.json").is_file():
            raise InputError(f"{dst} is not empty and is not an alexnet store; choose another destination")
        try:
            old = json.loads((dst / "plan.json").read_text())
            same = _made(old) == _made(plan)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{dst}/plan.json is damaged: not a store's plan; choose another destination") from None
        if same and (dst / "store.json").is_file():
            if progress:
                print(f"{dst} is already prepared from {src}")
            return Store(dst)
        if _upgraded(dst, old, plan):
            print(f"{dst}: its file list rewritten in format {VERSION}; the images are as they were")
            return Store(dst)
        if not same:  # else an unfinished store of this plan: finished below
            if old.get("version") == VERSION and not overwrite:
                raise InputError(f"{dst} holds a store prepared {_difference(old, plan)}; --overwrite replaces it "
                                 "(its own files, nothing else there), or choose another destination")
            why = "as asked (--overwrite)" if old.get("version") == VERSION else "made by another alexnet"
            print(f"{dst}: replacing the store's own files, {why}")
            _remove_store(dst, list(old["splits"]))
    dst.mkdir(parents=True, exist_ok=True)
    write_json(dst / "plan.json", plan)

    bad = BadFiles()
    workers = workers or len(os.sched_getaffinity(0))
    cpu_kernels()  # built or loaded once here, before the workers start
    stats = {}
    with ProcessPoolExecutor(workers) as pool:
        for split, part in plan["splits"].items():
            (dst / split).mkdir(exist_ok=True)
            files, labels = part["files"], part["labels"]
            shards, bad_before = [], len(bad)
            with tqdm(total=len(files), desc=f"prepare {split}", unit="img", disable=not progress,
                      smoothing=0.1) as bar:  # closed before an error is told, so that the error is the last line
                for first in range(0, len(files), shard_size):
                    marker = dst / split / f"shard-{first // shard_size:05d}.npz"
                    if not marker.is_file():
                        _write_shard(pool, files[first:first + shard_size], labels[first:first + shard_size],
                                     size, marker, split == "train", bad, bar, bad_before)
                    else:
                        bar.update(min(shard_size, len(files) - first))
                    shards.append(marker)
            stats[split] = _finish_split(dst / split, shards, size, split == "train")
    if "train" in stats:
        _write_statistics(dst, stats["train"])
    counts = {split: int(np.load(dst / split / "labels.npy").shape[0]) for split in plan["splits"]}
    write_json(dst / "store.json", {"version": VERSION, "digest": plan["digest"], "counts": counts,
                                     "bad_files": dict(bad.counts)})
    print(f"prepared {', '.join(f'{n} {s}' for s, n in counts.items())} images into {dst}; {bad.summary()}")
    return Store(dst)


def _write_shard(pool: ProcessPoolExecutor, files: list[str], labels: list[int], size: int, marker: Path,
                 train: bool, bad: BadFiles, bar, bad_before: int, chunk: int = 32) -> None:
    """Decode one shard's files on all workers straight into the shard, then write its marker; the bar shows
    the split's bad files (those found after the first `bad_before`). A worker that dies raises Failure."""
    images_path = marker.with_name(marker.name.replace("shard-", "images-").replace(".npz", ".npy"))
    partial = images_path.with_name(images_path.stem + ".partial.npy")
    try:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3)).flush()
        # every block taken now, so that a full disk is an OSError here, not a SIGBUS in a worker writing to the map
        if hasattr(os, "posix_fallocate"):  # Linux and the BSDs; macOS has no such call
            with open(partial, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        jobs = [(str(partial), i, files[i:i + chunk], size, train) for i in range(0, len(files), chunk)]
        stats = PixelStats.empty(size, size)
        kept = []
        for (_, first, chunk_files, _, _), (reasons, chunk_stats) in zip(jobs, pool.map(_load_chunk, jobs),
                                                                        strict=True):
            for row, (path, reason) in enumerate(zip(chunk_files, reasons, strict=True), first):
                if reason is None:
                    kept.append(row)
                else:
                    bad.add(path, reason)
            stats.merge(chunk_stats)
            bar.update(len(chunk_files))
            if len(bad) > bad_before:
                bar.set_postfix(bad=len(bad) - bad_before)
        if len(kept) < len(files):  # refused files left empty rows: keep the written ones, in order
            written = np.load(partial, mmap_mode="r")
            np.save(partial, written[kept])
        partial.replace(images_path)
        atomic_write(marker, lambda f: np.savez(
            f, labels=np.array(labels, np.int64)[kept], files=np.array(files)[kept],
            image_sum=stats.image_sum, pixel_sum=stats.pixel_sum, pixel_outer=stats.pixel_outer))
    except BaseException as err:
        for unfinished in (partial, images_path):  # a rerun redoes the shard: they would only take room
            unfinished.unlink(missing_ok=True)
        resume = "the finished shards are kept: run `alexnet prepare` again to go on"
        if isinstance(err, BrokenProcessPool):
            raise Failure(f"a worker process died (killed, or out of memory) while writing {images_path}; "
                          f"{resume}") from None
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"{err.strerror}; {resume} once there is room", str(images_path)) from None
        raise


def _finish_split(folder: Path, shards: list[Path], size: int, train: bool) -> PixelStats:
    """Gather the shards' labels and file lists; sum their statistics (the training split's)."""
    labels, files = [], []
    stats = PixelStats.empty(size, size)
    for marker in shards:
        with np.load(marker) as shard:
            labels.append(shard["labels"])
            files += shard["files"].tolist()
            if train:
                stats.merge(PixelStats(len(shard["labels"]), shard["image_sum"], shard["pixel_sum"],
                                       shard["pixel_outer"]))
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    atomic_write(folder / "labels.npy", lambda f: np.save(f, labels))
    write_json(folder / "files.json", files)  # JSON keeps any name: a newline, bytes that are not UTF-8
    return stats


def _write_statistics(dst: Path, stats: PixelStats) -> None:
    """§2: the mean image; §4.1: the eigen-decomposition of the RGB covariance over all training pixels."""
    if stats.count == 0:
        raise InputError("the training split has no usable images")
    atomic_write(dst / "mean.npy", lambda f: np.save(f, stats.mean_image()))
    atomic_write(dst / "rgb.npz", lambda f: np.savez(f, **stats.pca()))


@dataclass
class StoreSplit(Split, torch.utils.data.Dataset):
    """One split of a store: its images as memory maps, with labels, classes and source files; its batches
    are read ahead by a background thread (memory-map copies release the GIL). As a torch Dataset, item i is
    (image, label): the image a uint8 (3, side, side) tensor after §2's preprocessing (torchvision.io's layout),
    or what `transform` makes of that tensor."""

    shards: list[np.ndarray]
    labels: np.ndarray
    files: list[str]
    classes: list[str]
    names: list[str]
    transform: Callable[[torch.Tensor], object] | None = None

    def __post_init__(self):
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.side = self.shards[0].shape[1]

    def __getitem__(self, i: int) -> tuple[object, int]:
        """Image i, as a uint8 (3, side, side) tensor or what `transform` makes of it, and its label."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} of a split of {len(self)}")
        i %= len(self)
        image = torch.from_numpy(self.read(np.array([i]))[0]).permute(2, 0, 1)
        return (image if self.transform is None else self.transform(image)), int(self.labels[i])

    def __getstate__(self) -> dict:
        """Its memory maps as their files' paths: a DataLoader's worker processes map them again, rather than
        receive every image through a pipe."""
        return {**self.__dict__, "shards": [s.filename if isinstance(s, np.memmap) else s for s in self.shards]}

    def __setstate__(self, state: dict) -> None:
        shards = [s if isinstance(s, np.ndarray) else np.load(s, mmap_mode="r") for s in state["shards"]]
        self.__dict__.update(state, shards=shards)

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The images at `indices` (any order), uint8 (len, 256, 256, 3), into `out` if given."""
        if out is None:
            out = np.empty((len(indices), *self.shards[0].shape[1:]), np.uint8)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        for s in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == s)
            local = indices[rows] - self.offsets[s]
            order = np.argsort(local)  # in file order: sequential reads where the batch allows
            out[rows[order]] = self.shards[s][local[order]]
        return out

    def batches(self, batches: list[np.ndarray], workers: int, pin_memory: bool,
                bad: Callable[[str, str], None], depth: int = 3) -> Iterator[Batch]:
        """Read the batches `depth` ahead in a thread (a store has no bad files, and needs no workers)."""
        ready: queue.Queue = queue.Queue(depth)
        stop = threading.Event()

        def work():
            try:
                for indices in batches:
                    if stop.is_set():
                        return
                    images = torch.empty((len(indices), *self.shards[0].shape[1:]), dtype=torch.uint8,
                                         pin_memory=pin_memory)
                    self.read(indices, out=images.numpy())
                    ready.put((images, torch.from_numpy(self.labels[indices]), indices))
            except Exception as err:  # raised in the consumer, which would otherwise wait forever
                ready.put(err)
                return
            ready.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(0.05)


class Store:
    """A complete store made by `prepare`; refuses an unfinished one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "store.json").is_file():
            why = "an unfinished store: run `alexnet prepare` again to finish it" if (
                self.path / "plan.json").is_file() else "not a store made by `alexnet prepare`"
            raise InputError(f"{self.path} is {why}")
        version = json.loads((self.path / "store.json").read_text()).get("version")
        if version != VERSION:
            raise InputError(f"{self.path} is a store of format {version}, this alexnet reads format {VERSION}: "
                             "run `alexnet prepare` again to remake it")
        self.plan = json.loads((self.path / "plan.json").read_text())
        self.splits = list(self.plan["splits"])

    def split(self, name: str, transform: Callable[[torch.Tensor], object] | None = None) -> StoreSplit:
        """The split `name` ("train" or "val"); as a torch Dataset, its images go through `transform` (see
        StoreSplit)."""
        if name not in self.splits:
            raise InputError(f"{self.path} has no {name} split (it has: {', '.join(self.splits)})")
        folder, part = self.path / name, self.plan["splits"][name]
        shards = [np.load(p, mmap_mode="r") for p in sorted(folder.glob("images-*.npy"))]
        shards = [s for s in shards if len(s)] or shards[:1]
        files = read_json(folder / "files.json")
        return StoreSplit(shards, np.load(folder / "labels.npy"), files, part["classes"], part["names"], transform)

    def recipe(self) -> Recipe:
        """The training split's mean image and RGB principal components, as `prepare` computed them."""
        with np.load(self.path / "rgb.npz") as rgb:
            eigval, eigvec = torch.from_numpy(rgb["eigval"]), torch.from_numpy(rgb["eigvec"])
        return Recipe(torch.from_numpy(np.load(self.path / "mean.npy")), eigval, eigvec)
