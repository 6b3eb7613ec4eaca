"""Load test of `alexnet serve`: N concurrent clients on 127.0.0.1 for a fixed time, with batching on and off in
the same run; requests/s, p50 and p99 latency, failed requests, and the ratio of the two rates.

    python benchmarks/serve.py [CHECKPOINT] [--clients 16] [--seconds 10] [--rounds 3] [--warmup 5] [--crops 1]
                                [--threads N] [--precision auto]

Without CHECKPOINT, a freshly initialized `paper` network for the built-in photos' 10 classes is saved in a
temporary folder (the speed does not depend on the weights). Each setting runs `alexnet serve` in a process of
its own, both started first: --max-batch 16 (batching on) and --max-batch 1 (one photo per forward pass), each
in the precision its `--precision auto` chooses, the faster at its --max-batch on this machine (printed). The
clients, coroutines of one asyncio loop in this process, each post the built-in validation photos one after
another as raw JPEG bodies. After --warmup seconds of load on each server, the settings take turns, --rounds
windows of --seconds each, so that a slow spell of a shared machine hits both; a request counts when it was
sent and answered within a window.
"""

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from alexnet.data.folders import DEFAULT_DATA
from alexnet.runtime import cpu_model


def make_checkpoint(folder: Path) -> Path:
    """A freshly initialized `paper` network for the built-in photos, saved as a checkpoint in `folder`."""
    from alexnet import checkpoint
    from alexnet.config import TrainConfig
    from alexnet.train import Trainer, open_data

    cfg = TrainConfig(data=None, epochs=1, progress=False)
    checkpoint.save(folder / "net.pt", Trainer(cfg, open_data(cfg), folder).snapshot())
    return folder / "net.pt"


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(ckpt: Path, max_batch: int, precision: str, threads: int | None):
    """`alexnet serve CKPT --max-batch N` in a process of its own (PyTorch's threads: `threads`, or its default);
    yields its URL once /health answers."""
    port = free_port()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "serve", str(ckpt), "--port", str(port),
                             "--max-batch", str(max_batch), "--precision", precision],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the server did not start:\n{proc.stdout.read()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(60)
        proc.stdout.close()


async def load(url: str, photos: list[bytes], clients: int, seconds: float, crops: int) -> tuple[list[float], int]:
    """`clients` coroutines posting photos back to back for `seconds`: the latencies of the answered requests
    (seconds), and how many failed."""
    latencies: list[float] = []
    failed = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal failed
        i = number
        while loop.time() < end:
            sent = loop.time()
            try:
                r = await http.post(url + "/predict", content=photos[i % len(photos)], params={"crops": crops},
                                    headers={"content-type": "image/jpeg"})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if loop.time() <= end:
                if ok:
                    latencies.append(loop.time() - sent)
                else:
                    failed += 1
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    return latencies, failed


def summary(latencies: list[float], failed: int, seconds: float) -> dict:
    """Requests/s, p50 and p99 latency in ms, failures."""
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"requests/s": len(latencies) / seconds, "p50 ms": float(np.percentile(ms, 50)),
            "p99 ms": float(np.percentile(ms, 99)), "failed": failed}


def main() -> None:
    """Run the load with batching on, then off, and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=None, help="default: a fresh `paper` network")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10, help="length of one timed window")
    parser.add_argument("--rounds", type=int, default=3, help="timed windows of each setting, in turns")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load on each server before timing")
    parser.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre patch; 10: ten patches")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch with batching on")
    parser.add_argument("--precision", default="auto",
                        help="the servers' --precision (auto, their default: each times its --max-batch)")
    parser.add_argument("--threads", type=int, default=None, help="the servers' PyTorch threads (default: its own)")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted((DEFAULT_DATA / "val").glob("*/*.JPEG"))]
    settings = {f"batching on (--max-batch {args.max_batch})": args.max_batch, "batching off (--max-batch 1)": 1}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(Path(tmp))
        print(f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}; {args.clients} clients, {args.rounds} x {args.seconds:g} s each in turns after "
              f"{args.warmup:g} s of warm-up, {'the centre patch' if args.crops == 1 else 'ten patches'}, "
              f"{args.precision}, {args.threads or 'default'} threads per server", flush=True)
        urls = {name: stack.enter_context(server(ckpt, max_batch, args.precision, args.threads))
                for name, max_batch in settings.items()}
        for name, url in urls.items():
            print(f"{name}: {httpx.get(url + '/info').json()['precision']}", flush=True)
        for url in urls.values():
            asyncio.run(load(url, photos, args.clients, args.warmup, args.crops))
        measured = {name: ([], 0) for name in settings}
        for r in range(args.rounds):
            for name, url in urls.items():
                latencies, failed = asyncio.run(load(url, photos, args.clients, args.seconds, args.crops))
                measured[name] = (measured[name][0] + latencies, measured[name][1] + failed)
                print(f"round {r + 1}, {name}: {len(latencies) / args.seconds:.1f} requests/s", flush=True)
    rows = {name: summary(*m, args.rounds * args.seconds) for name, m in measured.items()}
    on, off = rows.values()
    print("\n| setting | clients | requests/s | p50 ms | p99 ms | failed |\n|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {args.clients} | {r['requests/s']:.1f} | {r['p50 ms']:.0f} | {r['p99 ms']:.0f} | "
              f"{r['failed']} |")
    print(f"\nbatching: {on['requests/s'] / off['requests/s']:.2f}x the requests/s of one photo per forward pass")


if __name__ == "__main__":
    main()
