"""Checkpoints made ready to run: the one set-up that eval, predict, features, neighbors, a run's final
evaluation, export and serving share (the network on its device, in eval mode and channels-last memory,
with the statistics its inputs are normalized with and the precision it computes in)."""

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .data.folders import MAX_PIXELS, preprocess
from .data.split import Split
from .data.stats import Recipe
from .errors import InputError
from .record import NetworkRecord
from .runtime import autocast, choose_device, choose_precision

PROBE_BATCH = 64  # images per timed forward pass of "auto" precision, unless the caller runs other batches


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


def ready(model: nn.Module, record: NetworkRecord, info: dict, device: torch.device, precision: str) -> Network:
    """A network on `device`, in eval mode and channels-last memory, computing in `precision`."""
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    return Network(model, record, record.recipe.to(device), device, precision, info)


def network(state: dict, device: str = "auto", precision: str = "auto", batch: int = PROBE_BATCH) -> Network:
    """The network of a loaded checkpoint (checkpoint.load), ready to run; "auto" precision on a CPU is the
    faster for inference on batches of `batch` images with this network on this machine
    (runtime.choose_precision): which one is can depend on the batch (bf16 gains more from larger ones)."""
    dev = choose_device(device)
    info = {k: state[k] for k in checkpoint.INFO if k in state}
    net = ready(checkpoint.model_from(state), state["network"], info, dev, "fp32")
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


def load_network(path: str, device: str = "auto", precision: str = "auto", batch: int = PROBE_BATCH) -> Network:
    """The network of one checkpoint file or run folder."""
    return load_networks([path], device, precision, batch)[0]
