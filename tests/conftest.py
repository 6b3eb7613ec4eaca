import io
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from alexnet.cli import main
from alexnet.data.folders import DEFAULT_DATA
from alexnet.data.store import prepare

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def photos_source() -> Path:
    """Real photos in ImageNet's layout: imagenette-mini from ../shared/data, else the package's own photos."""
    shared = SHARED_DATA / "imagenette-mini"
    return shared if shared.is_dir() else DEFAULT_DATA


def photo_folder(root: Path, train: int, val: int) -> Path:
    """`root` filled with the first 4 classes of the real photos, `train` and `val` of each, in ImageNet's layout."""
    source = photos_source()
    for split, count in (("train", train), ("val", val)):
        for wnid in sorted(p.name for p in (source / split).iterdir())[:4]:
            (root / split / wnid).mkdir(parents=True)
            for f in sorted((source / split / wnid).iterdir())[:count]:
                shutil.copy(f, root / split / wnid / f.name)
    return root


def big_photo(dst: Path) -> Path:
    """A full-size, non-square photo of the first class (tench) at `dst`: ILSVRC's own from ../shared/data, else
    one of the package's photos enlarged to 500×375."""
    samples = SHARED_DATA / "imagenet-samples"
    if samples.is_dir():
        shutil.copy(sorted(samples.iterdir())[0], dst)
    else:
        first = sorted((DEFAULT_DATA / "train").iterdir())[0]
        Image.open(sorted(first.iterdir())[0]).convert("RGB").resize((500, 375), Image.BICUBIC).save(dst, "JPEG")
    return dst


def photo_store(tmp_path_factory: pytest.TempPathFactory, train: int, val: int) -> Path:
    """A store made by `prepare` of photo_folder's photos."""
    root = photo_folder(tmp_path_factory.mktemp("photos"), train, val)
    return prepare(root, tmp_path_factory.mktemp("store") / "store", workers=2, progress=False).path


def cifar_source(root: Path) -> Path:
    """CIFAR-10 training images in class folders: cifar10-mini from ../shared/data, else (at `root`) 32×32 PNGs
    made of the package's photos, 105 per class, its ten classes named as CIFAR-10's."""
    shared = SHARED_DATA / "cifar10-mini" / "train"
    if shared.is_dir():
        return shared
    classes = sorted(p.name for p in (DEFAULT_DATA / "train").iterdir())
    for name, wnid in zip(CIFAR_CLASSES, classes, strict=True):
        (root / name).mkdir(parents=True)
        files = sorted((DEFAULT_DATA / "train" / wnid).iterdir()) + sorted((DEFAULT_DATA / "val" / wnid).iterdir())
        for i, f in enumerate(files):
            Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR).save(root / name / f"{i:04d}.png")
    return root


HOOK = """
import importlib, sys
module, name, condition = sys.argv[1:4]
owner = importlib.import_module(module)
real = getattr(owner, name)

def hooked(*args):
    result = real(*args)
    if eval(condition):
        print("hooked", flush=True)
        sys.stdin.read()  # until the test kills this process
    return result

setattr(owner, name, hooked)
from alexnet.cli import main
main(sys.argv[4:])
"""


def kill_when(module: str, name: str, condition: str, *argv: str) -> None:
    """Run `alexnet ARGV` in a process whose `module.name` (a function) says when `condition` (a Python expression
    in its arguments, `args`) has become true just after a call, and SIGKILL it there: an interruption at a
    known point, without polling."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-c", HOOK, module, name, condition, *argv], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors, text=True)
        hooked = any(line == "hooked\n" for line in proc.stdout)
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stdin.close()
        errors.seek(0)
        assert hooked, f"the process ended before {module}.{name} met {condition}:\n{errors.read()[-3000:]}"


def one_line_error(capsys, argv: list[str], fragment: str, status: int = 2) -> None:
    """`alexnet ARGV` in this process ends with exit status `status` (2: bad input; 1: a failing environment) and
    one line on stderr holding `fragment`."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == status
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: its length, kind, data and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A whole 1-bit PNG of width×height pixels, all alike: a decompression bomb (9000×9900 is about 10 KB)."""
    rows = zlib.compress((b"\0" + b"\xaa" * ((width + 7) // 8)) * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b""))


def mutants(count: int, seed: int = 0) -> list[bytes]:
    """`count` damaged images, seeded: a built-in JPEG photo and a PNG of it cut short, with bytes flipped, with
    huge or zero sizes patched into their headers (the PNG's CRC made right, so that the size is believed), and
    random bytes."""
    rng = random.Random(seed)
    jpeg = sorted((DEFAULT_DATA / "val").glob("*/*.JPEG"))[0].read_bytes()
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).resize((96, 72)).save(out, "PNG")
    png = out.getvalue()
    sof = next(i for i in range(len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC1, 0xC2))
    sizes = (0, 1, 65535, 2**31 - 1, 2**32 - 1, 30000)

    def sized(data: bytes) -> bytes:
        w, h = rng.choice(sizes), rng.choice(sizes)
        if data is png:
            ihdr = struct.pack(">II", min(w, 2**32 - 1), h) + png[24:29]
            return png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]
        return jpeg[:sof + 5] + struct.pack(">HH", min(h, 65535), min(w, 65535)) + jpeg[sof + 9:]

    def flipped(data: bytes) -> bytes:
        data = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)

    kinds = [lambda d: d[:rng.randrange(len(d))], flipped, sized, lambda d: flipped(d[:rng.randrange(1, len(d))])]
    found = [rng.choice(kinds)(rng.choice((jpeg, png))) for _ in range(count - count // 10)]
    return found + [rng.randbytes(rng.randrange(1, 4096)) for _ in range(count // 10)]


def peak_growth(run: Callable[[], object]) -> float:
    """MiB by which this process's peak resident memory passed its resident memory before `run()` (Linux: the
    test is skipped elsewhere)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
    def status(field: str) -> float:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from now
    before = status("VmRSS")
    run()
    return status("VmHWM") - before
