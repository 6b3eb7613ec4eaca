"""The nearest neighbors of query images in fc7 space (§6.1, Figure 4 right): an exact Euclidean search over
a features folder of any size, in blocks, so that memory stays small however many features there are."""

import contextlib
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.folders import known_class
from .errors import InputError
from .features import Features, fc7, weights_digest
from .inference import Network, load_network
from .options import COUNT, argument, option, png

CHUNK_ROWS = 16384  # stored features per matrix product: 256 MiB of float32 in the paper's network


@dataclass
class NeighborsConfig:
    """`alexnet neighbors`'s arguments."""

    checkpoint: str = argument("the checkpoint the features were made with")
    queries: list[str] = argument("query image files", nargs="+")
    features: str = option(None, "a folder made by `alexnet features`", required=True)
    k: int = option(6, "neighbors per query", accepts=COUNT)
    out: str | None = option(None, "PNG file to draw the grid to (default: no picture)", parse=png)
    json: bool = option(False, "print the result as JSON")
    chunk: int = option(CHUNK_ROWS, "stored features per matrix product (16 KiB each in the paper's network)",
                        accepts=COUNT)
    device: str = option("auto", "device for the queries' features: auto, cpu, cuda, ...")


def _blocks(features: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Consecutive blocks of `rows` rows in memory, the next one read by a background thread meanwhile.

    A memory-mapped .npy is read with plain file reads into two reused buffers (faster than copying from the
    map, and the page cache is the only memory the file takes); a block is valid until the next one is asked for."""
    n, dim = features.shape
    path = getattr(features, "filename", None)
    # the whole of a file's array (not a slice of one, which keeps its parent's file name and offset)
    direct = (path is not None and features.dtype == np.float32 and features.flags.c_contiguous
              and features.offset + features.nbytes == os.path.getsize(path))
    buffers = [np.empty((min(rows, n), dim), np.float32) for _ in range(2 if n > rows else 1)]
    with contextlib.ExitStack() as stack:
        file = stack.enter_context(open(path, "rb", buffering=0)) if direct else None

        def read(start: int) -> np.ndarray:
            out = buffers[start // rows % len(buffers)][:min(rows, n - start)]
            if file is None:
                out[...] = features[start:start + len(out)]
                return out
            view, offset = memoryview(out).cast("B"), features.offset + start * dim * 4
            while len(view):
                got = os.preadv(file.fileno(), [view], offset)
                if got <= 0:
                    raise InputError(f"{path} ended early: is it being rewritten?")
                view, offset = view[got:], offset + got
            return out

        pool = stack.enter_context(ThreadPoolExecutor(1))
        pending = pool.submit(read, 0)
        for start in range(0, n, rows):
            block = pending.result()
            if start + rows < n:
                pending = pool.submit(read, start + rows)
            yield start, block


def nearest(features: np.ndarray, queries: torch.Tensor, k: int, chunk: int = CHUNK_ROWS,
            skip: list[int] | None = None, exclude: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of `features` (N, D; an array or memory map) nearest each query (Q, D) in Euclidean
    distance, exactly: (distances float64 (Q, k'), row indices int64 (Q, k')), nearest first, k' = min(k, rows
    left). `skip`: rows never returned; `exclude[q]`: a row left out for query q (-1: none).

    One pass over `features` in blocks of `chunk` rows, each with one matrix product
    ||a − b||² = ||a||² − 2a·b + ||b||² (float32, after subtracting the first block's mean, which keeps the
    cancellation small) and a running top-(k+8); the survivors are ranked by their exact float64 distance.
    Memory: two blocks (chunk × D × 4 bytes each) and Q × chunk distances, whatever N is.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if chunk < 1:
        raise InputError(f"the chunk size must be at least 1 row, got {chunk}")
    n, dim = features.shape
    queries = queries.detach().float().cpu()
    if queries.dim() != 2 or queries.shape[1] != dim:
        raise InputError(f"queries of shape {tuple(queries.shape)} do not match features of dimension {dim}")
    count = len(queries)
    skip_rows = np.unique(np.asarray(skip or [], np.int64))
    exclude_rows = torch.as_tensor(exclude if exclude is not None else [-1] * count, dtype=torch.int64)
    keep = min(k + 8, n)  # candidates carried from block to block
    best_d = torch.empty(count, 0)
    best_i = torch.empty(count, 0, dtype=torch.int64)
    center = q = qn = None
    for start, block in _blocks(features, chunk):
        b = torch.from_numpy(block)
        if center is None:
            center = torch.from_numpy(block.mean(0, dtype=np.float64).astype(np.float32))
            q = queries - center
            qn = q.square().sum(1)
        b -= center
        d = torch.addmm(qn[:, None] + torch.linalg.vector_norm(b, dim=1).square()[None, :], q, b.T, alpha=-2)
        end = start + len(b)
        local = skip_rows[(skip_rows >= start) & (skip_rows < end)] - start
        d[:, torch.from_numpy(local)] = math.inf
        mine = ((exclude_rows >= start) & (exclude_rows < end)).nonzero().squeeze(1)
        d[mine, exclude_rows[mine] - start] = math.inf
        d = torch.cat([best_d, d], 1)
        index = torch.cat([best_i, torch.arange(start, end).expand(count, -1)], 1)
        best_d, pick = d.topk(min(keep, d.shape[1]), dim=1, largest=False)
        best_i = index.gather(1, pick)
    return _exact_rank(features, queries, best_d, best_i, k)


def _exact_rank(features: np.ndarray, queries: torch.Tensor, approx: torch.Tensor, rows: torch.Tensor,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k candidates nearest each query by their exact float64 distance (ties: the lower row first)."""
    out_d, out_i = [], []
    for q, a, r in zip(queries.double().numpy(), approx.numpy(), rows.numpy(), strict=True):
        r = r[np.isfinite(a)]  # skipped or excluded rows that only filled the candidate list
        r = np.sort(r)
        d = np.sqrt(((np.asarray(features[r], np.float64) - q) ** 2).sum(1))
        order = np.argsort(d, kind="stable")[:k]
        out_d.append(d[order])
        out_i.append(r[order])
    width = min(len(d) for d in out_d) if out_d else 0
    return np.stack([d[:width] for d in out_d]), np.stack([i[:width] for i in out_i]).astype(np.int64)


@dataclass
class Neighbors:
    """Query images with the rows of a features folder nearest to each."""

    queries: list[str]
    pixels: np.ndarray  # uint8 (Q, side, side, 3): the queries after preprocessing
    truth: list[int | None]  # each query's class, where its location tells it
    distances: np.ndarray  # float64 (Q, k)
    rows: np.ndarray  # int64 (Q, k)
    features: Features

    def records(self) -> list[dict]:
        """Each query with its neighbors' files, classes and distances (for JSON)."""
        f = self.features
        return [{"query": query, "class": None if truth is None else f.names[truth],
                 "neighbors": neighbor_records(f, dists, rows)}
                for query, truth, dists, rows in zip(self.queries, self.truth, self.distances, self.rows,
                                                     strict=True)]


def neighbor_records(features: Features, distances: np.ndarray, rows: np.ndarray) -> list[dict]:
    """One query's neighbors, nearest first: rank, file, row, label, class and distance of each (for JSON)."""
    f = features
    return [{"rank": rank, "file": f.files[row], "row": int(row), "label": int(f.labels[row]),
             "class": f.names[f.labels[row]], "distance": float(d)}
            for rank, (d, row) in enumerate(zip(distances, rows, strict=True), 1)]


def open_features(features: str | Path, path: str, device: str = "auto") -> tuple[Features, Network]:
    """A features folder and the network of checkpoint `path` that made it, in the precision it was made in;
    another network's features raise InputError."""
    store = Features(features)
    net = load_network(path, device, store.meta["precision"])
    if weights_digest(net.model) != store.meta["weights"]:
        raise InputError(f"{store.path} holds the features of another network ({store.meta['checkpoint']}), "
                         f"not of {net.info['path']}")
    return store, net


def find_neighbors(path: str, queries: list[str], features: str | Path, k: int = NeighborsConfig.k,
                   chunk: int = NeighborsConfig.chunk, device: str = NeighborsConfig.device) -> Neighbors:
    """`alexnet neighbors`: the k images of a features folder whose fc7 features are nearest (Euclidean) to
    each query image's (§6.1, Figure 4); a query that is itself in the folder is left out of its list."""
    store, net = open_features(features, path, device)
    pixels = np.stack([net.preprocess(q) for q in queries])
    where = {f: i for i, f in enumerate(store.files)}
    exclude = [where.get(os.path.abspath(q), -1) for q in queries]
    distances, rows = nearest(store.features, fc7(net, torch.from_numpy(pixels), store.meta["crop"]), k, chunk,
                              store.bad, exclude)
    return Neighbors(list(queries), pixels, [known_class(q, store.meta["classes"]) for q in queries], distances,
                      rows, store)
