"""The C++ kernels of the CPU hot paths (csrc/), compiled by PyTorch on first use and cached per machine."""

import functools
import hashlib
import logging
import os
import platform
import sys
import warnings
from pathlib import Path
from types import ModuleType

SOURCES = ("bindings.cpp", "lrn.cpp", "augment.cpp", "stats.cpp")


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The compiled module (about a minute on 2 cores the first time, then cached); None where it cannot be built.

    Without it everything still works, through plain PyTorch ops, only slower. ALEXNET_KERNELS=0
    turns it off.
    """
    if os.environ.get("ALEXNET_KERNELS", "1") == "0":
        return None
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" noise
    from torch.utils.cpp_extension import load

    flags = ["-O3"] + (["-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else [])
    threads = ["-fopenmp"] if sys.platform.startswith("linux") else []  # at::parallel_for runs on OpenMP
    sources = [Path(__file__).with_name("csrc") / name for name in SOURCES]
    # One build per version of the sources and flags, so that two installs never rebuild over each other.
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + " ".join(flags).encode()).hexdigest()[:12]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    build = root / f"alexnet_cpu_{digest}"
    build.mkdir(parents=True, exist_ok=True)
    try:
        return load(f"alexnet_cpu_{digest}", [str(p) for p in sources], extra_cflags=flags + threads,
                    extra_ldflags=threads, build_directory=str(build), verbose=False)
    except Exception as err:  # no compiler, no ninja, an unusual platform
        warnings.warn(f"CPU kernels not built ({type(err).__name__}: {str(err)[:200]}); "
                      "using plain PyTorch ops, which are slower", stacklevel=2)
        return None
