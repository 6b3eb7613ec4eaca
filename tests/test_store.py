import csv
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import big_photo, kill_when, one_line_error, photo_folder
from PIL import Image

import alexnet.data.sources
import alexnet.data.stats
from alexnet.cli import main
from alexnet.data.augment import center_crop
from alexnet.data.folders import hold_out, list_images, splits
from alexnet.data.sources import builtin_store, data_root, prepared_root
from alexnet.data.store import Store, prepare
from alexnet.errors import InputError
from alexnet.kernels import cpu_kernels


@pytest.fixture
def photos(tmp_path):
    """A small ImageNet-layout folder of real photos: 4 classes, 6 train and 2 val images each."""
    root = photo_folder(tmp_path / "photos", train=6, val=2)
    big_photo(root / "train" / "n01440764" / "big.JPEG")  # a full-size photo of another shape: the resize
    return root


def by_hand(path) -> np.ndarray:
    """§2 done directly with PIL: shorter side to 256 (bilinear), central 256×256."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
    left, top = (im.width - 256) // 2, (im.height - 256) // 2
    return np.asarray(im.crop((left, top, left + 256, top + 256)))


def test_store_holds_every_image_with_its_label(photos, tmp_path):
    store = prepare(photos, tmp_path / "store", shard_size=5, workers=2, progress=False)
    for split, n in (("train", 25), ("val", 8)):
        listed, part = list_images(photos, split), store.split(split)
        assert len(part) == n and part.classes == listed.classes
        assert part.files == [str(p) for p in listed.paths]
        assert part.labels.tolist() == listed.labels.tolist()
    train = store.split("train")
    assert len(train.shards) == 5  # 25 images in shards of 5


def test_a_store_names_its_files_by_absolute_path_when_made_from_a_relative_one(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(photos.parent)
    store = prepare(photos.name, tmp_path / "store", workers=1, progress=False)
    monkeypatch.chdir(tmp_path)
    files = store.split("val").files
    assert len(files) == 8 and all(os.path.isabs(f) and os.path.isfile(f) for f in files)


def test_store_crop_equals_the_crop_taken_from_the_jpeg_by_hand(photos, tmp_path):
    store = prepare(photos, tmp_path / "store", workers=1, progress=False)
    train = store.split("train")
    for i in (0, train.files.index(str(photos / "train" / "n01440764" / "big.JPEG"))):
        expected = by_hand(train.files[i]).astype(float)
        stored = train.read(np.array([i]))[0].astype(float)
        assert stored.shape == (256, 256, 3)
        assert np.abs(stored - expected).mean() < 0.5 and np.abs(stored - expected).max() <= 2
        # and the centre crop the network sees is that image minus the mean image there
        recipe = store.recipe()
        crop = center_crop(torch.from_numpy(stored[None].astype(np.uint8)), recipe)[0]
        assert torch.allclose(crop, (torch.from_numpy(stored[16:240, 16:240]).float()
                                     - recipe.mean[16:240, 16:240]).permute(2, 0, 1), atol=1e-3)


def test_mean_image_and_rgb_pca_equal_a_direct_numpy_computation(photos, tmp_path):
    store = prepare(photos, tmp_path / "store", shard_size=7, workers=2, progress=False)
    train = store.split("train")
    images = train.read(np.arange(len(train))).astype(np.float64)
    mean = np.load(tmp_path / "store" / "mean.npy")
    assert np.abs(mean - images.mean(0)).max() / images.mean(0).max() <= 1e-6
    cov = np.cov(images.reshape(-1, 3).T / 255, bias=True)  # RGB on the [0, 1] scale
    eigval, eigvec = np.linalg.eigh(cov)
    recipe = store.recipe()
    assert np.allclose(recipe.eigval.double().numpy(), eigval, rtol=1e-6)
    for i in range(3):  # eigenvectors are defined up to sign
        assert abs(abs(recipe.eigvec[:, i].double().numpy() @ eigvec[:, i]) - 1) < 1e-6
    # the validation split leaves the statistics alone
    assert len(store.split("val")) == 8


@pytest.mark.skipif(cpu_kernels() is None, reason="the CPU kernels are not built here")
def test_statistics_kernel_and_plain_numpy_agree_exactly(photos, tmp_path, monkeypatch):
    prepare(photos, tmp_path / "kernel", workers=2, progress=False)
    monkeypatch.setattr(alexnet.data.stats, "cpu_kernels", lambda: None)  # forked workers inherit it
    monkeypatch.setenv("ALEXNET_KERNELS", "0")  # and workers that start afresh (spawn, forkserver) read it
    prepare(photos, tmp_path / "numpy", workers=2, progress=False)
    assert np.array_equal(np.load(tmp_path / "kernel" / "mean.npy"), np.load(tmp_path / "numpy" / "mean.npy"))
    with np.load(tmp_path / "kernel" / "rgb.npz") as a, np.load(tmp_path / "numpy" / "rgb.npz") as b:
        assert np.array_equal(a["cov"], b["cov"]) and np.array_equal(a["mean"], b["mean"])


def test_bad_files_are_skipped_counted_and_do_not_shift_labels(photos, tmp_path, caplog, capsys):
    cls = photos / "train" / "n01440764"
    (cls / "empty.JPEG").write_bytes(b"")
    (cls / "notes.JPEG").write_text("not a picture")
    good = sorted(cls.glob("*.JPEG"))[0]
    (cls / "cut.JPEG").write_bytes(good.read_bytes()[:600])
    store = prepare(photos, tmp_path / "store", shard_size=4, workers=2, progress=True)
    bars = capsys.readouterr().err
    train_bar, val_bar = bars[:bars.index("prepare val")], bars[bars.index("prepare val"):]
    assert "bad=3" in train_bar and "bad=" not in val_bar  # each split's bar counts its own bad files
    train = store.split("train")
    assert len(train) == 25
    assert not any(f.endswith(("empty.JPEG", "notes.JPEG", "cut.JPEG")) for f in train.files)
    for f, label in zip(train.files, train.labels, strict=True):
        assert train.classes[label] == os.path.basename(os.path.dirname(f))
    assert sum("skipped" in r.message for r in caplog.records) == 3
    assert (tmp_path / "store" / "store.json").read_text().count("\n") > 0


def test_a_store_is_not_prepared_twice_and_one_of_another_source_is_kept_unless_overwritten(photos, tmp_path, capsys):
    store = tmp_path / "store"
    prepare(photos, store, workers=1, progress=False)
    (store / "NOTES.txt").write_text("mine")  # what a user keeps beside a store
    (store / "val" / "mine.txt").write_text("mine too")
    (store / "notes").mkdir()
    (store / "notes" / "labels.npy").write_text("a file of mine named as a store's are")
    thumbs = sorted((photos / "train").iterdir())[0] / "Thumbs.db"
    thumbs.write_bytes(b"not an image")  # a file that is not an image changes nothing in the store
    prepare(photos, store, workers=1, progress=True)
    assert "already prepared" in capsys.readouterr().out
    thumbs.unlink()
    gone = sorted(os.listdir(photos / "val"))[0]
    shutil.rmtree(photos / "val" / gone)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    one_line_error(capsys, ["prepare", str(photos), str(store)],
                   f"holds a store prepared from other val files (0 new, 2 gone: {photos / 'val' / gone}")
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # nothing touched
    link = tmp_path / "link"
    link.symlink_to(store)  # a destination reached through a link
    main(["prepare", str(photos), str(link), "--overwrite", "--workers", "1"])
    assert "replacing the store's own files, as asked (--overwrite)" in capsys.readouterr().out
    assert len(Store(store).split("val")) == 6 and link.is_symlink()
    assert (store / "NOTES.txt").read_text() == "mine" and (store / "val" / "mine.txt").read_text() == "mine too"
    assert (store / "notes" / "labels.npy").is_file()
    one_line_error(capsys, ["prepare", str(photos), str(store), "--size", "128"], "prepared with --size 256, not 128")


def test_a_store_of_an_older_format_is_refused_and_remade(photos, tmp_path, capsys):
    """Format 1 kept the RGB PCA on the 0-255 scale (read as today's, colour noise 255× too big); format 2 kept the
    files in files.txt, one a line (a name with a newline shifted every later row)."""
    prepare(photos, tmp_path / "store", workers=1, progress=False)
    for name in ("store.json", "plan.json"):  # what the version before wrote: format 1, its own digest
        meta = json.loads((tmp_path / "store" / name).read_text())
        (tmp_path / "store" / name).write_text(json.dumps({**meta, "version": 1, "digest": "from version 1"}))
    (tmp_path / "store" / "val" / "files.json").rename(tmp_path / "store" / "val" / "files.txt")
    with pytest.raises(ValueError, match="format 1, this alexnet reads format 3: run `alexnet prepare` again"):
        Store(tmp_path / "store")
    store = prepare(photos, tmp_path / "store", workers=1, progress=False)
    assert "replacing the store's own files, made by another alexnet" in capsys.readouterr().out
    assert store.recipe().eigval.max() < 1  # the [0, 1] scale
    assert not (tmp_path / "store" / "val" / "files.txt").exists() and len(store.split("val")) == 8


def as_format_2(store: Path) -> None:
    """Make a store look as format 2 wrote it: files.txt, one name a line, and that version in its metadata."""
    for name in ("store.json", "plan.json"):
        meta = json.loads((store / name).read_text())
        (store / name).write_text(json.dumps({**meta, "version": 2, "digest": "from version 2"}))
    for split in ("train", "val"):
        files = json.loads((store / split / "files.json").read_text())
        (store / split / "files.txt").write_text("".join(f + "\n" for f in files))
        (store / split / "files.json").unlink()


def test_a_store_of_format_2_has_its_file_list_rewritten_and_keeps_its_images(photos, tmp_path, capsys):
    made = prepare(photos, tmp_path / "store", workers=1, progress=False)
    files, shard = made.split("val").files, (tmp_path / "store" / "train" / "images-00000.npy").stat().st_mtime_ns
    as_format_2(tmp_path / "store")
    with pytest.raises(ValueError, match="format 2, this alexnet reads format 3: run `alexnet prepare` again"):
        Store(tmp_path / "store")
    store = prepare(photos, tmp_path / "store", workers=1, progress=False)
    assert "its file list rewritten in format 3; the images are as they were" in capsys.readouterr().out
    assert store.split("val").files == files and json.loads((tmp_path / "store" / "store.json").read_text())[
        "digest"] == store.plan["digest"]
    assert (tmp_path / "store" / "train" / "images-00000.npy").stat().st_mtime_ns == shard  # not written again
    assert not list((tmp_path / "store").rglob("files.txt"))
    as_format_2(tmp_path / "store")  # a name with a newline made one line more than images: made again
    with open(tmp_path / "store" / "val" / "files.txt", "a") as f:
        f.write("half of a name\n")
    prepare(photos, tmp_path / "store", workers=1, progress=False)
    assert "replacing the store's own files, made by another alexnet" in capsys.readouterr().out


def test_looking_up_the_builtin_photos_prepares_nothing_and_the_preparing_call_makes_their_store(
        photos, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(alexnet.data.sources, "DEFAULT_DATA", photos)  # a small stand-in for the built-in photos
    with pytest.raises(InputError, match="data folder not found"):
        data_root(None)
    assert not (tmp_path / "cache").exists()
    assert prepared_root(None) == builtin_store() == data_root(None)
    assert len(Store(builtin_store()).split("val")) == 8
    assert prepared_root(photos) == data_root(photos) == photos


def test_a_foreign_destination_is_refused(photos, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not an alexnet store"):
        prepare(photos, tmp_path / "mine", workers=1, progress=False)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="not a store made by"):
        Store(tmp_path / "mine")


def test_a_store_killed_mid_write_is_detected_and_finished(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for c in range(3):
        (src / "train" / f"class{c}").mkdir(parents=True)
        for i in range(60):
            pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(src / "train" / f"class{c}" / f"{i:03d}.jpg", quality=95)
    dst = tmp_path / "store"
    kill_when("alexnet.data.store", "atomic_write", "args[0].name.startswith('shard-')", "prepare", str(src), str(dst),
              "--shard-size", "10", "--workers", "1")  # killed when the first shard is finished
    done = len(list((dst / "train").glob("shard-*.npz")))
    assert 1 <= done < 18, "the kill should land mid-way"
    with pytest.raises(ValueError, match="unfinished store"):
        Store(dst)
    resumed = prepare(src, dst, shard_size=10, workers=2, progress=False)
    fresh = prepare(src, tmp_path / "fresh", shard_size=10, workers=2, progress=False)
    a, b = resumed.split("train"), fresh.split("train")
    assert len(a) == len(b) == 180 and a.labels.tolist() == b.labels.tolist()
    assert np.array_equal(a.read(np.arange(180)), b.read(np.arange(180)))
    assert torch.equal(resumed.recipe().mean, fresh.recipe().mean)


DIES = """
import os, signal, sys
import alexnet.data.store as store

real = store._load_chunk


def dies(job):  # the worker given a chunk of the second shard is killed, as the OOM killer or a SIGBUS would
    if "images-00001" in job[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(job)


store._load_chunk = dies
if __name__ == "__main__":
    from alexnet.cli import main
    main(sys.argv[1:])
"""


def same_stores(a: Store, b: Store) -> None:
    """`a` and `b` hold the same images, labels, files and statistics."""
    for split in a.splits:
        x, y = a.split(split), b.split(split)
        assert x.files == y.files and x.labels.tolist() == y.labels.tolist()
        assert np.array_equal(x.read(np.arange(len(x))), y.read(np.arange(len(y))))
    assert torch.equal(a.recipe().mean, b.recipe().mean) and torch.equal(a.recipe().eigvec, b.recipe().eigvec)


def test_a_worker_that_dies_ends_prepare_in_a_failure_and_a_rerun_goes_on(photos, tmp_path):
    (tmp_path / "dies.py").write_text(DIES)
    dst = tmp_path / "store"
    result = subprocess.run([sys.executable, str(tmp_path / "dies.py"), "prepare", str(photos), str(dst),
                             "--shard-size", "10", "--workers", "2"], capture_output=True, text=True, timeout=120)
    said = result.stderr.strip().splitlines()[-1]  # below the progress bar
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert said == (f"alexnet prepare: failed: a worker process died (killed, or out of memory) while writing "
                    f"{dst / 'train' / 'images-00001.npy'}; the finished shards are kept: run `alexnet prepare` "
                    "again to go on")
    kept = dst / "train" / "shard-00000.npz"
    assert sorted(p.name for p in (dst / "train").iterdir()) == ["images-00000.npy", "shard-00000.npz"]
    written = kept.stat().st_mtime_ns
    resumed = prepare(photos, dst, shard_size=10, workers=2, progress=False)
    assert kept.stat().st_mtime_ns == written  # the finished shard was kept, not made again
    same_stores(resumed, prepare(photos, tmp_path / "fresh", shard_size=10, workers=2, progress=False))


def test_a_full_disk_ends_prepare_in_one_line_and_a_rerun_goes_on(photos, tmp_path, monkeypatch, capsys):
    real = alexnet.data.store.atomic_write

    def full(path, write):  # the disk fills up while the second shard is written
        if path.name == "shard-00001.npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)

    monkeypatch.setattr(alexnet.data.store, "atomic_write", full)
    dst = tmp_path / "store"
    with pytest.raises(SystemExit) as stop:
        main(["prepare", str(photos), str(dst), "--shard-size", "10", "--workers", "2"])
    said = capsys.readouterr().err.strip().splitlines()[-1]  # below the progress bar
    assert stop.value.code == 1 and said == (
        f"alexnet prepare: failed: {dst / 'train' / 'images-00001.npy'}: No space left on device; the finished "
        "shards are kept: run `alexnet prepare` again to go on once there is room")
    assert sorted(p.name for p in (dst / "train").iterdir()) == ["images-00000.npy", "shard-00000.npz"]
    monkeypatch.undo()
    same_stores(prepare(photos, dst, shard_size=10, workers=2, progress=False),
                prepare(photos, tmp_path / "fresh", shard_size=10, workers=2, progress=False))


SMALL_DISK = """mount -t tmpfs -o size=2900k tmpfs "$0" || exit 99
timeout 120 "$@" 2>"$0.err"; echo $? >"$0.rc"; ls "$0/store/train" >"$0.kept"
mount -o remount,size=64m "$0" && "$@" >/dev/null 2>&1 && cp -r "$0/store" "$0.store"
"""


def test_a_real_full_disk_ends_prepare_in_one_line_and_a_rerun_goes_on(photos, tmp_path):
    """A file system of 2.9 MB (tmpfs, in a mount namespace of this user's own) holds one shard of four images (0.8 MB
    of pixels, 1.6 MB of sums), not two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    argv = [sys.executable, "-m", "alexnet", "prepare", str(photos), f"{disk}/store", "--shard-size", "4"]
    mounted = subprocess.run(["unshare", "-rm", "sh", "-c", SMALL_DISK, str(disk), *argv], capture_output=True,
                             text=True, timeout=300)
    if mounted.returncode == 99 or not (tmp_path / "disk.rc").is_file():
        pytest.skip(f"no tmpfs of one's own here: {mounted.stderr.strip()[-200:]}")
    errors = (tmp_path / "disk.err").read_text()
    said = errors.strip().splitlines()[-1]
    assert "Traceback" not in errors, errors
    rc = int((tmp_path / "disk.rc").read_text())
    assert rc == 1, (rc, said)  # 124: it hung
    assert said.startswith("alexnet prepare: failed: ") and "No space left on device" in said, said
    assert "again to go on once there is room" in said
    assert "shard-00000.npz" in (tmp_path / "disk.kept").read_text().split()
    same_stores(Store(tmp_path / "disk.store"), prepare(photos, tmp_path / "fresh", shard_size=4, progress=False))


def test_a_folder_without_val_holds_out_each_classs_share_the_same_way_every_time(photos, tmp_path, capsys):
    flat = photos / "train"  # class folders only: an ImageFolder without splits
    train, val = hold_out(list_images(flat), 0.25)
    again = hold_out(list_images(flat), 0.25)
    assert [str(p) for p in val.paths] == [str(p) for p in again[1].paths]  # the same images every time
    assert sorted(map(str, train.paths + val.paths)) == sorted(map(str, list_images(flat).paths))
    counts = np.bincount(list_images(flat).labels)  # 7, 6, 6, 6: a quarter of each, rounded
    assert np.bincount(val.labels).tolist() == [round(0.25 * n) for n in counts]
    store = prepare(flat, tmp_path / "store", workers=1, progress=False, val_fraction=0.25)
    assert store.plan["val_fraction"] == 0.25 and store.split("val").files == [str(p) for p in val.paths]
    capsys.readouterr()
    prepare(flat, tmp_path / "store", workers=1, val_fraction=0.25)
    assert "already prepared" in capsys.readouterr().out
    one_line_error(capsys, ["prepare", str(photos), str(tmp_path / "other"), "--val-fraction", "0.2"],
                   f"--val-fraction 0.2: {photos} has a validation split of its own")


def test_a_list_of_files_and_labels_is_a_source_as_a_folder_is(photos, tmp_path, capsys):
    rows = [("file", "label", "split")] + [(str(f.relative_to(photos)), f.parent.name, split) for split in
                                           ("train", "val") for f in sorted((photos / split).rglob("*.JPEG"))]
    listing = photos / "list.csv"
    with open(listing, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert splits(listing) == ["train", "val"]
    for split in ("train", "val"):  # the same images and labels as the folder's
        by_list, by_folder = list_images(listing, split), list_images(photos, split)
        assert sorted(zip(map(str, by_list.paths), by_list.labels.tolist(), strict=True)) == sorted(
            zip(map(str, by_folder.paths), by_folder.labels.tolist(), strict=True))
    store = prepare(listing, tmp_path / "store", workers=1, progress=False)
    assert len(store.split("train")) == 25 and len(store.split("val")) == 8
    (photos / "no-split.csv").write_text("file,label\n" + "".join(f"{p},{c}\n" for p, c, _ in rows[1:26]))
    held = prepare(photos / "no-split.csv", tmp_path / "held", workers=1, progress=False, val_fraction=0.25)
    assert held.splits == ["train", "val"] and len(held.split("val")) > 0
    (tmp_path / "bad.csv").write_text("path,class\na.jpg,cat\n")
    one_line_error(capsys, ["prepare", str(tmp_path / "bad.csv"), str(tmp_path / "bad")],
                   "bad.csv: expected a header row naming the columns file and label")
