"""Checkpoints made ready to run: the one set-up that eval, predict, features, neighbors, a run's final
evaluation, export, serving and the Python API (`alexnet.load`, docs/api.md) share (the network on its device,
in eval mode and channels-last memory, with the statistics its inputs are normalized with and the precision it
computes in)."""

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import checkpoint
from .data.augment import center_crop
from .data.folders import MAX_PIXELS, preprocess, square
from .data.split import Split
from .data.stats import Recipe
from .errors import InputError
from .record import NetworkRecord
from .runtime import autocast, choose_device, choose_precision

PROBE_BATCH = 64  # images per timed forward pass of "auto" precision, unless the caller runs other batches
Picture = str | Path | Image.Image | torch.Tensor  # an image the Python API takes (see Network.predict)


class Transform:
    """The network's test-time input of one image, for torchvision pipelines and DataLoaders: a PIL image (any
    mode, its pixels as they are) or a uint8 (3, H, W) tensor (torchvision.io.read_image's layout) rescaled so
    its shorter side is the record's side, its central square kept (§2), then its centre crop with the mean
    image subtracted (§2, §4.1): float32 (3, crop, crop), on the CPU."""

    def __init__(self, record: NetworkRecord):
        self.side, self.crop, self.recipe = record.side, record.crop, record.recipe

    def pixels(self, image: Image.Image | torch.Tensor) -> np.ndarray:
        """The image after §2's preprocessing: uint8 (side, side, 3)."""
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3 and len(image) == 3:
            image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        if not isinstance(image, Image.Image):
            what = f"a {image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else (
                type(image).__name__)
            raise InputError(f"expected a PIL image or a uint8 (3, H, W) tensor, got {what}")
        return square(image, self.side)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """The network's input made of one image: float32 (3, crop, crop)."""
        return center_crop(torch.from_numpy(self.pixels(image))[None], self.recipe, self.crop)[0].contiguous()

    def __repr__(self) -> str:
        return f"Transform(side={self.side}, crop={self.crop})"


@dataclass
class Network:
    """A trained network ready for inference: its record (architecture, classes, crop, preprocessing) and what
    its checkpoint says beside it (`info`: checkpoint.INFO, its path, the run's configuration and progress)."""

    model: nn.Module
    record: NetworkRecord
    recipe: Recipe  # the record's, on the device
    device: torch.device
    precision: str
    info: dict
    batch: int = PROBE_BATCH  # images per forward pass of predict and features

    @property
    def crop(self) -> int:
        """The side of the square patch the network was trained on (224 or 227)."""
        return self.record.crop

    @property
    def classes(self) -> list[str]:
        """The class folder names (wnids) its outputs index."""
        return self.record.classes

    @property
    def names(self) -> list[str]:
        """Human-readable class names, in the order of the outputs."""
        return self.record.names

    def preprocess(self, image: str | Path | BinaryIO, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """An image file (or its bytes) preprocessed as the network's inputs were (§2): uint8 (side, side, 3);
        BadImageError beyond `max_pixels`, read from its header."""
        return preprocess(image, self.record.side, max_pixels)

    def check_side(self, split: Split, data: str | Path) -> None:
        """Raise InputError where a split's images are not of the side the network was trained on (its mean
        image's), whose crops would be other patches than it learned from."""
        side = self.record.side
        if split.side != side:
            raise InputError(f"{self.info['path']} takes {side}×{side} images (as it was trained); {data} holds "
                             f"{split.side}×{split.side}: make a store of them with `alexnet prepare SRC STORE "
                             f"--size {side}`")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of its precision."""
        return autocast(self.device, self.precision)

    @property
    def transforms(self) -> Transform:
        """What makes its input of one PIL image or uint8 (3, H, W) tensor (see Transform)."""
        return Transform(self.record)

    def predict(self, images: Picture | Sequence[Picture], crops: int | None = None) -> list[list[dict]]:
        """Each image's five most probable classes, most probable first, as records {"class": name, "probability":
        p} (evaluate.top5_records). `images`: one or a list of image files, PIL images, uint8 (3, H, W) tensors
        (whole images: §2's preprocessing is done here), or float32 (3, crop, crop) tensors, the network's input
        as `transforms` makes it (a 4-D tensor is a batch of either). `crops`: 1, the centre patch; 10, the
        average over §4.1's ten patches, the default for whole images as in `alexnet predict`; a float tensor is
        one patch."""
        from .evaluate import PredictConfig, probabilities, top5, top5_records

        records = []
        for whole, batch in self._batches(images, crops):
            if whole:
                probs = probabilities([self], batch, crops or PredictConfig.crops)
            else:
                with torch.no_grad(), self.autocast():
                    probs = F.softmax(self.model(batch).float(), dim=1)
            records += [top5_records(top) for top in top5(probs.cpu(), self.names)]
        return records

    def features(self, images: Picture | Sequence[Picture]) -> torch.Tensor:
        """fc7 after its ReLU (§6.1) of each image's centre patch: float32 (N, 4096 in the paper's network), on the
        CPU; `images` as predict takes them."""
        from .features import fc7

        parts = []
        for whole, batch in self._batches(images, 1):
            if whole:
                parts.append(fc7(self, batch, self.crop))
            else:
                with torch.no_grad(), self.autocast():
                    parts.append(self.model.forward_fc7(batch).float().cpu())
        return torch.cat(parts)

    def _batches(self, images: Picture | Sequence[Picture], crops: int | None) -> Iterator[tuple[bool, torch.Tensor]]:
        """`images` (see predict) in batches of `batch`: (True, uint8 (B, side, side, 3)) of whole images after §2's
        preprocessing, or (False, float32 (B, 3, crop, crop) on the device) of the network's inputs."""
        one = isinstance(images, (str, Path, Image.Image)) or (isinstance(images, torch.Tensor) and images.dim() == 3)
        items = [images] if one else list(images)
        if not items:
            raise InputError("no images given")
        patches = [isinstance(x, torch.Tensor) and x.is_floating_point() for x in items]
        if any(patches) and not all(patches):
            raise InputError("give whole images or the network's inputs (float tensors), not both at once")
        shape = (3, self.crop, self.crop)
        if all(patches):
            wrong = next((tuple(x.shape) for x in items if x.shape != shape), None)
            if wrong is not None:
                raise InputError(f"a float tensor is the network's input, of shape {shape} as net.transforms makes "
                                 f"it; got {wrong} (give whole images as uint8 (3, H, W) tensors)")
            if crops not in (None, 1):
                raise InputError(f"a float tensor is one patch already: {crops} crops need whole images")
        transform = self.transforms
        for start in range(0, len(items), self.batch):
            chunk = items[start:start + self.batch]
            if all(patches):
                yield False, torch.stack(chunk).to(self.device).contiguous(memory_format=torch.channels_last)
            else:
                yield True, torch.from_numpy(np.stack([self.preprocess(x) if isinstance(x, (str, Path))
                                                       else transform.pixels(x) for x in chunk]))


def ready(model: nn.Module, record: NetworkRecord, info: dict, device: torch.device, precision: str) -> Network:
    """A network on `device`, in eval mode and channels-last memory, computing in `precision`."""
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    return Network(model, record, record.recipe.to(device), device, precision, info)


def network(state: dict, device: str = "auto", precision: str = "auto", batch: int = PROBE_BATCH) -> Network:
    """The network of a loaded checkpoint (checkpoint.load), ready to run; "auto" precision on a CPU is the
    faster for inference on batches of `batch` images with this network on this machine
    (runtime.choose_precision): which one is can depend on the batch (bf16 gains more from larger ones)."""
    if batch < 1:
        raise InputError(f"the batch size must be positive, got {batch}")
    dev = choose_device(device)
    info = {k: state[k] for k in checkpoint.INFO if k in state}
    net = ready(checkpoint.model_from(state), state["network"], info, dev, "fp32")
    net.batch = batch
    net.precision = choose_precision(precision, dev, functools.partial(_seconds, net, batch=batch),
                                     f"{net.record.arch} inference, batch {batch}").name
    return net


def _seconds(net: Network, precision: str, batch: int) -> float:
    """Seconds of a forward pass of a batch of random images in `precision`."""
    x = torch.randn(batch, 3, net.crop, net.crop, generator=torch.Generator().manual_seed(0)).to(net.device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(net.device, precision):
        net.model(x.contiguous(memory_format=torch.channels_last))
    if net.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def load_networks(paths: list[str], device: str = "auto", precision: str = "auto",
                  batch: int = PROBE_BATCH) -> list[Network]:
    """The networks of checkpoint files or run folders (their "auto" precision timed on batches of `batch`);
    several (an ensemble) must have the same classes."""
    states = [checkpoint.load(p) for p in paths]
    first = states[0]["network"].classes
    for state in states[1:]:
        if state["network"].classes != first:
            raise InputError(f"{state['path']} has {len(state['network'].classes)} classes, {states[0]['path']} has "
                             f"{len(first)}: an ensemble needs the same classes")
    return [network(s, device, precision, batch) for s in states]


def load_network(path: str | Path, device: str = "auto", precision: str = "auto",
                 batch: int = PROBE_BATCH) -> Network:
    """The network of a checkpoint (.pt), a run folder or a weights file (.safetensors), ready to run (`alexnet.load`):
    `device` "auto" is the GPU where there is one, else the CPU; `precision` "auto" is bf16 on a GPU, and on a CPU
    the faster of fp32 and bf16 for batches of `batch` images (timed once per machine); predict and features run
    batches of `batch` images."""
    return load_networks([path], device, precision, batch)[0]
