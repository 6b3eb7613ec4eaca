"""Input-pipeline throughput next to the PyTorch ImageNet example's DataLoader, on one core and on two.

    python benchmarks/data.py [--data ../shared/data/imagenet-samples] [--copies 8] [--epochs 4] [--repeats 3]

The images: full-size ImageNet JPEGs (flat files `<wnid>_<name>.JPEG`), each linked `copies` times into
a temporary ImageFolder `<tmp>/train/<wnid>/`, so that an epoch holds several hundred images. Rows:

    baseline            pytorch/examples imagenet/main.py: torchvision ImageFolder, PIL decoding,
                        RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize, through a
                        shuffled DataLoader, batch 128 (one epoch)
    prepare             alexnet.data.store.prepare of the same folder: decode, §2 rescale and central
                        256×256, mean image and RGB statistics, shards written to disk
    store → batches     Loader over the prepared store + augment.train_batch (§4.1 random 224 crop,
                        flip, PCA colour noise, mean subtracted; float32 channels-last: what training
                        consumes), `epochs` epochs; the page cache holds the store
    ... PyTorch crop    the same with the C++ crop kernel off (plain PyTorch ops)
    JPEG → batches      Loader straight over the JPEG folder + train_batch (quick use, no prepare)

Times run from creating the DataLoader or Loader to the last batch, so they include starting worker
processes, as every epoch of the example does.

Each repeat runs every row on one core and then on two, in a child process pinned to that many cores
(sched_setaffinity), with as many torch threads; DataLoader worker processes: none on one core (the
main process decodes), two on two; `prepare` workers: one, or two. glibc's malloc keeps freed memory,
as `alexnet train` has it (alexnet/runtime.py), for every row. The rows take turns, in reverse order
every other repeat. Reported: images/s, the median over the repeats, and the ratio to the baseline on
the same cores; also images per CPU-second (the process's and its workers' user + system time), which
a machine shared with other jobs disturbs less than the wall clock.
"""

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision import transforms

import alexnet.data.augment
from alexnet.data.augment import train_batch
from alexnet.data.folders import list_images
from alexnet.data.loader import Loader
from alexnet.data.stats import Recipe
from alexnet.data.store import Store, prepare
from alexnet.kernels import cpu_kernels
from alexnet.runtime import keep_freed_memory

ROWS = ("baseline", "prepare", "store → batches", "store → batches, PyTorch crop", "JPEG → batches")
BATCH = 128


def link_folder(data: Path, root: Path, copies: int) -> int:
    """An ImageFolder `root/train/<wnid>/` of `copies` symlinks to every `<wnid>_<name>.JPEG` in `data`."""
    files = sorted(data.glob("*.JPEG"))
    for f in files:
        folder = root / "train" / f.name.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            (folder / f"{f.stem}-{k}.JPEG").symlink_to(f.resolve())
    return len(files) * copies


def baseline(root: Path, workers: int) -> tuple[int, float]:
    """One epoch of the ImageNet example's training input; (images, seconds)."""
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dataset = torchvision.datasets.ImageFolder(root / "train", transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
    count = sum(len(images) for images, _ in loader)
    return count, time.perf_counter() - start


def prepare_once(root: Path, workers: int) -> tuple[int, float]:
    """`prepare` of the whole folder into a fresh store, deleted afterwards; (images, seconds)."""
    dst = Path(tempfile.mkdtemp(prefix="alexnet-bench-store-"))
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            store = prepare(root, dst, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        return len(store.split("train")), seconds
    finally:
        shutil.rmtree(dst)


@contextlib.contextmanager
def plain_crop(active: bool):
    """Make train_batch use plain PyTorch ops instead of the C++ crop kernel."""
    kernels = alexnet.data.augment.cpu_kernels
    if active:
        alexnet.data.augment.cpu_kernels = lambda: None
    try:
        yield
    finally:
        alexnet.data.augment.cpu_kernels = kernels


def batches(loader: Loader, recipe: Recipe, epochs: int, plain: bool) -> tuple[int, float]:
    """Augmented training batches, as training makes them, for `epochs` epochs; (images, seconds)."""
    count, start = 0, time.perf_counter()
    with plain_crop(plain):
        for epoch in range(epochs):
            for images, _, indices in loader.epoch(epoch):
                count += len(train_batch(images, recipe, 224, seed=0, epoch=epoch, indices=indices))
    return count, time.perf_counter() - start


def cpu_seconds() -> float:
    """User + system time of this process and of its finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in usage)


def child(root: Path, store_path: Path, cores: int, epochs: int, rows: list[str]) -> dict[str, list[float]]:
    """One turn of `rows`, in that order, on `cores` cores (this process is pinned to them): images per
    second and images per CPU-second."""
    torch.set_num_threads(cores)
    keep_freed_memory()  # as `alexnet train` does; the same for every row (worker processes inherit it)
    workers = 0 if cores == 1 else cores
    store = Store(store_path)
    recipe = store.recipe()
    from_store = Loader(store.split("train"), BATCH, shuffle=True, seed=0)
    from_jpegs = Loader(list_images(root, "train"), BATCH, shuffle=True, seed=0, workers=workers)
    cpu_kernels()  # load the compiled kernels outside the timing
    warm = np.arange(BATCH)
    for plain in (False, True):  # warm-up: first allocations
        with plain_crop(plain):
            train_batch(torch.from_numpy(store.split("train").read(warm)), recipe, 224, 0, 0, warm)
    runs = {
        "baseline": lambda: baseline(root, workers),
        "prepare": lambda: prepare_once(root, cores),
        "store → batches": lambda: batches(from_store, recipe, epochs, plain=False),
        "store → batches, PyTorch crop": lambda: batches(from_store, recipe, epochs, plain=True),
        "JPEG → batches": lambda: batches(from_jpegs, recipe, 1, plain=False),
    }
    rates = {}
    for row in rows:
        cpu = cpu_seconds()
        count, seconds = runs[row]()
        rates[row] = [count / seconds, count / (cpu_seconds() - cpu)]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "imagenet-samples", help="folder of <wnid>_<name>.JPEG files")
    parser.add_argument("--copies", type=int, default=8, help="links to each file in the temporary folder")
    parser.add_argument("--epochs", type=int, default=4, help="epochs over the store per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "STORE", "CORES"), help=argparse.SUPPRESS)
    parser.add_argument("--reverse", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, store, cores = args.child
        rows = list(ROWS[::-1] if args.reverse else ROWS)
        print(json.dumps(child(Path(root), Path(store), int(cores), args.epochs, rows)))
        return

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("this benchmark needs two cores")
    cpu_kernels()  # build once (cached per machine) before the children load it
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as tmp:
        root, store = Path(tmp) / "images", Path(tmp) / "store"
        n = link_folder(args.data, root, args.copies)
        with contextlib.redirect_stdout(io.StringIO()):
            prepare(root, store, workers=2, progress=False)  # the store the batch rows read; warms the page cache
        store_mb = sum(f.stat().st_size for f in store.rglob("*.npy")) / 2**20
        print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}, cores {cpus[:2]}; {n} images "
              f"({args.copies} links to each of {n // args.copies} files), batch {BATCH}, store {store_mb:.0f} MB, "
              f"{args.epochs} epochs per store measurement, {args.repeats} repeats; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        rates: dict[int, dict[str, list[list[float]]]] = {1: {}, 2: {}}
        for repeat in range(args.repeats):
            for cores in (1, 2):
                cmd = [sys.executable, __file__, "--epochs", str(args.epochs), "--child", str(root), str(store),
                       str(cores)] + (["--reverse"] if repeat % 2 else [])
                pinned = set(cpus[:cores])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                     preexec_fn=lambda pinned=pinned: os.sched_setaffinity(0, pinned)).stdout
                for row, rate in json.loads(out.splitlines()[-1]).items():
                    rates[cores].setdefault(row, []).append(rate)
            print(f"repeat {repeat + 1}: " + "; ".join(
                f"{cores} core{'s' if cores > 1 else ''} " + ", ".join(f"{rows[row][-1][0]:.0f}" for row in ROWS)
                for cores, rows in rates.items()) + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'pipeline':<32}{'cores':>6}{'img/s':>9}{'img/s/core':>12}{'× baseline':>12}{'img/CPU-s':>11}"
          f"{'× baseline':>12}")
    for cores, rows in rates.items():
        median = {row: [statistics.median(r[k] for r in rows[row]) for k in (0, 1)] for row in ROWS}
        base, base_cpu = median["baseline"]
        for row in ROWS:
            rate, cpu_rate = median[row]
            print(f"{row:<32}{cores:>6}{rate:>9.0f}{rate / cores:>12.0f}{rate / base:>12.2f}{cpu_rate:>11.0f}"
                  f"{cpu_rate / base_cpu:>12.2f}")


if __name__ == "__main__":
    main()
