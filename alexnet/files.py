"""Files written whole or not at all, JSON, and the package's cache folder."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file and a rename: the file is there whole or not at all (its folder is made
    where missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as err:  # a failed or interrupted writer leaves the old file and no half-written one
        tmp.unlink(missing_ok=True)
        # a full disk says which file, also where torch.save turned the failed write into a RuntimeError
        refused = err.__context__ if isinstance(err, RuntimeError) else err
        if isinstance(refused, OSError) and not refused.filename:
            raise OSError(refused.errno, refused.strerror, str(path)) from err
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: object) -> None:
    """Write `data` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=1) + "\n")


def read_json(path: str | Path) -> object:
    """The JSON value in a file."""
    return json.loads(Path(path).read_text())


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` a copy of `src`: a hard link where the file system has them (no bytes written; a later
    atomic write of `src` replaces it by rename and leaves `dst` alone), else a real copy; atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)


def cache_dir() -> Path:
    """The package's cache folder: $XDG_CACHE_HOME/alexnet, or ~/.cache/alexnet."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet"
