"""The paper's two-GPU training (§3.2, `alexnet train --parallel towers`) against data parallelism (DDP) on the
CPU with gloo: the bytes each process hands to the collectives in a training step, by layer, and images/s.

    python benchmarks/towers.py [--batch 64] [--steps 3] [--worlds 2,4]

In turns, each in processes of its own (torch.multiprocessing, gloo, the cores split between them): one process
with the whole network (the baseline), then for each number of processes DDP (a whole `paper` network on each,
its share of the batch) and towers (pairs of processes, one tower each, the pairs data-parallel). Each process
makes a warm-up step, then `steps` timed steps of forward, cross-entropy, backward and §5's update on a fixed
random batch of `batch` 224×224 images in all (float32, channels-last, 1000 classes).

Bytes are counted as they are handed to gloo: for towers, what each all_gather sends (the process's own part of
the activations going forward, of their gradients going back) at the inputs of conv3, fc6, fc7 and fc8 and at
the logits, and, with more than one pair, its tower's gradients all-reduced over its twins; for DDP the gradient
buckets each process all-reduces, by the layer whose parameters they hold. An all_gather of two processes sends
each one's part once; a ring all-reduce over n processes sends 2(n − 1)/n of its payload from each.
"""

import argparse
import collections
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from alexnet.model import LAYERS
from alexnet.optim import PaperSGD
from alexnet.record import NetworkRecord, build_model
from alexnet.runtime import cpu_model, keep_freed_memory
from alexnet.towers import EXCHANGED, Tower, place

# the all_gathers of a step in the order they run: forward at each exchanged layer's input and the logits,
# backward at the exchanged layers' inputs again (the logits' gradient is the same on both processes)
GATHERS = [f"{name} input, forward" for name in EXCHANGED] + ["logits, forward"] + [
    f"{name} input, backward" for name in reversed(EXCHANGED)]


def counting(sent: collections.Counter, names: dict[int, str]):
    """A DDP communication hook that adds each bucket's bytes to `sent`, by layer, and all-reduces it."""
    def hook(group: dist.ProcessGroup, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        for p in bucket.parameters():
            sent[f"{names[p.data_ptr()]} gradients, all-reduce"] += p.numel() * p.element_size()
        return default_hooks.allreduce_hook(group, bucket)

    return hook


def worker(rank: int, world: int, mode: str, batch: int, steps: int, port: int, out: Path) -> None:
    """One process of a setting: its steps timed, its bytes counted; rank 0 writes them to `out`."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
    keep_freed_memory()
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(NetworkRecord.of("paper", 1000), "paper").to(memory_format=torch.channels_last)
    shard, shards, group = rank, world, None
    if mode == "towers":
        pair = place("paper", rank, world)
        model, shard, shards, group = Tower(model, pair), pair.index, pair.pairs, pair.twins
    sent, names = collections.Counter(), {p.data_ptr(): name.split(".")[0] for name, p in model.named_parameters()}
    if shards > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
        model.register_comm_hook(group or dist.group.WORLD, counting(sent, names))
    gathers = []
    all_gather = dist.all_gather

    def gather(parts: list[torch.Tensor], x: torch.Tensor, **kw) -> None:
        gathers.append(x.numel() * x.element_size())
        all_gather(parts, x, **kw)

    dist.all_gather = gather
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g).tensor_split(shards)[shard].contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(1000, (batch,), generator=g).tensor_split(shards)[shard]
    optimizer = PaperSGD(model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    sent.clear()
    gathers.clear()
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    if gathers:
        assert len(gathers) == steps * len(GATHERS), len(gathers)
        for i, size in enumerate(gathers):
            sent[GATHERS[i % len(GATHERS)]] += size
    if rank == 0:
        out.write_text(json.dumps({"rate": batch * steps / seconds, "sent": {k: v / steps for k, v in sent.items()},
                                   "threads": torch.get_num_threads()}))
    if world > 1:
        dist.destroy_process_group()


def measure(mode: str, world: int, batch: int, steps: int) -> dict:
    """A setting's images/s and bytes per step (process 0's)."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(worker, (world, mode, batch, steps, port, Path(tmp) / "out.json"), nprocs=world)
        return json.loads((Path(tmp) / "out.json").read_text())


def layer_order(key: str) -> tuple[int, str]:
    """Rows of the bytes table by layer, the logits last."""
    name = key.split()[0]
    return (LAYERS.index(name) if name in LAYERS else len(LAYERS), key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per step in all")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--worlds", default="2,4", help="numbers of processes")
    args = parser.parse_args()
    print(f"{cpu_model()}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{len(os.sched_getaffinity(0))} cores; batch {args.batch} in all, {args.steps} timed steps\n")
    one = measure("one", 1, args.batch, args.steps)
    rows = [("one process", 1, one)]
    for world in (int(w) for w in args.worlds.split(",")):
        for mode in ("ddp", "towers"):
            rows.append((f"{'DDP' if mode == 'ddp' else f'towers, {world // 2} × 2'}", world,
                         measure(mode, world, args.batch, args.steps)))
    print("| setting | processes | threads each | img/s | × one process | MB handed to gloo per step per process |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, world, found in rows:
        print(f"| {label} | {world} | {found['threads']} | {found['rate']:.1f} | {found['rate'] / one['rate']:.2f} | "
              f"{sum(found['sent'].values()) / 1e6:.1f} |")
    for label, world, found in rows[1:]:
        print(f"\n{label}, {world} processes: bytes per step per process")
        print("| where | MB |\n|---|---:|")
        for key in sorted(found["sent"], key=layer_order):
            print(f"| {key} | {found['sent'][key] / 1e6:.2f} |")


if __name__ == "__main__":
    main()
