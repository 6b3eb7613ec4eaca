import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alexnet.kernels
from alexnet.kernels import build_key, cpu_kernels, is_x86, isa_features, predefined_macros, target_flags

ROOT = Path(__file__).resolve().parents[1]
AVX2 = "#define __SSE2__ 1\n#define __AVX__ 1\n#define __AVX2__ 1\n#define __FMA__ 1\n#define __k8 1\n"
AVX512 = AVX2 + "#define __AVX512F__ 1\n#define __AVX512BW__ 1\n#define __BIGGEST_ALIGNMENT__ 64\n"
needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")


def test_isa_features_are_the_capitalized_macros_defined_as_one():
    assert isa_features(AVX2) == {"__SSE2__", "__AVX__", "__AVX2__", "__FMA__"}
    assert isa_features(AVX512) - isa_features(AVX2) == {"__AVX512F__", "__AVX512BW__"}


def test_build_key_is_the_same_for_the_same_build_and_differs_by_instruction_set():
    sources, flags = {"/a/f.cpp": b"int f();"}, ["-O3", "-march=native"]
    assert build_key(sources, flags, AVX512) == build_key(sources, flags, AVX512)
    # the same sources and flags, built on an AVX2 node and on an AVX-512 node: two builds
    assert build_key(sources, flags, AVX2) != build_key(sources, flags, AVX512)
    assert build_key(sources, ["-O3", "-march=x86-64-v3"], AVX2) != build_key(sources, flags, AVX2)
    assert build_key({"/a/f.cpp": b"int g();"}, flags, AVX2) != build_key(sources, flags, AVX2)
    # the same files in another checkout: ninja would rebuild a shared build for each in turn
    assert build_key({"/b/f.cpp": b"int f();"}, flags, AVX2) != build_key(sources, flags, AVX2)


def test_target_flags(monkeypatch):
    monkeypatch.delenv("ALEXNET_CPU_TARGET", raising=False)
    assert target_flags() == (["-march=native"] if is_x86() else [])
    monkeypatch.setenv("ALEXNET_CPU_TARGET", "x86-64-v3")
    assert target_flags() == (["-march=x86-64-v3"] if is_x86() else ["-mcpu=x86-64-v3"])
    assert target_flags("default") == []


@needs_compiler
@pytest.mark.skipif(not is_x86(), reason="x86-64 targets")
def test_the_compilers_macros_tell_the_x86_levels_apart():
    v3, v4 = predefined_macros(["-march=x86-64-v3"]), predefined_macros(["-march=x86-64-v4"])
    assert "__AVX2__" in isa_features(v3) and "__AVX512F__" not in isa_features(v3)
    assert isa_features(v3) < isa_features(v4)
    assert predefined_macros(["-march=x86-64-v3"]) == v3  # the key is stable
    assert build_key({}, ["-O3"], v3) != build_key({}, ["-O3"], v4)


def test_a_target_above_this_cpu_is_refused_not_built(monkeypatch):
    monkeypatch.delenv("ALEXNET_KERNELS", raising=False)
    monkeypatch.setenv("ALEXNET_CPU_TARGET", "bigger")
    monkeypatch.setattr(alexnet.kernels, "predefined_macros",
                        lambda flags: AVX512 if "bigger" in " ".join(flags) else AVX2)
    with pytest.warns(UserWarning, match="__AVX512BW__, __AVX512F__, which this CPU lacks"):
        assert cpu_kernels.__wrapped__() is None


@needs_compiler
@pytest.mark.skipif(not is_x86() or torch.backends.cpu.get_cpu_capability() != "AVX512",
                    reason="measures the AVX2 build on an AVX-512 machine")
@pytest.mark.skipif(os.environ.get("ALEXNET_KERNELS") == "0", reason="kernels turned off")
def test_the_avx2_build_passes_the_kernel_tests_on_an_avx512_machine():
    """The AVX2 code of the kernels (built once, about a minute, then cached), with PyTorch's AVX2 code."""
    env = {**os.environ, "ALEXNET_CPU_TARGET": "x86-64-v3", "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(ROOT)}
    check = "from alexnet.lrn import cpu_kernel; assert cpu_kernel().lrn_vector_isa() == 'AVX2'"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, timeout=1800)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "kernel",
                             str(ROOT / "tests" / "test_lrn.py")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
