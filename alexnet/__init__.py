"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) as the paper specifies it.

The Python API (docs/api.md): `load` a trained network, `prepare` a store and read its splits as torch Datasets
(`Store`), `train` with the command line's configuration (`TrainConfig`). Names beyond the network's own are
imported when first used, so that `import alexnet` (and the command line's start) stays quick.
"""

import importlib

from .model import ARCHS
from .record import NetworkRecord, build_model

__all__ = ["ARCHS", "InputError", "Network", "NetworkRecord", "Store", "TrainConfig", "build_model", "load",
           "prepare", "train"]
__version__ = "0.1.0"

# public name -> (module, its name there), imported on first use
_LAZY = {"load": ("inference", "load_network"), "Network": ("inference", "Network"),
         "TrainConfig": ("config", "TrainConfig"), "Store": ("data.store", "Store"),
         "prepare": ("data.store", "prepare"), "InputError": ("errors", "InputError"),
         "train": ("training", "train")}


def __getattr__(name: str) -> object:
    """A public name of the API, imported from its module on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


def __dir__() -> list[str]:
    """The package's names, those imported on first use included."""
    return sorted({*globals(), *__all__})
