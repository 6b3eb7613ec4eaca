"""`alexnet download`: the data sets this project documents, from their publishers, verified and unpacked.

    alexnet download imagenette2-320 data                  data/imagenette2-320/{train,val}/<wnid>/*.JPEG
    alexnet download imagenette2-320 data --prepare store  ... and the store `alexnet train --data store` reads
    alexnet download cifar10 data/cifar10                  data/cifar10/{train,test}/<class>/NNNNN.png

The archive comes into DST/<archive>.part. An interrupted download continues from where it stopped with
an HTTP Range request (a server that ignores the request sends the whole file, and it starts over).
The complete file's size and checksum (SHA-256; MD5 where only that is published) are checked against the
published values in ARCHIVES before
anything is unpacked; a file that fails is removed, and nothing else. Unpacking refuses the whole archive,
before it writes a file, if any member is a link, a device file, an absolute path or climbs out with "..".
The environment variable ALEXNET_DOWNLOAD_URL fetches the same file names from a mirror (the checksums
stay those below).
"""

import hashlib
import os
import pickle
import re
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError

from tqdm import tqdm

from .errors import Failure, InputError
from .options import argument, option

BASE_URL_VARIABLE = "ALEXNET_DOWNLOAD_URL"
CHUNK = 1 << 20  # bytes per read
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = {**{f"cifar-10-batches-py/data_batch_{i}": "train" for i in range(1, 6)},
                   "cifar-10-batches-py/test_batch": "test"}


@dataclass(frozen=True)
class Archive:
    """One published archive: its address, size and checksum, and how it is laid out."""

    url: str
    size: int  # bytes
    digest: str  # hex, of the algorithm below
    layout: str  # "imagenet": <name>/train/<wnid>/*.JPEG and <name>/val/<wnid>/*.JPEG; "cifar": pickled batches
    algorithm: str = "sha256"  # or "md5", where the publisher gives no SHA-256

    @property
    def checksum(self) -> str:
        """The checksum's name as messages say it: SHA-256 or MD5."""
        return {"sha256": "SHA-256", "md5": "MD5"}[self.algorithm]

    @property
    def filename(self) -> str:
        """The archive's file name, the last part of its URL."""
        return self.url.rsplit("/", 1)[-1]


_FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"
ARCHIVES = {
    # Imagenette (fastai, github.com/fastai/imagenette), the files as republished in 2021: size and SHA-256 from
    # TensorFlow Datasets, tensorflow_datasets/datasets/imagenette/checksums.tsv; the sizes are also those of
    # fastai's own table (fastai/data/checks.txt, which has an md5 only), and tensorflow/datasets issue #3057
    # shows imagenette2.tgz downloaded with this SHA-256.
    "imagenette2": Archive(_FASTAI + "imagenette2.tgz", 1_557_161_267,
                           "6cbfac238434d89fe99e651496f0812ebc7a10fa62bd42d6874042bf01de4efd", "imagenet"),
    "imagenette2-320": Archive(_FASTAI + "imagenette2-320.tgz", 341_663_724,
                               "569b4497c98db6dd29f335d1f109cf315fe127053cedf69010d047f0188e158c", "imagenet"),
    "imagenette2-160": Archive(_FASTAI + "imagenette2-160.tgz", 99_003_388,
                               "64d0c4859f35a461889e0147755a999a48b49bf38a7e0f9bd27003f10db02fe5", "imagenet"),
    # Imagewoof (the same site): the only SHA-256 published for it (TensorFlow Datasets, url_checksums/imagewoof.txt)
    # is of files of 1343482285, 328288506 and 92560471 bytes, which fastai has since replaced with the files of
    # these sizes; for those fastai's table (fastai/data/checks.txt) gives an MD5 only, which torchvision's
    # Imagewoof data set (torchvision/datasets/imagenette.py) checks too: size and MD5 it is.
    "imagewoof2": Archive(_FASTAI + "imagewoof2.tgz", 1_343_715_595, "9aafe18bcdb1632c4249a76c458465ba", "imagenet",
                          "md5"),
    "imagewoof2-320": Archive(_FASTAI + "imagewoof2-320.tgz", 328_387_740, "0f46d997ec2264e97609196c95897a44",
                              "imagenet", "md5"),
    "imagewoof2-160": Archive(_FASTAI + "imagewoof2-160.tgz", 92_612_825, "3d200a7be99704a0d7509be2a9fbfe15",
                              "imagenet", "md5"),
    # CIFAR-10, python version (www.cs.toronto.edu/~kriz/cifar.html): SHA-256 from TensorFlow Datasets,
    # tensorflow_datasets/url_checksums/cifar10.csv, the same as Keras's (keras/datasets/cifar10.py, file_hash);
    # size: the server's Content-Length, 170498071, as download logs of Keras and wget show it.
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 170_498_071,
                       "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", "cifar"),
}


@dataclass
class DownloadConfig:
    """`alexnet download`'s arguments."""

    name: str = argument(", ".join(f"{name} ({a.size / 1e6:,.0f} MB)" for name, a in ARCHIVES.items()),
                         choices=ARCHIVES, metavar="NAME")
    dst: str = argument("folder to download and unpack into", metavar="DST")
    prepare: str | None = option(None, "then `alexnet prepare` the unpacked Imagenette into the store STORE "
                                       "(default: no store)", metavar="STORE")
    progress: bool = option(True, "no progress bars")


def download(name: str, dst: str | Path, store: str | Path | None = None, base_url: str | None = None,
             progress: bool = DownloadConfig.progress) -> Path:
    """Download the data set `name` into the folder `dst`, verify and unpack it, `prepare` it into `store` if
    given; return the folder of its images."""
    if name not in ARCHIVES:
        raise InputError(f"unknown data set {name!r}: expected one of {', '.join(ARCHIVES)}")
    archive, dst = ARCHIVES[name], Path(dst).expanduser()
    if store is not None and archive.layout != "imagenet":
        raise InputError(f"{name} is not prepared into a store: `alexnet experiment` reads its class folders")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"{dst} is a file, not a folder")
    dst.mkdir(parents=True, exist_ok=True)
    path = fetch(archive, dst, base_url or os.environ.get(BASE_URL_VARIABLE), progress)
    if archive.layout == "cifar":
        _convert_cifar10(path, dst, progress)
        return dst
    extract(path, dst, progress)
    folder = dst / name
    if not folder.is_dir():
        raise InputError(f"{path} has no folder {name}/")
    if store is not None:
        from .data.store import prepare

        prepare(folder, store, progress=progress)
    return folder


# Not torchvision.datasets' download_and_extract_archive, which its Imagenette and CIFAR10 call: it starts a cut
# download over rather than continuing it, checks an MD5 only, keeps a file that failed its check, retries an https
# address over plain http, and unpacks with tarfile's extractall unfiltered (links, "..", absolute paths); and its
# CIFAR10 reads the pickled batches into memory, where `alexnet experiment` reads class folders of images.
def fetch(archive: Archive, dst: Path, base_url: str | None = None, progress: bool = True) -> Path:
    """DST/<archive>: downloaded (continuing DST/<archive>.part), from `base_url` if given, and verified."""
    path = dst / archive.filename
    if path.exists():
        if not _matches(path, archive, progress):
            raise InputError(f"{path} is not the published {archive.filename} (its size or {archive.checksum} "
                             "differs): left as it is; move it away to download again")
        return path
    url = base_url.rstrip("/") + "/" + archive.filename if base_url else archive.url
    part = path.with_name(path.name + ".part")
    _download(url, part, archive.size, progress)
    if not _matches(part, archive, progress):
        part.unlink()
        raise Failure(f"{url} does not match its published {archive.checksum} {archive.digest}: removed {part}, "
                         f"nothing else in {dst} was touched")
    part.replace(path)
    return path


def _download(url: str, part: Path, size: int, progress: bool) -> None:
    """Bring `part` to `size` bytes from `url`: a Range request for the bytes it lacks, or the whole file again
    where the server ignores it. An interrupted download keeps what came; a file of another size is removed."""
    start = part.stat().st_size if part.exists() else 0
    if start == size:
        return
    start = start if start < size else 0
    headers = {"User-Agent": "alexnet-download", **({"Range": f"bytes={start}-"} if start else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            first, total = _response_range(response)
            if first not in (0, start):
                raise Failure(f"{url} sent bytes from {first} on, not the {start} on asked for")
            if total is not None and total != size:
                part.unlink(missing_ok=True)
                raise Failure(f"{url} has {total} bytes, not the published {size}: nothing of it was kept")
            start = first
            with open(part, "ab" if start else "wb") as f, tqdm(
                    total=size, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name,
                    disable=not progress) as bar:
                while chunk := response.read(min(CHUNK, size - f.tell())):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (OSError, HTTPException) as err:  # URLError and a reset or timed-out connection are OSErrors
        reason = err if isinstance(err, HTTPError) else getattr(err, "reason", err)
        raise Failure(f"could not download {url}: {reason}; run the same command again to continue") from None
    got = part.stat().st_size
    if got != size:
        raise Failure(f"the connection to {url} ended after {got} of {size} bytes; run the same command again "
                         "to continue")


def _response_range(response: HTTPResponse) -> tuple[int | None, int | None]:
    """Where the response's bytes begin in the file (0 where the server ignored the Range) and the file's size,
    None where the headers do not say."""
    if response.status != 206:
        length = response.headers.get("Content-Length")
        return 0, int(length) if length is not None else None
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
    return (int(match[1]), int(match[2])) if match else (None, None)


def _matches(path: Path, archive: Archive, progress: bool) -> bool:
    """Whether the file at `path` has the archive's published size and checksum."""
    if path.stat().st_size != archive.size:
        return False
    digest = hashlib.new(archive.algorithm)
    with open(path, "rb") as f, tqdm(total=archive.size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=f"verify {path.name}", disable=not progress) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest() == archive.digest


def extract(path: Path, dst: Path, progress: bool = True) -> None:
    """Unpack the tar archive `path` into `dst`: folders and regular files only, all inside `dst`; any other
    member refuses the whole archive before a file is written, and a link already in `dst` that would lead a
    member out of it refuses that member before it is written."""
    root = dst.resolve()
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, path)
            for member in tqdm(members, desc=f"unpack {path.name}", unit="file", disable=not progress):
                target = dst.joinpath(*PurePosixPath(member.name).parts)
                if not _inside(target, root):
                    raise InputError(f"{path}: refused to unpack: member {member.name!r} would be written through "
                                     f"a link in {dst} that leads out of it")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except (tarfile.TarError, EOFError) as err:
        raise InputError(f"{path} is not a readable tar archive: {err}") from None


def _inside(target: Path, root: Path) -> bool:
    """Whether writing `target` stays inside the folder `root` (resolved): no link on disk leads it out."""
    existing = target
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    return existing.resolve().is_relative_to(root)


def _check_member(member: tarfile.TarInfo, path: Path) -> None:
    """Refuse a member that could write outside the destination: a link, a device file, an absolute or '..' path."""
    name = PurePosixPath(member.name)
    if member.issym() or member.islnk():
        why = f"is a link (to {member.linkname})"
    elif not (member.isfile() or member.isdir()):
        why = "is a device file or a pipe"
    elif name.is_absolute():
        why = "has an absolute path"
    elif ".." in name.parts:
        why = "climbs out of the folder with '..'"
    else:
        return
    raise InputError(f"{path}: refused to unpack: member {member.name!r} {why}")


def _convert_cifar10(path: Path, dst: Path, progress: bool) -> None:
    """Write the images of CIFAR-10's pickled batches as dst/train/<class>/NNNNN.png and dst/test/<class>/NNNNN.png,
    NNNNN the image's place in its split (data_batch_1 to 5 in turn, then test_batch)."""
    from PIL import Image

    count = {"train": 0, "test": 0}
    found = set()
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                split = CIFAR10_BATCHES.get(member.name)
                if split is None or not member.isfile():
                    continue
                # pickle runs what the file says: safe only because fetch verified the archive's SHA-256
                batch = pickle.load(tar.extractfile(member), encoding="latin1")  # written by Python 2
                images = batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows: 1024 R, 1024 G, 1024 B
                for image, label in zip(tqdm(images, desc=member.name, unit="img", disable=not progress),
                                        batch["labels"], strict=True):
                    folder = dst / split / CIFAR10_CLASSES[label]
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(folder / f"{count[split]:05d}.png")
                    count[split] += 1
                found.add(member.name)
    except (tarfile.TarError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(f"{path} is not CIFAR-10's python archive: {err}") from None
    missing = sorted(set(CIFAR10_BATCHES) - found)
    if missing:
        raise InputError(f"{path} is not CIFAR-10's python archive: it lacks {', '.join(missing)}")
