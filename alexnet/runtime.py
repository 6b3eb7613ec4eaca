"""Process-wide settings that make PyTorch fast (for the command line to make; library functions leave
them alone), and the choice of device and precision."""

import ctypes
import ctypes.util
import functools
import os
import sys

import torch


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


def choose_device(name: str = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU; or any name torch.device accepts."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available")
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


def choose_precision(name: str, device: torch.device) -> str:
    """Resolve "auto": bf16 on a GPU that has it and on CPUs with AMX; float32 elsewhere, where
    bf16 arithmetic is slower than float32 (as on AVX-512 CPUs without AMX, measured in the README)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    amx = getattr(torch._C._cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if amx else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a precision ("fp32" disables it)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")
