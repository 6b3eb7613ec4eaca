"""The paper's data augmentation and test-time crops, on whole batches (§4.1, docs/paper.md#augmentation).

Input everywhere: a batch of preprocessed images, uint8, (B, side, side, 3), on the CPU or a GPU.
Output: float32 (B, 3, crop, crop) in channels-last memory, the mean image subtracted. No Python
loop over the samples: on the CPU a fused kernel (csrc/augment.cpp) makes a batch in one pass; elsewhere
the same arithmetic runs as a few batched PyTorch ops.
"""

import numpy as np
import torch

from ..kernels import cpu_kernels
from .stats import Recipe

COLOUR_STD = 0.1  # §4.1: the PCA colour noise draws each α_i from N(0, 0.1)


def _windows(images: torch.Tensor, crop: int) -> torch.Tensor:
    """A view (N, S−crop+1, S−crop+1, crop, crop, 3) whose [n, top, left] is the window at (top, left)."""
    n, h, w, c = images.shape
    return images.as_strided((n, h - crop + 1, w - crop + 1, crop, crop, c), (h * w * c, w * c, c, w * c, c, 1))


def crop_batch(images: torch.Tensor, recipe: Recipe, crop: int, top: torch.Tensor, left: torch.Tensor,
               flip: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Image b's crop×crop window at (top[b], left[b]), mirrored where flip[b], plus shift[b] (an RGB
    offset), minus the mean image at the same pixels (§2), times the recipe's scale where it has one:
    float32 (B, 3, crop, crop), channels-last."""
    kernels = cpu_kernels() if images.device.type == "cpu" else None
    if kernels is not None:  # one fused pass (csrc/augment.cpp)
        patches = kernels.crop_normalize(images.contiguous(), recipe.mean, top, left, flip, shift, crop)
    else:
        index = torch.arange(len(images), device=images.device)
        mean = _windows(recipe.mean[None], crop)[0][top, left] - shift[:, None, None, :]
        patches = _windows(images.contiguous(), crop)[index, top, left] - mean
        patches = torch.where(flip[:, None, None, None], patches.flip(2), patches)  # no mask: no GPU sync
    if recipe.scale is not None:  # torchvision's normalization: (pixels - 255 mean) / (255 std)
        patches = patches * recipe.scale
    return patches.permute(0, 3, 1, 2)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective scramble of 64-bit integers."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """`count` uniform numbers in [0, 1) for each image, a function of (seed, epoch, image index) alone."""
    with np.errstate(over="ignore"):
        key = _splitmix(_splitmix(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(epoch))
        keys = _splitmix(key ^ (np.asarray(indices, np.uint64)[:, None] * np.uint64(count)
                                + np.arange(count, dtype=np.uint64)))
    return (keys >> np.uint64(11)).astype(np.float64) * 2.0**-53


def train_batch(images: torch.Tensor, recipe: Recipe, crop: int, seed: int, epoch: int, indices: np.ndarray,
                colour_std: float = COLOUR_STD) -> torch.Tensor:
    """§4.1: a random crop×crop patch, mirrored with probability 1/2, PCA colour noise, mean subtracted.

    The draws of image `indices[b]` depend on (seed, epoch, index) only: not on the batch it is in,
    on how a batch is split over processes, or on where a run was resumed.
    """
    u = uniforms(seed, epoch, indices, 7)
    offsets = images.shape[1] - crop + 1
    top, left = (torch.from_numpy(np.floor(u[:, i] * offsets).astype(np.int64)) for i in (0, 1))
    flip = torch.from_numpy(u[:, 2] < 0.5)
    # Box–Muller: two pairs of uniforms give the three normals of the colour noise
    radius = np.sqrt(-2 * np.log1p(-u[:, 3:5]))
    angle = 2 * np.pi * u[:, 5:7]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :3]
    alpha = torch.from_numpy(normals).float() * colour_std
    # §4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel, a_i ~ N(0, 0.1) drawn once per image;
    # the eigenvalues are those of pixels on the [0, 1] scale (as ImageNet's widely used ones), so the
    # shift is scaled by 255 to the 0..255 pixels here
    shift = 255 * (alpha * recipe.eigval) @ recipe.eigvec.T
    draws = [top, left, flip, shift]
    if images.is_cuda:  # copies from page-locked memory don't wait for the GPU to finish its queue
        draws = [t.pin_memory().to(images.device, non_blocking=True) for t in draws]
    return crop_batch(images, recipe, crop, *draws)


def _fixed(images: torch.Tensor, recipe: Recipe, crop: int, top: int, left: int, flip: bool) -> torch.Tensor:
    b, device = len(images), images.device
    offsets = torch.full((b,), top, device=device), torch.full((b,), left, device=device)
    return crop_batch(images, recipe, crop, *offsets, torch.full((b,), flip, device=device),
                      torch.zeros(b, 3, device=device))


def center_crop(images: torch.Tensor, recipe: Recipe, crop: int = 224) -> torch.Tensor:
    """The central crop×crop patch, mean subtracted: single-crop evaluation."""
    mid = (images.shape[1] - crop) // 2
    return _fixed(images, recipe, crop, mid, mid, False)


def ten_crop(images: torch.Tensor, recipe: Recipe, crop: int = 224) -> list[torch.Tensor]:
    """§4.1 test time: the four corner patches, the centre patch, then the mirror of each: 10 batches."""
    far, mid = images.shape[1] - crop, (images.shape[1] - crop) // 2
    corners = ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))
    return [_fixed(images, recipe, crop, top, left, flip) for flip in (False, True) for top, left in corners]
