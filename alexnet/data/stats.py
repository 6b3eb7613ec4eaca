"""The training set's statistics that the recipe needs: the mean image (§2) and the principal components of
the RGB values of all pixels (§4.1), accumulated exactly over any number of images, in one place."""

from dataclasses import dataclass

import numpy as np
import torch

from ..kernels import cpu_kernels

CHUNK_PIXELS = 1 << 22  # pixels summed at once without the kernel: 96 MiB of float64


class Recipe:
    """The training-set statistics the recipe needs: the mean image and the RGB principal components."""

    def __init__(self, mean: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor,
                 scale: torch.Tensor | None = None):
        self.mean = mean.float()  # (side, side, 3), pixel values 0..255
        # on the CPU always, where the random draws are made
        self.eigval = eigval.float().cpu()  # (3,) eigenvalues of the covariance of RGB values on the [0, 1] scale
        self.eigvec = eigvec.float().cpu()  # (3, 3), column i is the eigenvector of eigval[i]
        # (3,) RGB factors applied after the mean is subtracted, beside the mean image: 1 / (255 std) for
        # torchvision's weights (export.import_torchvision); None for the paper's raw pixels minus the mean
        self.scale = None if scale is None else scale.float().to(self.mean.device)

    def to(self, device: torch.device | str) -> "Recipe":
        """The same statistics with the mean image (and the scale) on another device."""
        return Recipe(self.mean.to(device), self.eigval, self.eigvec, self.scale)


def rgb_pca(pixel_sum: np.ndarray, pixel_outer: np.ndarray, pixels: int) -> dict[str, np.ndarray]:
    """§4.1: mean, covariance and eigen-decomposition of RGB values from their sums over `pixels` pixels.

    On the [0, 1] scale, where ImageNet's are the widely used eigval (0.2175, 0.0188, 0.0045)."""
    mean = pixel_sum / pixels / 255
    cov = pixel_outer / pixels / 255**2 - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    return {"eigval": eigval, "eigvec": eigvec, "cov": cov, "mean": mean}


@dataclass
class PixelStats:
    """Sums over uint8 (H, W, 3) images, exact in float64: the sum image, and the sums of RGB values and of
    their products over all pixels; from them the mean image (§2) and the RGB PCA (§4.1)."""

    count: int  # images
    image_sum: np.ndarray  # (H, W, 3)
    pixel_sum: np.ndarray  # (3,): the sum of each channel over all pixels
    pixel_outer: np.ndarray  # (3, 3): the sums of the products of two channels over all pixels

    @classmethod
    def empty(cls, height: int, width: int) -> "PixelStats":
        """Nothing summed yet, for images of height × width."""
        return cls(0, np.zeros((height, width, 3)), np.zeros(3), np.zeros((3, 3)))

    def add(self, images: np.ndarray) -> None:
        """Add one image (H, W, 3) or a batch (N, H, W, 3), uint8."""
        batch = images[None] if images.ndim == 3 else images
        kernels = cpu_kernels()
        if kernels is not None:  # one pass per image, summed in integers (csrc/stats.cpp)
            sums = [torch.from_numpy(a) for a in (self.image_sum, self.pixel_sum, self.pixel_outer)]
            for image in batch:
                kernels.add_image_stats(torch.from_numpy(np.ascontiguousarray(image)), *sums)
        else:
            step = max(1, CHUNK_PIXELS // (batch.shape[1] * batch.shape[2]))
            for first in range(0, len(batch), step):  # a chunk at a time: no float64 copy of a whole data set
                chunk = batch[first:first + step]
                self.image_sum += chunk.sum(0, dtype=np.float64)
                pixels = chunk.reshape(-1, 3).astype(np.float64)  # integer values: the float64 sums are exact
                self.pixel_sum += pixels.sum(0)
                self.pixel_outer += pixels.T @ pixels
        self.count += len(batch)

    def merge(self, other: "PixelStats") -> None:
        """Add the sums of another accumulator (a shard's, a worker's)."""
        self.count += other.count
        self.image_sum += other.image_sum
        self.pixel_sum += other.pixel_sum
        self.pixel_outer += other.pixel_outer

    @property
    def pixels(self) -> int:
        """How many pixels were summed."""
        return self.count * self.image_sum.shape[0] * self.image_sum.shape[1]

    def mean_image(self) -> np.ndarray:
        """§2: the mean over the images at every pixel, float64 (H, W, 3), values 0..255."""
        return self.image_sum / self.count

    def pca(self) -> dict[str, np.ndarray]:
        """§4.1: the eigen-decomposition of the covariance of the RGB values of all pixels ([0, 1] scale)."""
        return rgb_pca(self.pixel_sum, self.pixel_outer, self.pixels)

    def variance(self) -> float:
        """The variance of all pixel values, every channel pooled, on the 0..255 scale."""
        values = 3 * self.pixels
        return float(np.trace(self.pixel_outer) / values - (self.pixel_sum.sum() / values) ** 2)

    def recipe(self) -> Recipe:
        """The mean image and the RGB principal components as the augmentation takes them."""
        pca = self.pca()
        return Recipe(torch.from_numpy(self.mean_image()), torch.from_numpy(pca["eigval"]),
                      torch.from_numpy(pca["eigvec"]))
