"""Exact nearest-neighbor search over stored fc7 features: `alexnet.neighbors.nearest` (a memory map read in
chunks, one matrix product per chunk, a running top-k) next to brute force, torch.cdist + topk on all
features held in memory, in the same run.

    python benchmarks/neighbors.py [--sizes 10000,100000,1000000] [--queries 1,64] [--k 6] [--dir /tmp]

For each size N, synthetic features (ReLU of Gaussian noise, float32, 4096-d: 16 KiB a row, 16 GB for a
million) are written to a .npy file under --dir, searched through a memory map, and deleted afterwards.
Reported per number of queries Q: queries/s of two passes of `nearest` (the first may read the file from
disk, the second finds what the page cache kept), the peak anonymous memory (RssAnon: what the search
allocates, not the file's pages in the cache) above the level before the search, and queries/s of
torch.cdist + topk where the features fit in --cdist-limit GiB of memory (loading them is not timed).
"""

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from alexnet.neighbors import CHUNK_ROWS, nearest

DIM = 4096


def rss_anon() -> int:
    """This process's anonymous resident memory in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def peak_memory(result: dict):
    """Sample RssAnon every 20 ms; result["peak"] is the highest value above the starting one."""
    start, peak, done = rss_anon(), [0], threading.Event()

    def watch():
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_anon() - start)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        result["peak"] = max(peak[0], rss_anon() - start)


def write_features(path: Path, n: int, seed: int = 0) -> float:
    """A (n, 4096) float32 .npy of ReLU(Gaussian noise), written block by block; returns seconds taken."""
    started = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK_ROWS):
        block = rng.standard_normal((min(CHUNK_ROWS, n - start), DIM), dtype=np.float32)
        np.maximum(block, 0, out=block)
        out[start:start + len(block)] = block
    out.flush()
    del out
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="numbers of stored features")
    parser.add_argument("--queries", default="1,64", help="numbers of queries per search")
    parser.add_argument("--k", type=int, default=6, help="neighbors per query")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the synthetic features")
    parser.add_argument("--cdist-limit", type=float, default=4.0, help="GiB of features brute force may hold")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(q) for q in args.queries.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="alexnet-neighbors-", dir=args.dir))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; k = {args.k}, "
          f"chunks of {CHUNK_ROWS} rows; features in {folder}")
    print("| N | size | Q | nearest, 1st pass (q/s) | nearest, 2nd pass (q/s) | search memory | "
          "cdist + topk (q/s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(1)
    warm = np.maximum(rng.standard_normal((1000, DIM), dtype=np.float32), 0)  # one-time set-up costs, untimed
    nearest(warm, torch.from_numpy(warm[:64]), args.k)
    torch.cdist(torch.from_numpy(warm[:64]), torch.from_numpy(warm)).topk(args.k, dim=1, largest=False)
    try:
        for n in sizes:
            path = folder / f"features-{n}.npy"
            seconds = write_features(path, n)
            gb = n * DIM * 4 / 1e9
            print(f"(wrote {gb:.2f} GB in {seconds:.1f} s)", flush=True)
            stored = np.load(path, mmap_mode="r")
            in_memory = None
            if n * DIM * 4 <= args.cdist_limit * 2**30:
                in_memory = torch.from_numpy(np.array(stored))
            for q in counts:
                queries = torch.from_numpy(np.maximum(rng.standard_normal((q, DIM), dtype=np.float32), 0))
                rates, memory = [], {}
                for attempt in range(2):
                    with peak_memory(memory) if attempt == 0 else contextlib.nullcontext():
                        started = time.perf_counter()
                        d, i = nearest(stored, queries, args.k)
                        rates.append(q / (time.perf_counter() - started))
                brute = "does not fit"
                if in_memory is not None:
                    started = time.perf_counter()
                    values, indices = torch.cdist(queries, in_memory).topk(args.k, dim=1, largest=False)
                    brute = f"{q / (time.perf_counter() - started):.2f}"
                    if not np.array_equal(indices.numpy(), i):  # float32 cdist can swap near-equal distances
                        brute += f" (differs in {int((indices.numpy() != i).any(1).sum())} queries)"
                print(f"| {n:,} | {gb:.2f} GB | {q} | {rates[0]:.2f} | {rates[1]:.2f} | "
                      f"{memory['peak'] / 2**20:.0f} MiB | {brute} |", flush=True)
            del stored, in_memory
            path.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
