"""Load test of `alexnet serve`: N concurrent clients on 127.0.0.1 for a fixed time, with batching on and off in
the same run; requests/s, p50 and p99 latency, failed requests, and the ratio of the two rates. With --bombs,
bombs and photos together against one server instead (below).

    python benchmarks/serve.py [CHECKPOINT] [--clients 16] [--seconds 10] [--rounds 3] [--warmup 5] [--crops 1]
                                [--threads N] [--precision auto]
    python benchmarks/serve.py [CHECKPOINT] --bombs 64 [--clients 16] [--seconds 60] [--bomb-size 9000x9900]

Without CHECKPOINT, a freshly initialized `paper` network for the built-in photos' 10 classes is saved in a
temporary folder (the speed does not depend on the weights). Each setting runs `alexnet serve` in a process of
its own, both started first: --max-batch 16 (batching on) and --max-batch 1 (one photo per forward pass), each
in the precision its `--precision auto` chooses, the faster at its --max-batch on this machine (printed). The
clients, coroutines of one asyncio loop in this process, each post the built-in validation photos one after
another as raw JPEG bodies. After --warmup seconds of load on each server, the settings take turns, --rounds
windows of --seconds each, so that a slow spell of a shared machine hits both; a request counts when it was
sent and answered within a window.

--bombs N: one server with its defaults, N clients posting decompression bombs (a 1-bit PNG of --bomb-size
pixels, about 10 KB, made here: 450 MB once decoded at 9000x9900) back to back together with --clients clients
posting the built-in photos, for --seconds (60). The server's resident memory is read from /proc every 0.1 s and
its peak (VmHWM) at the end; the run passes when the peak stays under 2 GiB and every photo was answered 200, or
503 with Retry-After. Prints the answers of each kind and the photos' p50 and p99 latency.
"""

import argparse
import asyncio
import contextlib
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
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
    from alexnet.training import Trainer, open_data

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
    yields its URL once /health answers, and its process."""
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
        yield url, proc
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


def bomb(width: int, height: int) -> bytes:
    """A whole 1-bit PNG of width×height pixels, all black: a decompression bomb (9000x9900: about 11 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(bytes((1 + (width + 7) // 8) * height), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def memory(pid: int) -> dict[str, float]:
    """A process's resident memory now (VmRSS) and at its peak (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {field: int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024 for field in ("VmRSS", "VmHWM")}


async def bombard(url: str, pid: int, photos: list[bytes], bombs: int, clients: int, seconds: float, bombing: bytes
                  ) -> tuple[list[float], Counter, float]:
    """`bombs` clients posting `bombing` and `clients` posting photos, back to back for `seconds`: the photos'
    latencies (answered 200), the answers of each kind (photo or bomb, status), the server's highest VmRSS."""
    latencies: list[float] = []
    answers: Counter = Counter()
    most = 0.0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def client(number: int, http: httpx.AsyncClient, photo: bool) -> None:
        i = number
        while loop.time() < end:
            data, sent = photos[i % len(photos)] if photo else bombing, loop.time()
            try:
                r = await http.post(url + "/predict", content=data, params={"crops": 1},
                                    headers={"content-type": "image/jpeg" if photo else "image/png"})
                retry = r.status_code != 503 or "retry-after" in r.headers
                kind = r.status_code if retry else "503 without Retry-After"
            except httpx.HTTPError as err:
                kind = type(err).__name__
            answers["photo" if photo else "bomb", kind] += 1
            if photo and kind == 200:
                latencies.append(loop.time() - sent)
            i += clients

    async def watch() -> None:
        nonlocal most
        while loop.time() < end:
            most = max(most, memory(pid)["VmRSS"])
            await asyncio.sleep(0.1)

    limits = httpx.Limits(max_connections=bombs + clients, max_keepalive_connections=bombs + clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        await asyncio.gather(watch(), *(client(n, http, False) for n in range(bombs)),
                             *(client(n, http, True) for n in range(clients)))
    return latencies, answers, most


def bombs_main(args: argparse.Namespace, ckpt: Path, photos: list[bytes]) -> bool:
    """--bombs: bombs and photos together against one server with its defaults; whether the run passed."""
    width, height = map(int, args.bomb_size.lower().split("x"))
    bombing, seconds = bomb(width, height), args.seconds or 60
    print(f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.2f}; {args.bombs} clients posting a "
          f"{len(bombing) / 1000:.0f} KB 1-bit PNG of {width}x{height} pixels and {args.clients} posting photos, for "
          f"{seconds:g} s, the centre patch", flush=True)
    with server(ckpt, 16, args.precision, args.threads) as (url, proc):
        before = memory(proc.pid)
        latencies, answers, most = asyncio.run(bombard(url, proc.pid, photos, args.bombs, args.clients, seconds,
                                                       bombing))
        after = memory(proc.pid)
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    print(f"answers: {', '.join(f'{who} {kind}: {n}' for (who, kind), n in sorted(answers.items(), key=str))}")
    print(f"photos answered 200: p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms "
          f"({len(latencies) / seconds:.1f}/s)")
    print(f"server memory: {before['VmRSS']:.0f} MiB resident before, {most:.0f} MiB at most while loaded "
          f"(peak VmHWM {after['VmHWM']:.0f} MiB), {after['VmRSS']:.0f} MiB after")
    unanswered = sum(n for (who, kind), n in answers.items() if who == "photo" and kind not in (200, 503))
    ok = after["VmHWM"] < 2048 and unanswered == 0 and bool(latencies)
    print(f"{'PASS' if ok else 'FAIL'}: peak under 2 GiB: {after['VmHWM'] < 2048}; every photo answered 200 or "
          f"503 with Retry-After: {unanswered == 0}")
    return ok


def main() -> None:
    """Run the load with batching on, then off, and print a Markdown table (--bombs: bombs and photos)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=None, help="default: a fresh `paper` network")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=None,
                        help="length of one timed window (default 10); --bombs: of the whole run (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="timed windows of each setting, in turns")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load on each server before timing")
    parser.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre patch; 10: ten patches")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch with batching on")
    parser.add_argument("--precision", default="auto",
                        help="the servers' --precision (auto, their default: each times its --max-batch)")
    parser.add_argument("--threads", type=int, default=None, help="the servers' PyTorch threads (default: its own)")
    parser.add_argument("--bombs", type=int, default=0, help="clients posting decompression bombs (0: none, the "
                                                             "batching comparison)")
    parser.add_argument("--bomb-size", default="9000x9900", help="the bombs' WIDTHxHEIGHT (1-bit PNG)")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted((DEFAULT_DATA / "val").glob("*/*.JPEG"))]
    if args.bombs:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(Path(tmp))
            sys.exit(0 if bombs_main(args, ckpt, photos) else 1)
    args.seconds = args.seconds or 10
    settings = {f"batching on (--max-batch {args.max_batch})": args.max_batch, "batching off (--max-batch 1)": 1}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(Path(tmp))
        print(f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}; {args.clients} clients, {args.rounds} x {args.seconds:g} s each in turns after "
              f"{args.warmup:g} s of warm-up, {'the centre patch' if args.crops == 1 else 'ten patches'}, "
              f"{args.precision}, {args.threads or 'default'} threads per server", flush=True)
        urls = {name: stack.enter_context(server(ckpt, max_batch, args.precision, args.threads))[0]
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
