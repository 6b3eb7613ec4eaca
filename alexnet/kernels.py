"""The C++ kernels of the CPU hot paths (csrc/), compiled by PyTorch on first use and cached per machine.

A build is for one instruction set: by default this machine's own on x86-64 (-march=native) and
ARMv8-A's on ARM64 (whose NEON every ARM64 CPU has). ALEXNET_CPU_TARGET names another one
(-march= on x86-64, -mcpu= on ARM64; "default" for the compiler's own), e.g. x86-64-v3 to build and
run the AVX2 code on an AVX-512 machine, together with ATEN_CPU_CAPABILITY=avx2 for PyTorch's own.
"""

import functools
import hashlib
import logging
import os
import platform
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCES = ("bindings.cpp", "lrn.cpp", "augment.cpp", "stats.cpp")
log = logging.getLogger(__name__)


def is_x86() -> bool:
    """Whether this is an x86-64 machine (else ARM64 or another)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def target_flags(target: str | None = None) -> list[str]:
    """The compiler's instruction-set flag for `target` (by default ALEXNET_CPU_TARGET, else this machine's)."""
    target = target or os.environ.get("ALEXNET_CPU_TARGET") or ("native" if is_x86() else "default")
    if target == "default":
        return []
    return [f"-march={target}" if is_x86() else f"-mcpu={target}"]


def predefined_macros(flags: list[str]) -> str:
    """The compiler's predefined macros under `flags`: they name the instruction set it compiles for exactly."""
    compiler = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension compiles with
    return subprocess.run([compiler, *flags, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True,
                          text=True, check=True, timeout=60).stdout


def isa_features(macros: str) -> set[str]:
    """The instruction-set extensions among predefined macros: the capitalized ones defined as 1 (__AVX2__)."""
    return set(re.findall(r"^#define (__[A-Z0-9_]+__) 1$", macros, re.MULTILINE))


def build_key(sources: dict[str, bytes], flags: list[str], macros: str) -> str:
    """The name of one build: its sources (paths and contents), flags, PyTorch and Python, and the instruction
    set it is for.

    The instruction set is in the key because a build in a shared home directory can be found by any
    machine: one made on an AVX-512 node would die of an illegal instruction on an AVX2 node, so that
    node must build its own. The paths are in it because ninja rebuilds whatever was built from other paths:
    two copies of the package (two checkouts, two environments) sharing one build would rebuild it in turns.
    """
    parts = [part for item in sorted(sources.items()) for part in (item[0].encode(), item[1])]
    parts += [" ".join(flags).encode(), torch.__version__.encode(), sys.version.encode(), macros.encode()]
    return "alexnet_cpu_" + hashlib.sha256(b"\0".join(parts)).hexdigest()[:12]


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The compiled module (about a minute on 2 cores the first time, then cached); None where it cannot be built.

    Without it everything still works, through plain PyTorch ops, only slower. ALEXNET_KERNELS=0
    turns it off. A build (not a cached load) is announced first, in one line on the "alexnet.kernels" logger at level
    WARNING, which Python shows on stderr where the program configures no logging.
    """
    if os.environ.get("ALEXNET_KERNELS", "1") == "0":
        return None
    noise = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime": quiet while it builds or loads
    level = noise.level
    noise.setLevel(logging.ERROR)
    try:
        return _build()
    finally:
        noise.setLevel(level)


def _build() -> ModuleType | None:
    """The compiled module, built where this machine has none yet; None where it cannot be built."""
    from torch.utils.cpp_extension import load

    target = target_flags()
    flags = ["-O3", *target]
    threads = ["-fopenmp"] if sys.platform.startswith("linux") else []  # at::parallel_for runs on OpenMP
    sources = [Path(__file__).with_name("csrc") / name for name in SOURCES]
    try:
        macros = predefined_macros(target)
        if "ALEXNET_CPU_TARGET" in os.environ and target != target_flags("native"):  # never above this CPU
            missing = isa_features(macros) - isa_features(predefined_macros(target_flags("native")))
            if missing:
                raise RuntimeError(f"ALEXNET_CPU_TARGET={os.environ['ALEXNET_CPU_TARGET']} needs "
                                   f"{', '.join(sorted(missing))}, which this CPU lacks")
        name = build_key({str(p): p.read_bytes() for p in sources}, flags, macros)
        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
        (root / name).mkdir(parents=True, exist_ok=True)
        if not (root / name / f"{name}.so").is_file():
            log.warning("building alexnet's C++ kernels for this machine (about a minute, once) ...")
        return load(name, [str(p) for p in sources], extra_cflags=flags + threads, extra_ldflags=threads,
                    build_directory=str(root / name), verbose=False)
    except Exception as err:  # no compiler, no ninja, an unusual platform, a target above this CPU
        warnings.warn(f"CPU kernels not built ({type(err).__name__}: {str(err)[:200]}); "
                      "using plain PyTorch ops, which are slower", stacklevel=3)
        return None
