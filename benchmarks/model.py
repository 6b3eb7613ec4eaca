"""Training-step and inference throughput of the model variants next to torchvision's alexnet().

    python benchmarks/model.py [--batch 128] [--steps 7] [--models torchvision,paper,...]
                               [--settings fp32,fp32+cl,bf16+cl] [--level native|avx2|avx512|avx2,avx512]

Every model sees the same 224×224 batch, in the same process, in three settings: float32, float32
with channels-last tensors, and bfloat16 autocast with channels-last tensors. A training step is
forward, cross-entropy, backward and an SGD step. Reported: the median images/s over the timed
steps, and the ratio to torchvision's rate in the same setting. "paper (PyTorch LRN)" is `paper` with
its LRN computed by plain PyTorch ops instead of the fused kernel, to show what the kernel is worth.

--level runs at a lower instruction-set level than the machine's (an AVX-512 machine measures the
AVX2 code an AVX2 machine runs): each level in a process of its own, with PyTorch's, oneDNN's and
MKL's instruction sets capped and the package's kernels built for it. "native" is the machine as is.
"""

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import alexnet.lrn
from alexnet.kernels import target_flags
from alexnet.record import NetworkRecord, build_model
from alexnet.runtime import keep_freed_memory

SETTINGS = {
    "fp32": (torch.float32, torch.contiguous_format),
    "fp32+cl": (torch.float32, torch.channels_last),
    "bf16+cl": (torch.bfloat16, torch.channels_last),
}
LEVELS = {  # the environment of an instruction-set level: PyTorch's, oneDNN's, MKL's and the kernels' target
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ALEXNET_CPU_TARGET": "x86-64-v3"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ALEXNET_CPU_TARGET": "x86-64-v4"},
}


def make(name: str) -> torch.nn.Module:
    if name == "torchvision":
        return torchvision.models.alexnet()
    return build_model(NetworkRecord.of(name.split()[0]))


@contextlib.contextmanager
def plain_lrn(active: bool):
    kernel = alexnet.lrn.cpu_kernel
    if active:
        alexnet.lrn.cpu_kernel = lambda: None
    try:
        yield
    finally:
        alexnet.lrn.cpu_kernel = kernel


class Bench:
    """One model in one setting, with its batch and optimizer, timing single steps."""

    def __init__(self, name: str, dtype: torch.dtype, layout: torch.memory_format, batch: int):
        torch.manual_seed(0)
        self.name, self.plain = name, name.endswith("(PyTorch LRN)")
        self.model = make(name).to(memory_format=layout)
        self.x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=layout)
        self.y = torch.randint(0, 1000, (batch,))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
        self.times = {"train": [], "eval": []}

    def step(self, mode: str) -> float:
        self.model.train(mode == "train")
        start = time.perf_counter()
        with plain_lrn(self.plain):
            if mode == "train":
                with self.autocast:
                    loss = F.cross_entropy(self.model(self.x), self.y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            else:
                with torch.inference_mode(), self.autocast:
                    self.model(self.x)
        return time.perf_counter() - start

    def rate(self, mode: str) -> float:
        return len(self.x) / statistics.median(self.times[mode])


def measure(names: list[str], dtype: torch.dtype, layout: torch.memory_format, batch: int,
            steps: int) -> list[Bench]:
    """Time the models' steps in turns, so that a slow spell of the machine hits them all alike."""
    benches = [Bench(name, dtype, layout, batch) for name in names]
    for mode in ("train", "eval"):
        for bench in benches:
            bench.step(mode)  # warm-up: kernel selection, allocations
        for _ in range(steps):
            for bench in benches:
                bench.times[mode].append(bench.step(mode))
    return benches


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo, with its x86 family and model numbers where given."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:30] if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    info = {key.strip(): value.strip() for key, value in info.items()}
    name = info.get("model name", platform.machine())
    return f"{name} (family {info['cpu family']}, model {info['model']})" if "cpu family" in info else name


def describe(batch: int, reuse: bool) -> str:
    """The machine and the instruction sets the run uses: PyTorch's capability and the kernels' target."""
    level = ", ".join(f"{key}={os.environ[key]}" for key in LEVELS["avx2"] if key in os.environ) or "native"
    kernels = alexnet.lrn.cpu_kernel()
    lrn = f"LRN kernel {kernels.lrn_vector_isa()}" if kernels is not None else "no kernels: LRN as PyTorch ops"
    return (f"{cpu_model()}; level {level}\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}; kernels {' '.join(target_flags()) or 'default'}"
            f" ({lrn}); batch {batch}, malloc keeps freed memory: {reuse}")


def run(names: list[str], settings: list[str], batch: int, steps: int) -> None:
    """Time the models in each setting and print a row per model, with its ratios to torchvision's rates."""
    reuse = keep_freed_memory()  # as `alexnet train` does; it speeds up every model
    print(describe(batch, reuse))  # builds the kernels outside the timing
    print(f"{'model':<22}{'setting':<9}{'train img/s':>12}{'× tv':>7}{'infer img/s':>13}{'× tv':>7}")
    for setting in settings:
        benches = measure(names, *SETTINGS[setting], batch, steps)
        base = {mode: bench.rate(mode) for bench in benches if bench.name == "torchvision" for mode in bench.times}
        for bench in benches:
            train, infer = bench.rate("train"), bench.rate("eval")
            ratios = (f"{train / base['train']:>7.2f}", f"{infer / base['eval']:>7.2f}") if base else ("", "")
            print(f"{bench.name:<22}{setting:<9}{train:>12.1f}{ratios[0]:>7}{infer:>13.1f}{ratios[1]:>7}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--models", default="torchvision,paper,paper (PyTorch LRN),paper-1tower,owt")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--level", default="native", help="native, or instruction-set levels: avx2,avx512")
    args = parser.parse_args()
    if args.level == "native":
        return run(args.models.split(","), args.settings.split(","), args.batch, args.steps)
    capability = torch.backends.cpu.get_cpu_capability()
    for level in args.level.split(","):
        if capability not in ("AVX2", "AVX512") or (level == "avx512" and capability != "AVX512"):
            print(f"level {level}: not on this CPU (PyTorch's capability: {capability})")
            continue
        command = [sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps), "--models",
                   args.models, "--settings", args.settings]
        subprocess.run(command, env={**os.environ, **LEVELS[level]}, check=True)  # the variables are read once


if __name__ == "__main__":
    main()
