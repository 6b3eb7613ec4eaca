"""`alexnet serve`: the API against `alexnet predict` and `alexnet neighbors`, the batcher, every bad request, the
page in a real browser."""

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import bomb_png, mutants, one_line_error, peak_growth, photo_folder
from fastapi.testclient import TestClient
from PIL import Image

from alexnet import checkpoint, inference, serve
from alexnet.batching import Batcher, BusyError
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.connections import allowed_hosts, host_name
from alexnet.data.folders import DEFAULT_DATA, MAX_PIXELS, preprocess
from alexnet.data.store import prepare
from alexnet.draw import center
from alexnet.evaluate import predict
from alexnet.features import extract_features
from alexnet.neighbors import find_neighbors, open_features
from alexnet.serve import DECODE_MEMORY, Job, Predictor, ServeConfig, decoders, make_app, validation
from alexnet.training import Trainer, open_data

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
LOCAL = "http://127.0.0.1:8000"  # a Host the server answers to


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos in ImageNet's folder layout: 4 classes, 5 training and 2 validation images each."""
    return photo_folder(tmp_path_factory.mktemp("photos"), train=5, val=2)


@pytest.fixture(scope="module")
def ckpt(photos, tmp_path_factory):
    """A freshly initialized network saved as a real checkpoint, and the fc7 features of its 20 training images."""
    out = tmp_path_factory.mktemp("ckpt")
    store = prepare(photos, out / "store", workers=2, progress=False).path
    cfg = TrainConfig(data=str(store), epochs=1, progress=False)
    checkpoint.save(out / "net.pt", Trainer(cfg, open_data(cfg), out).snapshot())
    extract_features(str(out / "net.pt"), str(store), out / "features", "train", precision="fp32", progress=False)
    yield out / "net.pt", out / "features"
    shutil.rmtree(out)  # about 460 MB: freed when the module is done


@pytest.fixture(scope="module")
def predictor(ckpt):
    features, net = open_features(ckpt[1], str(ckpt[0]), "cpu")
    return Predictor(net, features)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(make_app(predictor, max_mb=1), base_url=LOCAL) as client:
        yield client


def query(photos) -> Path:
    return sorted((photos / "val").glob("*/*.JPEG"))[0]


def post(client, data: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    return client.post("/predict", content=data, headers={"content-type": content_type}, params=params)


def test_predict_answers_as_alexnet_predict_does(client, ckpt, photos):
    photo = query(photos)
    for crops in (1, 10):
        want = predict(str(ckpt[0]), [str(photo)], crops, "cpu", "fp32").top5()[0][1]
        raw = post(client, photo.read_bytes(), crops=crops)
        form = client.post("/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                           params={"crops": crops})
        assert raw.status_code == form.status_code == 200, (raw.text, form.text)
        assert form.json()["image"] == photo.name and raw.json()["crops"] == crops
        for answer in (raw.json(), form.json()):
            assert [t["class"] for t in answer["top5"]] == [name for name, _ in want]
            assert np.allclose([t["probability"] for t in answer["top5"]], [p for _, p in want], atol=1e-5)
    assert post(client, photo.read_bytes()).json()["crops"] == 10  # §4.1's ten patches unless told


def test_neighbors_are_those_of_alexnet_neighbors_with_their_thumbnails(client, ckpt, photos, predictor):
    photo = query(photos)
    want = find_neighbors(str(ckpt[0]), [str(photo)], ckpt[1], k=3, device="cpu").records()[0]["neighbors"]
    got = post(client, photo.read_bytes(), k=3, crops=1).json()["neighbors"]
    assert [n["row"] for n in got] == [n["row"] for n in want] and len(got) == 3
    assert np.allclose([n["distance"] for n in got], [n["distance"] for n in want], rtol=1e-4)
    assert [{k: v for k, v in n.items() if k not in ("distance", "image")} for n in got] == \
        [{**{k: v for k, v in n.items() if k != "distance"}, "file": os.path.relpath(n["file"], photos / "train")}
         for n in want]  # within the folder of the features' images, not by its path on the server
    thumb = client.get(got[0]["image"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    pixels = np.asarray(Image.open(io.BytesIO(thumb.content)), np.float64)
    crop = center(predictor.features.image(got[0]["row"]), predictor.net.crop)
    assert pixels.shape == crop.shape and np.abs(pixels - crop).mean() < 4  # the row's centre crop, as JPEG
    for row in ("20", "-1", "999999"):  # only the features' own images, by row
        assert client.get(f"/neighbors/{row}").status_code == 404
    assert client.get("/neighbors/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)


def test_a_mixed_batch_answers_each_photo_as_it_would_be_answered_alone(predictor, photos):
    pixels = [preprocess(p) for p in sorted((photos / "val").glob("*/*.JPEG"))[:2]]
    jobs = [Job(pixels[0], 1, 3), Job(pixels[1], 10, 2), Job(pixels[0], 10, 5)]
    together = predictor.run(jobs)
    for job, answer in zip(jobs, together, strict=True):
        (alone,) = predictor.run([job])
        assert answer["crops"] == job.crops and len(answer["neighbors"]) == job.k
        assert [t["class"] for t in answer["top5"]] == [t["class"] for t in alone["top5"]]
        assert np.allclose([t["probability"] for t in answer["top5"]], [t["probability"] for t in alone["top5"]],
                           atol=1e-5)
        assert [n["row"] for n in answer["neighbors"]] == [n["row"] for n in alone["neighbors"]]


def test_health_info_openapi_and_a_page_without_external_assets(client):
    assert client.get("/health").json() == {"status": "ok", "queued": 0}
    info = client.get("/info").json()
    assert info["arch"] == "paper" and len(info["classes"]) == 4 and info["classes"][0]["wnid"] == "n01440764"
    assert info["features"]["images"] == 20 and info["validation"] is None and info["batching"]["max_batch"] == 16
    spec = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert set(spec["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert {p["name"] for p in spec["parameters"]} == {"crops", "k"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for external in ("http://", "https://", "//cdn", "@import"):
        assert external not in page.text


def test_validation_is_read_from_the_run_folder_or_the_checkpoint(tmp_path):
    rows = [{"epoch": e, "val_top1": 0.5 / e, "val_top5": 0.2 / e, "val_images": 200} for e in (1, 2)]
    lines = [json.dumps(rows[0]), "[1, 2]", '{"epoch": 2}', json.dumps(rows[1]), '{"epoch": 3, "val_to']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))  # with lines that are not rows, and a cut last one
    assert validation({"path": str(tmp_path / "best.pt"), "epoch": 2, "best": 0.25}) == \
        {"top1_error": 0.25, "top5_error": 0.1, "images": 200}
    assert validation({"path": str(tmp_path / "best.pt"), "epoch": 3, "best": 0.3}) == {"top1_error": 0.3}
    assert validation({"path": str(tmp_path / "x" / "a.pt"), "epoch": 2, "best": 0.25}) == {"top1_error": 0.25}
    assert validation({"path": str(tmp_path / "x" / "a.pt"), "epoch": 0, "best": float("inf")}) is None


def png_bomb(width: int, height: int) -> bytes:
    """A small PNG whose header claims width×height pixels: a decompression bomb as the decoder first sees it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * (1 + width // 8) * 8)  # a few rows of a 1-bit image; the rest is missing
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


PHOTO = sorted((DEFAULT_DATA / "val").glob("*/*.JPEG"))[0]  # a built-in photo


def bad_requests(jpeg: bytes) -> dict[str, tuple[dict, int, str]]:
    """Each kind of bad request: the arguments of client.post, the status it must get, a part of its message."""
    side = int(MAX_PIXELS ** 0.5) + 1
    image = {"content-type": "image/jpeg"}
    return {
        "empty body": ({"content": b"", "headers": image}, 400, "empty file"),
        "not an image": ({"content": b"plain text, no picture\n" * 20, "headers": {"content-type": "image/png"}},
                         400, "not an image"),
        "truncated JPEG": ({"content": jpeg[:len(jpeg) // 2], "headers": image}, 400, "truncated"),
        "decompression bomb": ({"content": png_bomb(side, side), "headers": {"content-type": "image/png"}}, 400,
                               "too many pixels"),
        "over the size limit": ({"content": jpeg + bytes(2**20), "headers": image}, 413, "over the limit of 1 MiB"),
        "over the size limit, chunked": ({"content": [jpeg, bytes(2**20)], "headers": image}, 413, "over the limit"),
        "wrong content type": ({"content": jpeg, "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
        "no content type": ({"content": jpeg}, 415, "(none)"),
        "missing field": ({"files": {"photo": ("a.jpg", jpeg, "image/jpeg")}}, 422, "no file field 'image'"),
        "a text field, not a file": ({"files": {"image": (None, "a.jpg")}}, 422, "no file field 'image'"),
        "a form without its boundary": ({"content": jpeg, "headers": {"content-type": "multipart/form-data"}}, 400,
                                        "boundary"),
        "bad crops": ({"content": jpeg, "headers": image, "params": {"crops": 3}}, 422, "crops"),
        "bad k": ({"content": jpeg, "headers": image, "params": {"k": 0}}, 422, "k"),
    }


BAD = bad_requests(PHOTO.read_bytes())


@pytest.mark.parametrize("case", BAD)
def test_a_bad_request_is_a_4xx_json_error_and_the_next_request_is_served(client, case):
    kwargs, status, fragment = BAD[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert fragment in error and "\n" not in error and "Traceback" not in error
    assert post(client, PHOTO.read_bytes(), crops=1).status_code == 200


def batches(max_batch: int, max_wait: float, arrivals: list[float], max_queue: int = 64) -> list[list[int]]:
    """The batches a Batcher makes of items 0, 1, ... submitted after `arrivals` seconds (from the first)."""
    seen = []

    def run(items: list[int]) -> list[int]:
        seen.append(items)
        return [2 * i for i in items]

    async def main() -> list[int]:
        batcher = Batcher(run, max_batch, max_wait, max_queue)

        async def one(i: int) -> int:
            await asyncio.sleep(arrivals[i])
            return await batcher.submit(i)

        async with batcher.running():
            return await asyncio.gather(*(one(i) for i in range(len(arrivals))))

    assert asyncio.run(main()) == [2 * i for i in range(len(arrivals))]
    return seen


def test_the_batcher_runs_what_arrives_together_as_one_batch_of_at_most_max_batch():
    assert batches(4, 0.5, [0] * 10) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches(2, 5.0, [0, 0.05]) == [[0, 1]]  # the second came within the wait: a full batch at once
    assert batches(2, 0.0, [0, 0.05]) == [[0], [1]]
    assert batches(1, 5.0, [0, 0, 0]) == [[0], [1], [2]]  # batching off


def test_the_batcher_runs_in_a_thread_of_its_own_refuses_beyond_its_queue_and_survives_errors():
    gate, entered, threads = threading.Event(), threading.Event(), []

    def run(items: list[int]) -> list[int]:
        threads.append(threading.get_ident())
        entered.set()
        gate.wait(10)
        if items == [13]:
            raise ValueError("unlucky")
        return items

    async def main() -> None:
        batcher = Batcher(run, max_batch=1, max_wait=0, max_queue=2)
        async with batcher.running():
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
            waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
            await asyncio.sleep(0)
            assert batcher.queued == 2
            with pytest.raises(BusyError, match="2 requests are waiting"):
                await batcher.submit(3)
            gate.set()
            assert await asyncio.gather(first, *waiting) == [0, 1, 2]
            with pytest.raises(ValueError, match="unlucky"):
                await batcher.submit(13)
            assert await batcher.submit(4) == 4
        assert threading.get_ident() not in threads and len(set(threads)) == 1

    asyncio.run(main())


def beyond_a_full_queue(predictor, monkeypatch, **params) -> httpx.Response:
    """The answer to a third photo while, with a queue of one and batches of one held, a first runs and a second
    waits; then the batches are let go, and the first two, and a fourth, must be answered 200."""
    gate, entered, run = threading.Event(), threading.Event(), predictor.run

    def slow(jobs):
        entered.set()
        gate.wait(30)
        return run(jobs)

    monkeypatch.setattr(predictor, "run", slow)
    data = PHOTO.read_bytes()
    with TestClient(make_app(predictor, max_batch=1, queue=1), base_url=LOCAL) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, client, data, **params)
        assert entered.wait(30)
        second = pool.submit(post, client, data, **params)
        deadline = time.monotonic() + 30
        while client.get("/health").json()["queued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = post(client, data, **params)
        gate.set()
        assert first.result().status_code == second.result().status_code == 200
        assert post(client, data, **params).status_code == 200  # the server goes on
    return busy


def test_a_full_queue_answers_503_and_the_server_goes_on(predictor, monkeypatch):
    busy = beyond_a_full_queue(predictor, monkeypatch, crops=1)
    assert busy.status_code == 503 and "waiting already" in busy.json()["error"]
    assert busy.headers["retry-after"] == "1"


def test_auto_precision_is_the_faster_at_the_servers_max_batch(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing measured before
    timed = []

    def seconds(net, precision, batch):  # bf16 gaining on fp32 with the batch, as on AVX512_BF16 CPUs
        timed.append(batch)
        return {"fp32": 1.0 * batch, "bf16": 4.0 + 0.5 * batch}[precision]

    monkeypatch.setattr(inference, "_seconds", seconds)
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: None)
    for max_batch, chosen in ((1, "fp32"), (16, "bf16")):
        port = free_port()
        main(["serve", str(ckpt[0]), "--max-batch", str(max_batch), "--port", str(port)])
        assert f"cpu, {chosen}) at http://127.0.0.1:{port}/ (Host names: " in capsys.readouterr().out
    assert set(timed) == {1, 16}


def test_bad_command_line_input_is_one_line_and_status_2_a_port_taken_status_1(ckpt, tmp_path, capsys):
    for argv, fragment in ((["serve", str(tmp_path / "missing.pt")], "no checkpoint at"),
                           (["serve", str(ckpt[0]), "--features", str(tmp_path)], "is not a features folder"),
                           (["serve", str(ckpt[0]), "--port", "99999"], "expected a port number from 1 to 65535"),
                           (["serve", str(ckpt[0]), "--max-pixels", "100000000"], "from 1 to 89478485"),
                           (["serve", str(ckpt[0]), "--timeout", "0"], "a finite number above 0"),
                           (["serve", str(ckpt[0]), "--host", "192.0.2.1"], "--host 192.0.2.1 --port 8000: cannot")):
        one_line_error(capsys, argv, fragment)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        one_line_error(capsys, ["serve", str(ckpt[0]), "--port", port], f"--port {port}: cannot listen there", 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ckpt):
    """`alexnet serve` with the features, in a process of its own, on a free port of 127.0.0.1."""
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "serve", str(ckpt[0]), "--features", str(ckpt[1]),
                             "--port", url.rsplit(":", 1)[1], "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the server did not start:\n{proc.communicate()[0][-3000:]}")
    yield url
    proc.terminate()
    proc.wait(30)
    proc.stdout.close()


def test_the_real_server_answers_bad_requests_and_serves_the_next(server):
    for case in ("truncated JPEG", "decompression bomb", "wrong content type", "missing field"):
        kwargs, status, fragment = BAD[case]
        r = httpx.post(server + "/predict", timeout=120, **kwargs)
        assert r.status_code == status and fragment in r.json()["error"]
    big = httpx.post(server + "/predict", content=bytes(21 * 2**20), headers={"content-type": "image/jpeg"})
    assert big.status_code == 413 and "20 MiB" in big.json()["error"]  # the default limit
    ok = httpx.post(server + "/predict", content=PHOTO.read_bytes(), headers={"content-type": "image/jpeg"},
                    timeout=120)
    assert ok.status_code == 200 and len(ok.json()["top5"]) == 4 and len(ok.json()["neighbors"]) == 6


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_the_page_in_headless_chromium_shows_the_apis_top1_and_the_neighbors(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=900,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        driver.get(server + "/")
        WebDriverWait(driver, 60).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(PHOTO))

        def state(d) -> str:
            return d.find_element(By.TAG_NAME, "body").get_attribute("data-state")

        WebDriverWait(driver, 120).until(lambda d: state(d) in ("done", "error"))
        assert state(driver) == "done", driver.find_element(By.ID, "error").text
        shown = driver.find_element(By.ID, "top1").text
        thumbnails = driver.find_elements(By.CSS_SELECTOR, "#neighbors img")
        WebDriverWait(driver, 60).until(lambda d: all(d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in thumbnails))
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    answer = httpx.post(server + "/predict", files={"image": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")},
                        timeout=120).json()
    assert shown == answer["top5"][0]["class"] and len(thumbnails) == len(answer["neighbors"]) == 6
    for out in (tmp_path / "serve.png", *([Path(os.environ["ALEXNET_SCREENSHOT"])] if "ALEXNET_SCREENSHOT" in
                                          os.environ else [])):  # ALEXNET_SCREENSHOT=docs/serve.png: the README's
        out.write_bytes(png)
    assert Image.open(tmp_path / "serve.png").size[0] >= 800


# --- what a stranger can send: without a network (a photo's answer is its mean), the server around it -----------

class Plain:
    """A predictor without a network: what the server does around one, quickly."""

    features = None

    def __init__(self):
        self.net = types.SimpleNamespace(preprocess=self.preprocess)
        self.decoding = 0  # photos being decoded now
        self.most = 0  # at once, at most
        self.decoded = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def preprocess(self, image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        with self.lock:
            self.decoding += 1
            self.most = max(self.most, self.decoding)
            self.threads.add(threading.current_thread().name)
        try:
            return preprocess(image, 256, max_pixels)
        finally:
            with self.lock:
                self.decoding -= 1
                self.decoded += 1

    def run(self, jobs: list[Job]) -> list[dict]:
        return [{"crops": job.crops, "top5": [], "mean": float(job.pixels.mean())} for job in jobs]

    def info(self) -> dict:
        return {}


def test_an_image_over_max_pixels_is_a_400_from_its_header_before_it_is_decoded():
    plain = Plain()
    with TestClient(make_app(plain), base_url=LOCAL) as client:
        r = post(client, bomb_png(9000, 9900), "image/png")  # 10 KB, under PIL's own limit: 450 MB decoded
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "the request body is not a usable image: too many pixels (at most 50,000,000)"
        assert post(client, PHOTO.read_bytes()).status_code == 200
    assert ServeConfig.max_pixels == 50_000_000 and plain.most == 1
    with TestClient(make_app(Plain(), max_pixels=20_000), base_url=LOCAL) as client:
        assert "too many pixels" in post(client, PHOTO.read_bytes()).json()["error"]  # 500×375 = 187,500


def test_at_most_one_photo_per_core_is_decoded_at_once_by_threads_of_their_own(monkeypatch):
    plain, cores = Plain(), len(os.sched_getaffinity(0))
    decode, together, lock, inside = plain.preprocess, threading.Event(), threading.Lock(), [0, 0]  # now, most

    def held(*args):  # each photo held until as many as may be decoded at once are in, or for 5 s (a slow machine)
        with lock:
            inside[0] += 1
            inside[1] = max(inside)
            if inside[0] >= decoders(ServeConfig.max_pixels):
                together.set()
        together.wait(5)
        time.sleep(0.1)  # time for one more to come in, were it let
        try:
            return decode(*args)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(plain.net, "preprocess", held)
    with TestClient(make_app(plain), base_url=LOCAL) as client, ThreadPoolExecutor(cores + 4) as pool:
        answers = list(pool.map(lambda _: post(client, PHOTO.read_bytes()).status_code, range(cores + 4)))
    assert answers == [200] * (cores + 4)
    assert inside[1] == decoders(ServeConfig.max_pixels) == min(cores, 2)  # 1 GiB holds 2 at 50 megapixels
    assert {name.split("_")[0] for name in plain.threads} == {"decode"}
    assert decoders(10_000_000) == min(cores, DECODE_MEMORY // 80_000_000) and decoders(MAX_PIXELS) == 1


def test_a_full_queue_answers_503_with_retry_after_before_decoding(monkeypatch):
    plain = Plain()
    busy = beyond_a_full_queue(plain, monkeypatch)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert plain.decoded == 3  # of four photos: the one answered 503 was never decoded


def test_a_host_that_is_not_this_servers_name_is_a_400_in_one_line():
    app = make_app(Plain())
    for base in (LOCAL, "http://localhost:8000", "http://[::1]:8000", "http://127.0.0.1"):
        with TestClient(app, base_url=base) as client:
            assert client.get("/health").status_code == 200, base
    with TestClient(app, base_url="http://attacker.example:8000") as client:  # DNS rebinding: a page's own name
        r = client.get("/info")
        assert r.status_code == 400 and r.json()["error"].startswith("Host 'attacker.example' is not a name")
    assert allowed_hosts("0.0.0.0") == allowed_hosts("::") == {"127.0.0.1", "localhost", "[::1]"}
    assert allowed_hosts("192.168.1.5", "Box.lan, ") == {"127.0.0.1", "localhost", "[::1]", "192.168.1.5", "box.lan"}
    assert "[fe80::1]" in allowed_hosts("fe80::1")
    assert [host_name(h) for h in ("Example.org:80", "[::1]:8000", "[::1]", "")] == \
        ["example.org", "[::1]", "[::1]", ""]
    with TestClient(make_app(Plain(), hosts=allowed_hosts("0.0.0.0", "*")), base_url="http://any.where") as client:
        assert client.get("/health").status_code == 200


def test_no_answer_holds_an_absolute_path(client, photos):
    answers = [client.get("/info").json(), post(client, query(photos).read_bytes(), crops=1).json()]
    assert answers[0]["checkpoint"] == "net.pt" and answers[0]["features"]["folder"] == "features"

    def strings(value) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        return [s for v in value for s in strings(v)] if isinstance(value, list) else [value]

    assert [s for s in strings(answers) if isinstance(s, str) and (s.startswith(os.sep) or str(photos) in s)] == \
        ["/neighbors/" + str(n["row"]) for n in answers[1]["neighbors"]]  # the API's own paths only


@contextlib.contextmanager
def running(app, timeout: float = ServeConfig.timeout):
    """`app` served by uvicorn in a thread of this process, on a free port of 127.0.0.1 (its logs go to the root
    logger, which caplog reads); yields its URL."""
    port = free_port()
    srv = serve.server(app, "127.0.0.1", port, timeout, log_config=None, log_level="info")
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(30)


def closed_within(url: str, sent: bytes, seconds: float) -> bool:
    """Whether the server closes a connection that sent `sent` and then nothing, within `seconds`."""
    with socket.create_connection(url.removeprefix("http://").split(":")) as s:  # type: ignore[arg-type]
        s.sendall(sent)
        s.settimeout(seconds)
        try:
            while s.recv(4096):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def test_a_connection_that_sends_half_a_request_is_closed_after_the_timeout():
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n"
    with running(make_app(Plain()), timeout=1) as url:
        start = time.monotonic()
        for sent in (b"", b"GET /health HTTP/1.1\r\nHost: 127.", head, head + b"\r\n" + bytes(100)):
            assert closed_within(url, sent, 5), sent  # nothing, half the headers, no body, half the body
        assert time.monotonic() - start < 12
        ok = httpx.post(url + "/predict", content=PHOTO.read_bytes(), headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200  # a whole request in time is answered
        with httpx.Client() as keep:  # each request on a connection kept alive has a deadline of its own
            for _ in range(3):
                assert keep.get(url + "/health").status_code == 200
                time.sleep(0.6)


def test_a_client_that_leaves_mid_upload_is_one_log_line(caplog):
    head = "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {}\r\nContent-Length: 90000\r\n\r\n"
    form = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    with running(make_app(Plain())) as url:
        for sent in (head.format("image/jpeg").encode(), head.format("multipart/form-data; boundary=b").encode()
                     + form, head.format("image/jpeg").encode()):  # raw bodies and a form, each cut short
            with socket.create_connection(url.removeprefix("http://").split(":")) as s:
                s.sendall(sent + PHOTO.read_bytes()[:2000])
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        while sum("left before" in r.getMessage() for r in caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 3 and all("left before its request was read" in r.getMessage() and r.exc_info is None
                                   for r in lines), [r.getMessage() for r in lines]


def test_fuzz_every_damaged_upload_is_answered_200_or_400_in_one_line():
    statuses = Counter()
    with TestClient(make_app(Plain()), base_url=LOCAL) as client:  # an exception in the app fails the test

        def send_all() -> None:
            for data in mutants(300, seed=1):
                r = post(client, data, "image/png")
                assert r.status_code in (200, 400) and "\n" not in r.json().get("error", ""), r.text
                statuses[r.status_code] += 1

        assert peak_growth(send_all) < 400  # MiB
    assert statuses[200] and statuses[400] and sum(statuses.values()) == 300


def test_bombs_and_photos_together_memory_stays_bounded_and_every_photo_is_answered():
    bomb, photo = bomb_png(5000, 4000), PHOTO.read_bytes()  # 1 bit a pixel: 2 bytes once decoded (folders.py)
    answered, end = Counter(), time.monotonic() + 4

    async def client(data: bytes, url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            while time.monotonic() < end:
                r = await http.post(url + "/predict", content=data, headers={"content-type": "image/png"})
                if data is photo:
                    assert r.status_code == 200 or (r.status_code == 503 and r.headers["retry-after"]), r.text
                answered[data is photo, r.status_code] += 1

    app = make_app(Plain(), max_pixels=20_000_000, queue=16)
    with running(app) as url:
        async def together() -> None:
            await asyncio.gather(*(client(bomb, url) for _ in range(12)), *(client(photo, url) for _ in range(2)))

        growth = peak_growth(lambda: asyncio.run(together()))
    assert answered[True, 200] and answered[False, 200], answered  # photos and bombs both served
    assert growth < decoders(20_000_000) * 20_000_000 * 2 / 2**20 + 100, (growth, answered)  # MiB
