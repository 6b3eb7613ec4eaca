"""Batches of preprocessed images for training and evaluation, from any split (a store's or an image folder's).

A batch is (uint8 images (B, side, side, 3), int64 labels (B,), the images' indices in the split): the
preprocessing of §2 done (side 256 unless prepared at another --size), the augmentation of §4.1 still to come
(augment.py, on the device that trains, keyed by the indices). The order of an epoch is a permutation drawn
from (seed, epoch) alone, so a resumed run sees exactly the batches it would have seen; asked to, a shuffled
order is stratified by class (stratified_order). Under DDP each global batch is cut into one contiguous slice per
process.
"""

from collections.abc import Iterator

import numpy as np

from .folders import BadFiles
from .split import Batch, Split


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def stratified_order(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """A permutation seeded by (seed, epoch) that spreads each class evenly over the epoch.

    Every run of consecutive images then holds each class in its share of the data set, off by less than
    two images, so that a batch's class counts follow the data set's rather than chance. §5 does not say how
    batches are drawn; with few classes a plain shuffle's swings in the class counts of a batch of 128
    (the built-in photos: 12.8 ± 3 of each class) move every logit of a class together, and at the start of
    training that swing is larger than what the classes' features tell apart. With 1000 classes a batch of
    128 holds no class more than twice. Measured: docs/reproduction.md#stratified-batches-and-a-centered-initialization.
    """
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(len(labels))
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # class by class, each in a random order
    _, first, size = np.unique(labels[grouped], return_index=True, return_counts=True)
    rank, size = np.arange(len(labels)) - np.repeat(first, size), np.repeat(size, size)
    place = np.empty(len(labels))
    place[grouped] = (rank + rng.random(len(labels))) / size  # the k-th of a class somewhere in its k-th share
    return np.argsort(place, kind="stable")


class Loader:
    """One split as batches: shuffled or in order, sliced for this process, read ahead in the background."""

    def __init__(self, source: Split, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 workers: int = 2, pin_memory: bool = False, stratify: bool = False):
        self.source, self.batch_size, self.shuffle, self.seed = source, batch_size, shuffle, seed
        self.stratify = stratify  # a shuffled epoch's order: stratified_order, else a plain permutation
        self.rank, self.world, self.workers = rank, world, workers
        self.pin_memory = pin_memory  # batches in page-locked memory, so that copies to a GPU run asynchronously
        self.bad = BadFiles()

    def __len__(self) -> int:
        """Batches per epoch."""
        n, last = len(self.source), len(self.source) % self.batch_size
        return -(-n // self.batch_size) - (0 < last < self.world)

    @property
    def classes(self) -> list[str]:
        """The class folder names (wnids) the labels index."""
        return self.source.classes

    def _slices(self, epoch: int, start: int) -> list[np.ndarray]:
        if self.shuffle and self.stratify:
            order = stratified_order(self.source.labels, self.seed, epoch)
        else:
            order = epoch_order(len(self.source), self.seed, epoch, self.shuffle)
        batches = []
        for first in range(start * self.batch_size, len(order), self.batch_size):
            whole = order[first:first + self.batch_size]
            if len(whole) < self.world:  # too short to give every process an image
                break
            # this process's contiguous slice of the global batch; a short last batch splits unevenly
            bounds = np.linspace(0, len(whole), self.world + 1).round().astype(int)
            batches.append(whole[bounds[self.rank]:bounds[self.rank + 1]])
        return batches

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, from batch number `start` on (to resume mid-epoch)."""
        return self.source.batches(self._slices(epoch, start), self.workers, self.pin_memory, self.bad.add)
