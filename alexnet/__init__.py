"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as the paper specifies it.

The Python API (docs/api.md): `load` a trained network, `prepare` a store and read its splits as torch Datasets
(`Store`), `train` with the command line's configuration (`TrainConfig`). Names beyond the network's own are
imported when first used, so that `import alexnet` (and the command line's start) stays quick.
"""

import importlib
import sys
import types
import typing

from .model import ARCHS
from .record import NetworkRecord, build_model

if typing.TYPE_CHECKING:  # names for the type hints only: the package's namespace holds only __all__
    from pathlib import Path

    from .config import TrainConfig

__all__ = ["ARCHS", "InputError", "Network", "NetworkRecord", "Store", "TrainConfig", "build_model", "load",
           "prepare", "train"]
__version__ = "0.1.0"

# public name -> (module, its name there), imported on first use
_LAZY = {"load": ("inference", "load_network"), "Network": ("inference", "Network"),
         "TrainConfig": ("config", "TrainConfig"), "Store": ("data.store", "Store"),
         "prepare": ("data.store", "prepare"), "InputError": ("errors", "InputError")}


class _Training(types.ModuleType):
    """The module alexnet.train, which `alexnet.train(cfg)` also calls: its function train(cfg)."""

    def __call__(self, cfg: "TrainConfig") -> "Path":
        """Train with the command line's configuration; returns the run folder (see alexnet.train.train)."""
        return self.train(cfg)


class _Package(types.ModuleType):
    """This package: where Python binds its submodule train (on any import of it), the module is made callable."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            value.__class__ = _Training
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    if name == "train":
        return importlib.import_module(".train", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
