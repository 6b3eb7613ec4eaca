"""`alexnet serve`: the paper's Figure 4 (§6.1) as a web page and a JSON API, on FastAPI and uvicorn.

    GET  /                 the page (assets/serve.html, self-contained): choose or drop a photo, see its top-5 bars
                           and, with a features folder, its nearest training images
    POST /predict          an image, as the multipart field "image" or as the raw body (image/*): its top-5 classes
                           with probabilities (?crops=10: the ten patches of §4.1, the default; ?crops=1: the
                           centre patch) and, with a features folder, its ?k=6 nearest images by fc7 distance
    GET  /neighbors/{row}  the centre crop of row `row` of the features folder, as JPEG (its own files only)
    GET  /health, /info    liveness and the queue; the network, its classes and its measured error
    GET  /docs             the OpenAPI page (/openapi.json)

Requests that arrive together run as one batch (batching.Batcher) in a thread of its own. A photo takes its place
in the batcher's queue before it is decoded, so a full queue is answered 503 at once; at most one photo per core
is decoded at a time (fewer where --max-pixels images would not fit in DECODE_MEMORY), by threads of their own,
and one declaring more than --max-pixels pixels is refused from its header. Every bad request is answered with a
4xx status and {"error": "one line"}, and the server goes on; what a connection may hold is in connections.py.
"""

import asyncio
import contextlib
import errno
import io
import logging
import math
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from . import __version__
from .batching import Batcher, BusyError
from .connections import LOCAL_HOSTS, BodyLimit, HostCheck, allowed_hosts, deadline
from .data.folders import MAX_PIXELS, TOO_MANY_PIXELS, BadImageError
from .draw import center
from .errors import Failure, InputError
from .evaluate import probabilities, top5, top5_records
from .features import Features, fc7
from .inference import Network, load_network
from .neighbors import nearest, neighbor_records, open_features
from .options import AMOUNT, COUNT, PORT, RATE, argument, option, up_to
from .run_folder import METRICS, read_metrics
from .runtime import PRECISIONS

FIELD = "image"  # the multipart field of the photo
RAW_TYPES = ("image/", "application/octet-stream")  # content types of a raw image body
DECODE_MEMORY = 2**30  # bytes that the images being decoded at once may take, at --max-pixels each
BYTES_PER_PIXEL = 8  # the most a pixel takes while decoded and made RGB (RGBA's 4 and RGB's 3, rounded up)
log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """`alexnet serve`'s arguments."""

    checkpoint: str = argument("a checkpoint file or run folder")
    features: str | None = option(None, "a folder made by `alexnet features`: show nearest images too")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "port to listen on", accepts=PORT)
    device: str = option("auto", "auto, cpu, cuda, ...")
    precision: str = option("auto", "arithmetic precision (auto on a CPU: the faster at batches of --max-batch; "
                                    "with --features: the features' own)", choices=PRECISIONS)
    max_batch: int = option(16, "photos per forward pass at most (1: no batching)", accepts=up_to(1024))
    max_wait: float = option(5.0, "milliseconds a batch waits for more photos after its first", accepts=AMOUNT,
                             metavar="MS")
    queue: int = option(64, "photos waiting at most, those being decoded included; beyond, 503 (busy)",
                        accepts=COUNT)
    max_mb: float = option(20.0, "largest request body in MiB; beyond, 413", accepts=RATE)
    max_pixels: int = option(50_000_000, "largest image in pixels (width × height, read from its header before "
                                         "decoding); beyond, 400", accepts=up_to(MAX_PIXELS))
    timeout: float = option(30.0, "seconds a connection has to send a whole request (headers and body); beyond, "
                                  "it is closed", accepts=RATE)
    allow_hosts: str | None = option(None, f"Host names to answer besides {', '.join(LOCAL_HOSTS)} and --host, "
                                  "comma-separated (*: any); others get 400", metavar="NAMES")


@dataclass
class Job:
    """One decoded photo and what is asked of it."""

    pixels: np.ndarray  # uint8 (side, side, 3), after the preprocessing of §2 (Network.preprocess)
    crops: int  # 1 or 10
    k: int  # neighbors, with a features folder


class Predictor:
    """The network, and a features folder if given, behind the server: batches of decoded photos in, JSON-ready
    answers out (in the batcher's thread)."""

    def __init__(self, net: Network, features: Features | None = None):
        self.net, self.features = net, features
        # answers name a neighbor's file within the folder the images share, not by its path on this machine
        self.root = os.path.commonpath([os.path.dirname(p) for p in features.files]) if features else ""

    def run(self, jobs: list[Job]) -> list[dict]:
        """Top-5 classes of each photo, and its k nearest rows of the features folder (one pass for the batch)."""
        pixels = torch.from_numpy(np.stack([job.pixels for job in jobs]))
        answers: list[dict] = [{} for _ in jobs]
        for crops in sorted({job.crops for job in jobs}):
            mine = [i for i, job in enumerate(jobs) if job.crops == crops]
            probs = probabilities([self.net], pixels[mine], crops).cpu()
            for i, top in zip(mine, top5(probs, self.net.names), strict=True):
                answers[i] = {"crops": crops, "top5": top5_records(top)}
        f = self.features
        if f is not None:
            distances, rows = nearest(f.features, fc7(self.net, pixels, f.meta["crop"]), max(j.k for j in jobs),
                                      skip=f.bad)
            for answer, job, d, r in zip(answers, jobs, distances, rows, strict=True):
                answer["neighbors"] = [{**n, "file": shown_name(os.path.relpath(n["file"], self.root)),
                                        "image": f"/neighbors/{n['row']}"}
                                       for n in neighbor_records(f, d[:job.k], r[:job.k])]
        return answers

    def thumbnail(self, row: int) -> bytes | None:
        """The centre crop of a features row as JPEG; None for a row that is not there or cannot be read."""
        f = self.features
        image = f.image(row) if f is not None and 0 <= row < len(f) else None
        if image is None:
            return None
        out = io.BytesIO()
        Image.fromarray(center(image, f.meta["crop"])).save(out, "JPEG", quality=90)
        return out.getvalue()

    def info(self) -> dict:
        """The network, its classes and its measured validation error, and the features folder."""
        info, f = self.net.info, self.features
        return {"checkpoint": Path(info["path"]).name, "arch": self.net.record.arch, "crop": self.net.crop,
                "device": str(self.net.device), "precision": self.net.precision, "epoch": info.get("epoch"),
                "validation": validation(info), "classes": [{"wnid": wnid, "name": name} for wnid, name in
                                                            zip(self.net.classes, self.net.names, strict=True)],
                "features": None if f is None else {"folder": f.path.name, "split": f.meta["split"], "images": len(f)}}


def shown_name(name: str) -> str:
    """A file name as JSON's UTF-8 can hold it: a byte that is not UTF-8 (kept by os.fsdecode as a lone surrogate)
    shown as U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def validation(info: dict) -> dict | None:
    """A checkpoint's validation error (centre crop) at its epoch: from metrics.jsonl beside it where the run
    folder has one with that epoch's row (a line that is not one, as a run being written may leave, is passed
    over), else the best top-1 error it records; None for a network never validated."""
    for row in read_metrics(Path(info["path"]).with_name(METRICS)):
        with contextlib.suppress(TypeError, KeyError, AttributeError):
            if row["epoch"] == info.get("epoch"):
                return {"top1_error": row["val_top1"], "top5_error": row["val_top5"], "images": row["val_images"]}
    best = info.get("best", math.inf)
    return {"top1_error": best} if math.isfinite(best) else None


BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [FIELD],
                                       "properties": {FIELD: {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}
ERRORS = {400: "not a usable image (empty, not an image, truncated, corrupt, too many pixels), a bad form or a "
               "Host that is not this server's",
          413: "the request body is over the size limit", 415: "a content type other than multipart or image/*",
          422: "a missing field or a bad query option", 503: "the queue is full: try again shortly"}


def decoders(max_pixels: int) -> int:
    """Photos decoded at once: one per core this process may use, and no more than DECODE_MEMORY holds."""
    return max(1, min(len(os.sched_getaffinity(0)), DECODE_MEMORY // (BYTES_PER_PIXEL * max_pixels)))


def make_app(predictor: Predictor, max_batch: int = ServeConfig.max_batch, max_wait: float = ServeConfig.max_wait,
             queue: int = ServeConfig.queue, max_mb: float = ServeConfig.max_mb,
             max_pixels: int = ServeConfig.max_pixels, hosts: frozenset[str] = allowed_hosts(ServeConfig.host)
             ) -> FastAPI:
    """The web application of a predictor: requests batched by up to `max_batch` (waiting up to `max_wait`
    milliseconds for more), at most `queue` waiting (then 503), bodies up to `max_mb` MiB (then 413), images up to
    `max_pixels` (then 400), asked for by one of the Host names `hosts` (then 400)."""
    batcher = Batcher(predictor.run, max_batch, max_wait / 1000, queue)
    max_bytes = round(max_mb * 2**20)
    page = (resources.files("alexnet") / "assets" / "serve.html").read_text()
    workers = decoders(max_pixels)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as app.state.decoding:
            async with batcher.running():
                yield

    app = FastAPI(title="alexnet serve", version=__version__, lifespan=lifespan,
                  description="AlexNet's top-5 classes of a photo and its nearest training images in fc7 space "
                              "(Krizhevsky et al. 2012, §6.1, Figure 4).")
    app.add_middleware(BodyLimit, limit=max_bytes)
    app.add_middleware(HostCheck, hosts=hosts)  # the outer one: a stranger's Host is refused first

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, err: ClientDisconnect) -> Response:
        client = request.client
        log.warning("%s %s: the client%s left before its request was read", request.method, request.url.path,
                    f" at {client.host}:{client.port}" if client else "")
        return Response(status_code=400)  # no one is there to read it

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": err.detail}, err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_option(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}"
                                                for e in err.errors())}, 422)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return JSONResponse({"error": "internal error (the server's log has the details)"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", summary="Liveness, and the requests waiting for a batch")
    async def health() -> dict:
        return {"status": "ok", "queued": batcher.queued}

    @app.get("/info", summary="The network, its classes and measured validation error, the server's settings")
    async def info() -> dict:
        return {**predictor.info(), "batching": {"max_batch": batcher.max_batch, "max_wait_s": batcher.max_wait,
                                                 "max_queue": batcher.max_queue}, "max_bytes": max_bytes,
                "max_pixels": max_pixels, "decoders": workers}

    @app.post("/predict", summary="Top-5 classes of a photo, and its nearest training images",
              openapi_extra={"requestBody": BODY}, responses={code: {"description": d} for code, d in ERRORS.items()})
    async def predict(request: Request, crops: Annotated[int, Query(
                          description="10: average over the ten patches of §4.1; 1: the centre patch",
                          json_schema_extra={"enum": [1, 10]})] = 10,
                      k: Annotated[int, Query(ge=1, le=100, description="neighbors (with a features folder)")] = 6
                      ) -> dict:
        if crops not in (1, 10):
            raise HTTPException(422, f"crops: 1 (the centre patch) or 10 (the ten patches), not {crops}")
        data, name = await _upload(request)

        async def decode() -> Job:
            try:
                pixels = await asyncio.get_running_loop().run_in_executor(
                    request.app.state.decoding, predictor.net.preprocess, io.BytesIO(data), max_pixels)
            except BadImageError as err:
                limit = f" (at most {max_pixels:,})" if err.reason == TOO_MANY_PIXELS else ""
                raise HTTPException(400, f"{name} is not a usable image: {err.reason}{limit}") from None
            return Job(pixels, crops, k)

        try:
            answer = await batcher.make_and_submit(decode)
        except BusyError as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from None
        return {"image": name, **answer}

    @app.get("/neighbors/{row}", summary="The centre crop of a row of the features folder, as JPEG",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "none"}})
    async def neighbor(row: int) -> Response:
        jpeg = await run_in_threadpool(predictor.thumbnail, row)
        if jpeg is None:
            raise HTTPException(404, f"no readable image at row {row} of the features folder")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


async def _upload(request: Request) -> tuple[bytes, str]:
    """The photo's bytes and a name for messages, from the multipart field or the raw body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get(FIELD)
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, f"the form has no file field {FIELD!r}")
            return await upload.read(), upload.filename or f"the field {FIELD!r}"
    if kind.startswith(RAW_TYPES):
        return await request.body(), "the request body"
    raise HTTPException(415, f"content type {kind or '(none)'!r}: send multipart/form-data with the file field "
                             f"{FIELD!r}, or the image itself as image/* or application/octet-stream")


def listenable(host: str, port: int) -> None:
    """Raise InputError unless this process can listen at host:port (an address it has), Failure where the port is
    taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as err:
        said = f"--host {host} --port {port}: cannot listen there ({err.strerror or err})"
        raise (Failure if err.errno == errno.EADDRINUSE else InputError)(said) from None


def server(app: FastAPI, host: str, port: int, timeout: float = ServeConfig.timeout, **settings) -> uvicorn.Server:
    """uvicorn's server of `app` at host:port, closing a connection whose request does not arrive whole within
    `timeout` seconds; `settings`: more of uvicorn.Config's."""
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, http=deadline(timeout), access_log=False,
                                         **settings))


def serve(config: ServeConfig) -> None:
    """`alexnet serve`: load the checkpoint (and the features folder, whose precision it then computes in; else
    "auto" is the faster at batches of --max-batch) and serve the page and the API at http://host:port/ until
    interrupted."""
    host, port = config.host, config.port
    listenable(host, port)
    store, net = (open_features(config.features, config.checkpoint, config.device) if config.features else
                  (None, load_network(config.checkpoint, config.device, config.precision, config.max_batch)))
    hosts = allowed_hosts(host, config.allow_hosts)
    app = make_app(Predictor(net, store), config.max_batch, config.max_wait, config.queue, config.max_mb,
                   config.max_pixels, hosts)
    print(f"serving {net.info['path']} ({net.record.arch}, {len(net.classes)} classes, {net.device}, "
          f"{net.precision}) at http://{host}:{port}/ (Host names: {', '.join(sorted(hosts))})", flush=True)
    server(app, host, port, config.timeout, log_level="info").run()
