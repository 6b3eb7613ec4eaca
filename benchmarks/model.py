"""Training-step and inference throughput of the model variants next to torchvision's alexnet().

    python benchmarks/model.py [--batch 128] [--steps 5] [--models torchvision,paper,...]

Every model sees the same 224×224 batch, in the same process, in three settings: float32, float32
with channels-last tensors, and bfloat16 autocast with channels-last tensors. A training step is
forward, cross-entropy, backward and an SGD step. Reported: the median images/s over the timed
steps, and the ratio to torchvision's rate in the same setting. "paper (PyTorch LRN)" is `paper` with
its LRN computed by plain PyTorch ops instead of the fused kernel, to show what the kernel is worth.
"""

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

import alexnet.lrn
from alexnet.model import build_model
from alexnet.runtime import keep_freed_memory

SETTINGS = {
    "fp32": (torch.float32, torch.contiguous_format),
    "fp32+cl": (torch.float32, torch.channels_last),
    "bf16+cl": (torch.bfloat16, torch.channels_last),
}


def make(name: str) -> torch.nn.Module:
    if name == "torchvision":
        return torchvision.models.alexnet()
    return build_model(name.split()[0])


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--models", default="torchvision,paper,paper (PyTorch LRN),paper-1tower,owt")
    args = parser.parse_args()
    names = args.models.split(",")
    alexnet.lrn.cpu_kernel()  # build outside the timing
    reuse = keep_freed_memory()  # as `alexnet train` does; it speeds up every model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, batch {args.batch}, "
          f"malloc keeps freed memory: {reuse}")
    print(f"{'model':<22}{'setting':<9}{'train img/s':>12}{'× tv':>7}{'infer img/s':>13}{'× tv':>7}")
    for setting, (dtype, layout) in SETTINGS.items():
        benches = measure(names, dtype, layout, args.batch, args.steps)
        base = {mode: bench.rate(mode) for bench in benches if bench.name == "torchvision" for mode in bench.times}
        for bench in benches:
            train, infer = bench.rate("train"), bench.rate("eval")
            ratios = (f"{train / base['train']:>7.2f}", f"{infer / base['eval']:>7.2f}") if base else ("", "")
            print(f"{bench.name:<22}{setting:<9}{train:>12.1f}{ratios[0]:>7}{infer:>13.1f}{ratios[1]:>7}",
                  flush=True)


if __name__ == "__main__":
    main()
