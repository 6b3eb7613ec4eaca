"""`alexnet download` and `alexnet import-torchvision --download`, offline: a local HTTP server (with Range
requests) serves small archives and a torchvision weights file made here."""

import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import one_line_error
from PIL import Image

from alexnet import checkpoint, cli
from alexnet import download as dl
from alexnet.data.folders import imagenet_classes
from alexnet.data.store import Store
from alexnet.errors import Failure, InputError
from alexnet.experiments import load_cifar

WNIDS = ("n01440764", "n02102040")
COLOURS = ((200, 40, 30), (30, 60, 210))
CUT = 20_000  # bytes the server sends before it drops the first connection, where a test asks it to


@dataclass
class Site:
    """What the test server serves and what it was asked for."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)  # each request's Range header
    honour_range: bool = True
    cut_after: int | None = None  # the next response stops after this many bytes of its body


class Handler(BaseHTTPRequestHandler):
    """GET with Range (bytes=N-) support, over HTTP/1.0: the connection closes after each response."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        site: Site = self.server.site
        site.ranges.append(self.headers.get("Range"))
        data = site.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match[1]) if match and site.honour_range else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if site.cut_after is not None:
            body, site.cut_after = body[:site.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def site():
    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.site = Site(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.site
    server.shutdown()
    server.server_close()
    thread.join()


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def imagenette(name: str = "imagenette2-160", train: int = 3, val: int = 1, noise: int = 0) -> dict[str, bytes]:
    """The files of a tiny Imagenette: name/train/<wnid>/*.JPEG, name/val/<wnid>/*.JPEG (and `noise` random bytes)."""
    files = {f"{name}/noisy_imagenette.csv": b"path,noisy_labels_0\n"}
    for wnid, colour in zip(WNIDS, COLOURS, strict=True):
        for split, count in (("train", train), ("val", val)):
            for i in range(count):
                files[f"{name}/{split}/{wnid}/{wnid}_{i}.JPEG"] = jpeg(colour)
    if noise:
        files[f"{name}/noise.bin"] = np.random.default_rng(0).bytes(noise)
    return files


def publish(monkeypatch, site: Site, name: str, data: bytes, layout: str = "imagenet", filename: str | None = None,
            digest: str | None = None, algorithm: str = "sha256") -> None:
    """Serve `data` as the archive of `name` and put it in the table with its size and checksum (or `digest`)."""
    filename = filename or f"{name}.tgz"
    site.files[f"/{filename}"] = data
    digest = digest or hashlib.new(algorithm, data).hexdigest()
    monkeypatch.setitem(dl.ARCHIVES, name, dl.Archive(f"{site.url}/{filename}", len(data), digest, layout, algorithm))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by path relative to it, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_complete_download_is_verified_and_unpacked(site, monkeypatch, tmp_path, capsys):
    files = imagenette()
    data = tar_gz([regular(n, d) for n, d in files.items()])
    publish(monkeypatch, site, "imagenette2-160", data)
    dst = tmp_path / "data"
    cli.main(["download", "imagenette2-160", str(dst), "--no-progress"])
    assert tree(dst) == {"imagenette2-160.tgz": data, **files}
    assert site.ranges == [None]
    assert capsys.readouterr().out == (f"imagenette2-160 is ready in {dst / 'imagenette2-160'}; "
                                       f"next: alexnet prepare {dst / 'imagenette2-160'} STORE\n")


def test_a_cut_connection_resumes_with_a_range_request(site, monkeypatch, tmp_path):
    data = tar_gz([regular(n, d) for n, d in imagenette(noise=3 * CUT).items()])
    publish(monkeypatch, site, "imagenette2-160", data)
    site.cut_after = CUT
    dst = tmp_path / "data"
    with pytest.raises(Failure, match=f"ended after {CUT} of {len(data)} bytes; run the same command again"):
        dl.download("imagenette2-160", dst, progress=False)
    assert tree(dst) == {"imagenette2-160.tgz.part": data[:CUT]}
    folder = dl.download("imagenette2-160", dst, progress=False)
    assert site.ranges == [None, f"bytes={CUT}-"]
    assert (dst / "imagenette2-160.tgz").read_bytes() == data and not (dst / "imagenette2-160.tgz.part").exists()
    assert (folder / "noise.bin").read_bytes() == np.random.default_rng(0).bytes(3 * CUT)


def test_a_server_that_ignores_range_starts_over(site, monkeypatch, tmp_path):
    data = tar_gz([regular(n, d) for n, d in imagenette(noise=3 * CUT).items()])
    publish(monkeypatch, site, "imagenette2-160", data)
    site.honour_range = False
    dst = tmp_path / "data"
    dst.mkdir()
    (dst / "imagenette2-160.tgz.part").write_bytes(b"x" * CUT)  # appended to, the file would not verify
    dl.download("imagenette2-160", dst, progress=False)
    assert site.ranges == [f"bytes={CUT}-"]
    assert (dst / "imagenette2-160.tgz").read_bytes() == data


def users_files(dst: Path) -> None:
    (dst / "imagenette2-160" / "train").mkdir(parents=True)
    (dst / "notes.txt").write_text("mine")
    (dst / "imagenette2-160" / "train" / "mine.JPEG").write_bytes(jpeg((1, 2, 3)))


def test_imagewoof_is_verified_by_its_published_md5(site, monkeypatch, tmp_path):
    files = imagenette("imagewoof2-160")
    data = tar_gz([regular(n, d) for n, d in files.items()])
    publish(monkeypatch, site, "imagewoof2-160", data, algorithm="md5")
    assert dl.download("imagewoof2-160", tmp_path / "ok", progress=False) == tmp_path / "ok" / "imagewoof2-160"
    assert tree(tmp_path / "ok") == {"imagewoof2-160.tgz": data, **files}
    wrong = hashlib.md5(data[:-1]).hexdigest()
    publish(monkeypatch, site, "imagewoof2-160", data, digest=wrong, algorithm="md5")
    with pytest.raises(Failure, match=f"does not match its published MD5 {wrong}: removed"):
        dl.download("imagewoof2-160", tmp_path / "bad", progress=False)
    assert list((tmp_path / "bad").iterdir()) == []


def test_a_checksum_mismatch_removes_only_its_own_download(site, monkeypatch, tmp_path):
    data = tar_gz([regular(n, d) for n, d in imagenette().items()])
    publish(monkeypatch, site, "imagenette2-160", data, digest=hashlib.sha256(b"another file").hexdigest())
    dst = tmp_path / "data"
    users_files(dst)
    before = tree(tmp_path)
    with pytest.raises(Failure) as caught:
        dl.download("imagenette2-160", dst, progress=False)
    message = str(caught.value)
    assert message == (f"{site.url}/imagenette2-160.tgz does not match its published SHA-256 "
                       f"{hashlib.sha256(b'another file').hexdigest()}: removed {dst / 'imagenette2-160.tgz.part'}, "
                       f"nothing else in {dst} was touched")
    assert tree(tmp_path) == before and site.ranges == [None]


def test_an_archive_already_there_that_differs_is_left_alone(site, monkeypatch, tmp_path):
    publish(monkeypatch, site, "imagenette2-160", b"the published bytes")
    dst = tmp_path / "data"
    dst.mkdir()
    (dst / "imagenette2-160.tgz").write_bytes(b"the user's own bytes")
    with pytest.raises(InputError, match="its size or SHA-256 differs\\): left as it is"):
        dl.download("imagenette2-160", dst, progress=False)
    assert tree(dst) == {"imagenette2-160.tgz": b"the user's own bytes"} and site.ranges == []


def link(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


MALICIOUS = {
    "dotdot": lambda tmp: [regular("imagenette2-160/../../outside/evil.txt", b"evil")],
    "absolute": lambda tmp: [regular(str(tmp / "outside" / "evil.txt"), b"evil")],
    "symlink": lambda tmp: [link("imagenette2-160/link", tarfile.SYMTYPE, "../../outside"),
                            regular("imagenette2-160/link/evil.txt", b"evil")],
    "hardlink": lambda tmp: [link("imagenette2-160/hard", tarfile.LNKTYPE, str(tmp / "outside" / "secret.txt"))],
    "device": lambda tmp: [device("imagenette2-160/null")],
}


@pytest.mark.parametrize("kind", MALICIOUS)
def test_a_malicious_archive_is_refused_whole(kind, site, monkeypatch, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    bad = MALICIOUS[kind](tmp_path)
    data = tar_gz([regular("imagenette2-160/train/n01440764/ok.JPEG", jpeg((9, 9, 9))), *bad])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert bad[0][0].name in tar.getnames()  # stored as written, "/" and all
    publish(monkeypatch, site, "imagenette2-160", data)
    dst = tmp_path / "data"
    with pytest.raises(InputError) as caught:
        dl.download("imagenette2-160", dst, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{dst / 'imagenette2-160.tgz'}: refused to unpack: member {bad[0][0].name!r} ")
    assert "\n" not in message
    assert tree(outside) == {"secret.txt": b"secret"} and tree(dst) == {"imagenette2-160.tgz": data}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outside"]


def cifar_batches(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Five training batches of two images (labels 0-9 in turn) and a test batch of three, as CIFAR-10 rows."""
    batches = {f"data_batch_{i}": (rng.integers(0, 256, (2, 3072), dtype=np.uint8), [2 * i - 2, 2 * i - 1])
               for i in range(1, 6)}
    batches["test_batch"] = rng.integers(0, 256, (3, 3072), dtype=np.uint8), [9, 0, 4]
    return batches


def cifar_archive(batches: dict[str, tuple[np.ndarray, list[int]]]) -> bytes:
    """CIFAR-10's python archive: cifar-10-batches-py/ with each batch a pickled dict, as Python 2 wrote it."""
    members = [(tarfile.TarInfo("cifar-10-batches-py"), None)]
    members[0][0].type = tarfile.DIRTYPE
    meta = {"num_cases_per_batch": 10000, "label_names": list(dl.CIFAR10_CLASSES), "num_vis": 3072}
    members.append(regular("cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2)))
    for name, (data, labels) in batches.items():
        batch = {"batch_label": f"{name} of 5", "labels": labels, "data": data,
                 "filenames": [f"image_{i}.png" for i in range(len(labels))]}
        members.append(regular(f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2)))
    members.append(regular("cifar-10-batches-py/readme.html", b"<html></html>"))
    return tar_gz(members)


def test_cifar10_becomes_class_folders_of_png(site, monkeypatch, tmp_path):
    batches = cifar_batches(np.random.default_rng(0))
    publish(monkeypatch, site, "cifar10", cifar_archive(batches), "cifar", "cifar-10-python.tar.gz")
    dst = tmp_path / "cifar10"
    assert dl.download("cifar10", dst, progress=False) == dst
    expected = {}
    for name, (data, labels) in batches.items():
        split = "test" if name == "test_batch" else "train"
        for row, label in zip(data, labels, strict=True):
            index = sum(1 for path in expected if path.startswith(split))
            expected[f"{split}/{dl.CIFAR10_CLASSES[label]}/{index:05d}.png"] = row.reshape(3, 32, 32).transpose(1, 2, 0)
    written = {str(p.relative_to(dst)) for p in dst.rglob("*.png")}
    assert written == set(expected)
    for path, image in expected.items():
        assert np.array_equal(np.asarray(Image.open(dst / path)), image), path
    train, test, classes = load_cifar(dst, cache=None, progress=False)  # what `alexnet experiment` reads
    assert classes == list(dl.CIFAR10_CLASSES)
    assert np.array_equal(train.labels, np.arange(10)) and sorted(test.labels.tolist()) == [0, 4, 9]
    assert np.array_equal(train.images[3], expected["train/cat/00003.png"])


def test_prepare_makes_a_store_of_the_unpacked_folder(site, monkeypatch, tmp_path):
    data = tar_gz([regular(n, d) for n, d in imagenette(train=3, val=1).items()])
    publish(monkeypatch, site, "imagenette2-160", data)
    folder = dl.download("imagenette2-160", tmp_path / "data", tmp_path / "store", progress=False)
    assert folder == tmp_path / "data" / "imagenette2-160"
    store = Store(tmp_path / "store")
    for split, count in (("train", 3), ("val", 1)):
        part = store.split(split)
        assert part.classes == list(WNIDS) and len(part) == 2 * count
        images = part.read(np.arange(len(part)))
        assert images.shape == (2 * count, 256, 256, 3)
        for image, label in zip(images, part.labels, strict=True):
            assert np.abs(image.reshape(-1, 3).mean(0) - COLOURS[label]).max() < 4


def test_bad_input_is_refused_before_any_request(site, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="unknown data set 'imagewoof3'"):
        dl.download("imagewoof3", tmp_path / "data")
    with pytest.raises(InputError, match="is a file, not a folder"):
        dl.download("imagenette2-160", tmp_path / "file")
    with pytest.raises(InputError, match="cifar10 is not prepared into a store"):
        dl.download("cifar10", tmp_path / "data", tmp_path / "store")
    assert site.ranges == [] and sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    monkeypatch.setitem(dl.ARCHIVES, "imagenette2-160", dl.Archive(f"{site.url}/gone.tgz", 10, "0" * 64, "imagenet"))
    with pytest.raises(Failure, match=f"could not download {site.url}/gone.tgz: HTTP Error 404"):
        dl.download("imagenette2-160", tmp_path / "data", progress=False)


def test_the_table_lists_the_published_archives():
    for name, archive in dl.ARCHIVES.items():
        assert archive.url.startswith("https://") and archive.algorithm == ("md5" if "woof" in name else "sha256")
        assert re.fullmatch(f"[0-9a-f]{{{2 * hashlib.new(archive.algorithm).digest_size}}}", archive.digest)
        assert archive.filename == ("cifar-10-python.tar.gz" if name == "cifar10" else f"{name}.tgz")
    assert [name for name in dl.ARCHIVES if "woof" in name] == ["imagewoof2", "imagewoof2-320", "imagewoof2-160"]
    assert dl.ARCHIVES["imagenette2-160"].url == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"


def alexnet(site: Site, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, dl.BASE_URL_VARIABLE: site.url}
    return subprocess.run([sys.executable, "-m", "alexnet", "download", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_checksum_mismatch_is_one_line_and_status_1(site, tmp_path):
    published = dl.ARCHIVES["imagenette2-160"]
    site.files["/imagenette2-160.tgz"] = bytes(published.size)  # the published size, other bytes
    dst = tmp_path / "data"
    users_files(dst)
    before = tree(dst)
    result = alexnet(site, "imagenette2-160", str(dst), "--no-progress")
    assert result.returncode == 1 and result.stdout == ""  # what came over the network: not the user's input
    assert result.stderr.splitlines() == [
        f"alexnet download: failed: {site.url}/imagenette2-160.tgz does not match its published SHA-256 "
        f"{published.digest}: removed {dst / 'imagenette2-160.tgz.part'}, nothing else in {dst} was touched"]
    assert tree(dst) == before and site.ranges == [None]


def test_cli_a_file_of_another_size_is_one_line_and_status_1(site, tmp_path):
    site.files["/cifar-10-python.tar.gz"] = cifar_archive(cifar_batches(np.random.default_rng(1)))
    result = alexnet(site, "cifar10", str(tmp_path / "cifar10"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"alexnet download: failed: {site.url}/cifar-10-python.tar.gz has {len(site.files['/cifar-10-python.tar.gz'])} "
        "bytes, not the published 170498071: nothing of it was kept"]
    assert tree(tmp_path) == {}


def test_a_link_already_in_the_destination_does_not_lead_the_unpacking_out_of_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dst = tmp_path / "data"
    dst.mkdir()
    (dst / "imagenette2-160").symlink_to(outside)  # left there by someone, or an earlier archive's link
    archive = tmp_path / "a.tgz"
    archive.write_bytes(tar_gz([regular("imagenette2-160/train/n01440764/ok.JPEG", jpeg((9, 9, 9)))]))
    with pytest.raises(InputError, match="would be written through a link in .* that leads out of it"):
        dl.extract(archive, dst, progress=False)
    assert not any(outside.iterdir())  # nothing written where the link leads
    (dst / "imagenette2-160").unlink()
    (dst / "inside").mkdir()
    (dst / "imagenette2-160").symlink_to(dst / "inside")  # a link that stays inside is followed
    dl.extract(archive, dst, progress=False)
    assert (dst / "inside" / "train" / "n01440764" / "ok.JPEG").is_file()


@pytest.fixture(scope="module")
def published_weights() -> tuple[bytes, dict]:
    """torchvision alexnet()'s state dict as a .pth file's bytes (full size: 233 MiB), with weights made here."""
    torch.manual_seed(0)
    state = torchvision.models.alexnet().state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def serve_weights(site: Site, monkeypatch, data: bytes, prefix: str) -> str:
    """Serve `data` under the name torch.hub's hash check reads (`prefix`: the hash's first hex digits), as
    the URL the import fetches; torch.hub's cache in the test's folder."""
    name = f"alexnet-owt-{prefix}.pth"
    site.files[f"/{name}"] = data
    monkeypatch.setenv("ALEXNET_TORCHVISION_URL", f"{site.url}/{name}")
    return name


def test_torchvision_weights_are_fetched_hash_checked_and_imported(site, monkeypatch, tmp_path, capsys,
                                                                   published_weights):
    data, state = published_weights
    digest = hashlib.sha256(data).hexdigest()
    name = serve_weights(site, monkeypatch, data, digest[:8])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cli.main(["import-torchvision", "--download", str(tmp_path / "tv.pt"), "--no-progress"])
    assert "1000 classes" in capsys.readouterr().out
    assert (tmp_path / "torch" / "hub" / "checkpoints" / name).read_bytes() == data  # torch.hub's cache
    saved = checkpoint.load(tmp_path / "tv.pt")  # what `alexnet predict tv.pt` reads: test_export predicts
    assert saved["network"].names == list(imagenet_classes().values()) and saved["network"].arch == "owt"
    assert saved["config"] == {"imported": "torchvision", "weights": name, "url": f"{site.url}/{name}",
                               "sha256": digest}
    assert saved["model"].keys() == state.keys() and all(torch.equal(saved["model"][k], v) for k, v in state.items())


def test_torchvision_weights_that_fail_the_hash_check_are_one_line_and_leave_nothing(site, monkeypatch, tmp_path,
                                                                                     capsys, published_weights):
    data, _ = published_weights
    corrupt = data[:-1] + bytes([data[-1] ^ 1])
    serve_weights(site, monkeypatch, corrupt, hashlib.sha256(data).hexdigest()[:8])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    one_line_error(capsys, ["import-torchvision", "--download", str(tmp_path / "tv.pt"), "--no-progress"],
                   "failed torchvision's hash check (invalid hash value", status=1)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    site.files.clear()
    one_line_error(capsys, ["import-torchvision", "--download", str(tmp_path / "tv.pt")], "Not Found", status=1)
    monkeypatch.setenv("ALEXNET_TORCHVISION_URL", f"{site.url}/alexnet.pth")
    one_line_error(capsys, ["import-torchvision", "--download", str(tmp_path / "tv.pt")], "carries no hash")
    one_line_error(capsys, ["import-torchvision", str(tmp_path / "a.pth"), str(tmp_path / "tv.pt"), "--download"],
                   "give either a weights file")
    one_line_error(capsys, ["import-torchvision", str(tmp_path / "tv.pt")], "give either a weights file")
    assert site.ranges == [None, None]
