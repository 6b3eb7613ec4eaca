"""What a split of a data set is, wherever its images come from: a store made by `prepare`, or an image folder."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor, np.ndarray]  # uint8 (B, side, side, 3) images, int64 labels, indices


class Split(ABC):
    """One split: each image's source file and label, the classes the labels index, and a way to read batches
    of the images after the §2 preprocessing (shorter side `side`, central side×side; folders.SIDE, 256)."""

    files: list[str]  # each image's source file
    labels: np.ndarray  # int64, one per image: an index into `classes`
    classes: list[str]  # class folder names (ImageNet: wnids), sorted
    names: list[str]  # human-readable class names, same order
    side: int  # the images' height and width after the preprocessing (folders.SIDE; a store may have another)

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def batches(self, batches: list[np.ndarray], workers: int, pin_memory: bool,
                bad: Callable[[str, str], None]) -> Iterator[Batch]:
        """The images at each array of indices, in order, read ahead; a file that cannot be decoded is reported
        to `bad` (its path and the reason) and left out of its batch, with its label and index."""
