"""The record of a network: everything that rebuilds it and feeds it, in one versioned form.

    arch, classes, names         the architecture (model.ARCHS) and the classes its outputs index, with their names
    lrn, dropout, width, remove  the LRN formula (§3.3), dropout (§4.2), the width and a removed middle layer (§7)
    crop                         the side of the square patch it takes (224 or 227, §4.1; smaller when scaled)
    recipe                       the preprocessing's statistics: the mean image (§2), whose side is the stored
                                 images' side, the RGB principal components (§4.1) and an input scale (imported
                                 torchvision weights)

Training writes it into every checkpoint; build_model (here) takes it as its only input; inference, export, features,
neighbors, serve, torch.hub and the towers read it; every exported file (safetensors, ONNX, torch.export) carries
it whole. `from_state` reads every form this project has written (the migration).
"""

import base64
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data.stats import Recipe
from .errors import InputError
from .few_classes import default_init
from .model import (
    ARCHS,
    HALF_KERNELS,
    KERNELS,
    MIDDLE,
    AlexNet,
    OWTAlexNet,
    architecture_lrn,
    init_weights,
    input_side,
)

VERSION = 2  # 1: the record's fields at a checkpoint's top level, without `version` (and early on without width,
#              remove); 2: a dict of its own under the checkpoint's "network" key


@dataclass(frozen=True)
class NetworkRecord:
    """What rebuilds a network and prepares its inputs (see the module's docstring)."""

    arch: str
    classes: list[str]
    names: list[str]
    lrn: str
    dropout: float = 0.5
    width: float = 1.0
    remove: str | None = None
    crop: int = 224
    recipe: Recipe | None = None  # None for a network that has not been trained

    @classmethod
    def of(cls, arch: str = "paper", classes: int | list[str] = 1000, names: list[str] | None = None,
           lrn: str | None = None, **fields: object) -> "NetworkRecord":
        """A record with the architecture's own LRN unless `lrn` names one; `classes` a count or their names."""
        classes = [str(c) for c in range(classes)] if isinstance(classes, int) else list(classes)
        return cls(arch, classes, list(names or classes), lrn or architecture_lrn(arch), **fields)

    @property
    def side(self) -> int:
        """The side of the stored images the crops are taken from: the mean image's (§2)."""
        return self.recipe.mean.shape[0]

    def preprocessing(self) -> dict:
        """The preprocessing as torchvision's weights describe theirs; `mean` averages the mean image (§2)."""
        r = self.recipe
        std = torch.full((3,), 1 / 255) if r.scale is None else 1 / (255 * r.scale)
        return {"resize_size": self.side, "crop_size": self.crop, "interpolation": "bilinear, antialiased",
                "mean": (r.mean.mean((0, 1)) / 255).tolist(), "std": std.tolist(),
                "input": f"float32 (N, 3, {self.crop}, {self.crop}), RGB: the shorter side resized to resize_size, "
                         "the central crop_size square, then (pixels / 255 - mean) / std",
                "mean_image": bool((r.mean != r.mean[:1, :1]).any())}

    def to_state(self) -> dict:
        """The record as a checkpoint holds it: numbers, strings and tensors (torch.load(weights_only=True))."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "recipe"}
        r = self.recipe
        recipe = None if r is None else {"mean": r.mean.cpu(), "eigval": r.eigval, "eigvec": r.eigvec,
                                         "scale": None if r.scale is None else r.scale.cpu()}
        return {"version": VERSION, **fields, "recipe": recipe}

    def to_json(self) -> dict:
        """The record as JSON values, for the metadata of exported files: the mean image as base64 float32."""
        state = self.to_state()
        r = state["recipe"]
        if r is not None:
            mean = r["mean"].float().contiguous().numpy()
            state["recipe"] = {"mean": base64.b64encode(mean.astype("<f4").tobytes()).decode(),
                               "mean_shape": list(mean.shape), "eigval": r["eigval"].tolist(),
                               "eigvec": r["eigvec"].tolist(),
                               "scale": None if r["scale"] is None else r["scale"].tolist()}
        return state

    @classmethod
    def from_json(cls, value: dict, weights: dict[str, torch.Tensor] | None = None) -> "NetworkRecord":
        """The record of `to_json` (or of an earlier version's metadata, with the `weights` it describes)."""
        value = dict(value)
        r = value.get("recipe")
        if isinstance(r, dict) and isinstance(r.get("mean"), str):
            try:
                mean = np.frombuffer(base64.b64decode(r["mean"]), "<f4").reshape(r["mean_shape"])
                value["recipe"] = {"mean": torch.from_numpy(mean.copy()), "eigval": torch.tensor(r["eigval"]),
                                   "eigvec": torch.tensor(r["eigvec"]),
                                   "scale": None if r.get("scale") is None else torch.tensor(r["scale"])}
            except (KeyError, TypeError, ValueError) as err:
                raise InputError(f"not a network record: its recipe is damaged ({type(err).__name__})") from None
        return cls.from_state(value, weights)

    @classmethod
    def from_state(cls, state: dict, weights: dict[str, torch.Tensor] | None = None) -> "NetworkRecord":
        """The record of `to_state`, or of any earlier version: version 1 held no `version`, its `lrn` could be
        None (the architecture's own), and early files had no width or remove, which `weights` then tell."""
        version = state.get("version", 1) if isinstance(state, dict) else None
        if not isinstance(version, int):
            raise InputError("not a network record")
        if version > VERSION:
            raise InputError(f"a network record of version {version}: this alexnet reads versions up to {VERSION}; "
                             "a newer alexnet wrote it")
        try:
            arch, classes = state["arch"], list(state["classes"])
            fields = {"names": list(state["names"]), "lrn": state["lrn"], "dropout": float(state["dropout"]),
                      "crop": int(state["crop"])}
            width, remove = state.get("width"), state.get("remove")
            if version == 1 and weights is not None and "width" not in state:
                width, remove = _shape_of(arch, weights)
            fields.update(width=float(width or 1.0), remove=remove)
            r = state.get("recipe")
            if r is not None:
                fields["recipe"] = Recipe(r["mean"], r["eigval"], r["eigvec"], r.get("scale"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(f"not a network record: {type(err).__name__} {err}") from None
        if len(fields["names"]) != len(classes):
            raise InputError(f"not a network record: {len(classes)} classes and {len(fields['names'])} names")
        return cls.of(arch, classes, **fields)


def build_model(net: NetworkRecord, init: str | None = None) -> nn.Module:
    """The network a record describes (its architecture, classes, LRN formula, dropout, width, crop and removed
    layer), initialized by `init` (default: see default_init)."""
    if net.arch not in ARCHS:
        raise InputError(f"unknown architecture {net.arch!r}; expected one of {', '.join(ARCHS)}")
    classes = len(net.classes)
    if classes < 1:
        raise InputError(f"the number of classes must be positive, got {classes}")
    side = input_side(net.crop)
    if net.arch == "owt":
        if net.lrn != "none":
            raise InputError("the owt architecture has no LRN layers")
        if net.width != 1.0 or net.remove:
            raise InputError("the owt architecture comes at the paper's width, with all its layers")
        model = OWTAlexNet(classes, net.dropout)
    elif net.arch == "caffenet":
        model = AlexNet(classes, 2, net.lrn, lrn_towers=1, pool_before_lrn=True, dropout=net.dropout,
                        width=net.width, side=side)
    elif net.arch == "half":
        model = AlexNet(classes, 1, net.lrn, dropout=net.dropout, kernels=HALF_KERNELS, width=net.width,
                        side=side)
    else:
        model = AlexNet(classes, 2 if net.arch == "paper" else 1, net.lrn, dropout=net.dropout, width=net.width,
                        side=side)
    init_weights(model, init or default_init(net.arch, classes)[0])
    if net.remove:  # after the initialization, so that every remaining weight is the full network's
        model.remove_layer(net.remove)
    return model


def _shape_of(arch: str, weights: dict[str, torch.Tensor]) -> tuple[float, str | None]:
    """The width and the removed middle layer of a paper-layout network, from its weights (owt: 1, none)."""
    if "conv1.weight" not in weights:
        return 1.0, None
    kernels = HALF_KERNELS if arch == "half" else KERNELS
    removed = [name for name in MIDDLE if f"{name}.weight" not in weights]
    return weights["conv1.weight"].shape[0] / kernels[0], removed[0] if removed else None
