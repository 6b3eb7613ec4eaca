"""Batches of preprocessed images for training and evaluation, from a store or straight from image folders.

A batch is (uint8 images (B, 256, 256, 3), int64 labels (B,), the images' indices in the split): the
256×256 preprocessing of §2 done, the augmentation of §4.1 still to come (augment.py, on the device
that trains, keyed by the indices). The order of an epoch
is a permutation drawn from (seed, epoch) alone, so a resumed run sees exactly the batches it would
have seen. Under DDP each global batch is cut into one contiguous slice per process.
"""

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .folders import DEFAULT_DATA, BadFiles, BadImageError, ImageList, list_images, preprocess, splits
from .store import Store, StoreSplit


def open_split(data: str | Path | None, split: str) -> StoreSplit | ImageList:
    """A split of a store (made by `alexnet prepare`) or of an image folder; the built-in photos for None."""
    root = Path(data) if data is not None else DEFAULT_DATA
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if is_store(root):
        return Store(root).split(split)
    return list_images(root, split)


def split_names(data: str | Path) -> list[str]:
    """The splits a store or an image folder has ("train", "val")."""
    return Store(data).splits if is_store(data) else splits(data)


def is_store(path: str | Path) -> bool:
    """Whether `path` is a store folder, finished or not."""
    return (Path(path) / "store.json").is_file() or (Path(path) / "plan.json").is_file()


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


class _FolderBatch(torch.utils.data.Dataset):
    """Decodes whole batches of files in DataLoader worker processes (the quick path: no prepare)."""

    def __init__(self, images: ImageList, batches: list[np.ndarray], size: int):
        self.images, self.batches, self.size = images, batches, size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        arrays, kept, bad = [], [], []
        for index in self.batches[i]:
            path = self.images.paths[index]
            try:
                arrays.append(preprocess(path, self.size))
                kept.append(index)
            except BadImageError as err:
                bad.append((str(path), err.reason))
        images = np.stack(arrays) if arrays else np.zeros((0, self.size, self.size, 3), np.uint8)
        kept = np.array(kept, np.int64)
        return torch.from_numpy(images), torch.from_numpy(self.images.labels[kept]), kept, bad


class Loader:
    """One split as batches: shuffled or in order, sliced for this process, read ahead in the background."""

    def __init__(self, source: StoreSplit | ImageList, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 2, size: int = 256, pin_memory: bool = False):
        if batch_size % world:
            raise ValueError(f"the batch size {batch_size} does not split evenly over {world} processes")
        self.source, self.batch_size, self.shuffle, self.seed = source, batch_size, shuffle, seed
        self.rank, self.world, self.workers, self.size = rank, world, workers, size
        self.pin_memory = pin_memory  # batches in page-locked memory, so that copies to a GPU run asynchronously
        self.bad = BadFiles()

    def __len__(self) -> int:
        """Batches per epoch."""
        n, last = len(self.source.labels), len(self.source.labels) % self.batch_size
        return -(-n // self.batch_size) - (0 < last < self.world)

    @property
    def classes(self) -> list[str]:
        """The class folder names (wnids) the labels index."""
        return self.source.classes

    def _slices(self, epoch: int, start: int) -> list[np.ndarray]:
        order = epoch_order(len(self.source.labels), self.seed, epoch, self.shuffle)
        batches = []
        for first in range(start * self.batch_size, len(order), self.batch_size):
            whole = order[first:first + self.batch_size]
            if len(whole) < self.world:  # too short to give every process an image
                break
            # this process's contiguous slice of the global batch; a short last batch splits unevenly
            bounds = np.linspace(0, len(whole), self.world + 1).round().astype(int)
            batches.append(whole[bounds[self.rank]:bounds[self.rank + 1]])
        return batches

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """The batches of `epoch`, from batch number `start` on (to resume mid-epoch)."""
        batches = self._slices(epoch, start)
        if isinstance(self.source, StoreSplit):
            yield from _read_ahead(self.source, batches, self.pin_memory)
            return
        loader = torch.utils.data.DataLoader(_FolderBatch(self.source, batches, self.size), batch_size=None,
                                             num_workers=self.workers, prefetch_factor=4 if self.workers else None,
                                             pin_memory=self.pin_memory)
        for images, labels, indices, bad in loader:
            for path, reason in bad:
                self.bad.add(path, reason)
            yield images, labels, indices.numpy()  # the DataLoader made the indices a tensor


def _read_ahead(split: StoreSplit, batches: list[np.ndarray], pin_memory: bool, depth: int = 3):
    """Read the store's batches in a background thread (memory-map copies release the GIL)."""
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def work():
        try:
            for indices in batches:
                if stop.is_set():
                    return
                images = torch.empty((len(indices), *split.shards[0].shape[1:]), dtype=torch.uint8,
                                     pin_memory=pin_memory)
                split.read(indices, out=images.numpy())
                ready.put((images, torch.from_numpy(split.labels[indices]), indices))
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
