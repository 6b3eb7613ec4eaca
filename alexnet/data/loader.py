"""Batches of preprocessed images for training and evaluation, from any split (a store's or an image folder's).

A batch is (uint8 images (B, 256, 256, 3), int64 labels (B,), the images' indices in the split): the
256×256 preprocessing of §2 done, the augmentation of §4.1 still to come (augment.py, on the device
that trains, keyed by the indices). The order of an epoch is a permutation drawn from (seed, epoch)
alone, so a resumed run sees exactly the batches it would have seen. Under DDP each global batch is cut
into one contiguous slice per process.
"""

from collections.abc import Iterator

import numpy as np

from .folders import BadFiles
from .split import Batch, Split


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


class Loader:
    """One split as batches: shuffled or in order, sliced for this process, read ahead in the background."""

    def __init__(self, source: Split, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 workers: int = 2, pin_memory: bool = False):
        self.source, self.batch_size, self.shuffle, self.seed = source, batch_size, shuffle, seed
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
