"""Where a data set is: a store made by `alexnet prepare`, an image folder, or (None) the built-in photos."""

import hashlib
from pathlib import Path

from ..errors import InputError
from ..files import cache_dir
from .folders import DEFAULT_DATA, hold_out, is_list, list_images, splits
from .split import Split
from .store import Store, prepare


def is_store(path: str | Path) -> bool:
    """Whether `path` is a store folder, finished or not."""
    return (Path(path) / "store.json").is_file() or (Path(path) / "plan.json").is_file()


def builtin_store() -> Path:
    """Where the built-in photos (assets/imagenette) are kept as a store, in the cache folder (see prepared_root)."""
    return cache_dir() / f"default-{hashlib.sha256(str(DEFAULT_DATA).encode()).hexdigest()[:12]}"


def data_root(data: str | Path | None) -> Path:
    """The folder a command reads: `data` itself, or for None the built-in photos' store; InputError where it is
    not there. A lookup only: prepared_root makes the built-in store first."""
    root = builtin_store() if data is None else Path(data).expanduser()
    if not root.is_dir() and not is_list(root):
        raise InputError(f"data folder not found: {root}")
    return root


def prepared_root(data: str | Path | None) -> Path:
    """data_root(data), the built-in photos prepared into their store first where `data` is None (on first use:
    nothing to do once it is there)."""
    if data is None:
        prepare(DEFAULT_DATA, builtin_store(), progress=False)
    return data_root(data)


def describe(data: str | Path | None) -> str:
    """The data set in words, for people."""
    if data is None:
        return f"the built-in photos ({DEFAULT_DATA})"
    return f"{'store' if is_store(data) else 'image list' if is_list(data) else 'JPEG folder'} {data}"


def split_names(root: str | Path, val_fraction: float = 0) -> list[str]:
    """The splits a store or an image folder has ("train", "val"), a validation split held out of the training
    images by `val_fraction` included."""
    names = Store(root).splits if is_store(root) else splits(root)
    return names + ["val"] if val_fraction and names == ["train"] else names


def open_split(root: str | Path, split: str, val_fraction: float = 0) -> Split:
    """A split of a store or of an image folder (see prepared_root for the built-in photos); with `val_fraction`,
    of an image folder without val/, its training images held out as validation (folders.hold_out)."""
    if is_store(root):
        return Store(root).split(split)
    if not val_fraction or splits(root) != ["train"]:
        return list_images(root, split)
    return dict(zip(("train", "val"), hold_out(list_images(root, "train"), val_fraction), strict=True))[split]
