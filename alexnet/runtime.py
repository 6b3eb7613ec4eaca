"""Process-wide settings that make PyTorch fast (for the command line to make; library functions leave
them alone), and the choice of device and precision."""

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .files import cache_dir, read_json, write_json


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the system.

    A training step allocates and frees activations of 100 MB and more. By default glibc maps each
    one fresh (mmap) and unmaps it on free, so every step pays page faults on gigabytes of memory: up
    to a third of the step on a 2-core machine. Returns whether the setting took effect (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl) or no libc to load
        return False


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECISIVE = 3.0  # --precision auto: a ratio of step times that one warm-up step of each settles


def choose_device(name: str = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU; or any name torch.device accepts."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: there are {torch.cuda.device_count()} GPUs (cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return device


def tune_process(device: str = "auto") -> None:
    """The process-wide settings of a command that computes: malloc keeps freed memory; on a GPU, cuDNN times
    its convolution algorithms once and keeps the fastest for these fixed input sizes (as the PyTorch
    ImageNet example does); on the CPU, processes started together by torchrun share the cores."""
    keep_freed_memory()
    if choose_device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["LOCAL_WORLD_SIZE"])))


@dataclass(frozen=True)
class Precision:
    """The precision a command computes in, and why."""

    name: str  # fp32, bf16 or fp16
    reason: str


def choose_precision(name: str, device: torch.device, probe: Callable[[str], float] | None = None,
                     workload: str = "") -> Precision:
    """Resolve "auto": on a GPU bf16 where it has it (else fp16); on a CPU the faster of fp32 and bf16 autocast
    for `workload`, timed by `probe` (seconds of one step in a precision) the first time and cached per CPU
    model and torch version, since which is faster depends on the CPU in ways its flags do not tell (bf16 is
    slower than fp32 on AVX-512 CPUs without AMX and far slower without AVX-512, faster on some with
    AVX512_BF16). Without a probe: fp32."""
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise InputError("fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if name != "auto":
        return Precision(name, "as asked")
    if device.type == "cuda":
        return Precision("bf16", "the GPU has bf16") if torch.cuda.is_bf16_supported() else Precision(
            "fp16", "the GPU has no bf16")
    if probe is None:
        return Precision("fp32", "not measured")
    times = _probed(workload, probe)
    ratio = times["fp32"] / times["bf16"]
    return Precision("bf16" if ratio > 1 else "fp32", f"bf16 autocast {ratio:.2f}× as fast as fp32 on this CPU")


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo says it (or the platform module, elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where a measurement was made: CPU model and instruction set, cores, GPU, PyTorch, and when."""
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _probed(workload: str, probe: Callable[[str], float]) -> dict[str, float]:
    """The seconds of one step of `workload` in fp32 and in bf16 on this machine: measured once (a warm-up and
    two timed steps each, in turns; the warm-ups alone where one is DECISIVE times the other, as bf16 is
    without AVX-512, where each of its steps takes a minute), then read from the cache folder's precision.json."""
    key = f"{cpu_model()} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | {workload}"
    path = cache_dir() / "precision.json"
    known = read_json(path) if path.is_file() else {}
    if key not in known:
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(3):
            for precision in times:
                times[precision].append(probe(precision))
            if max(times["fp32"][0] / times["bf16"][0], times["bf16"][0] / times["fp32"][0]) > DECISIVE:
                break
        known[key] = {precision: statistics.median(t[1:] or t) for precision, t in times.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, known)
    return known[key]


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a precision ("fp32" disables it)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")
