"""Process-wide settings that make PyTorch fast on the CPU."""

import ctypes
import ctypes.util
import functools
import sys


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
