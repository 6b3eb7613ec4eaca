import io
import logging
import os
import pickle
import struct
import threading
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import bomb_png, mutants, peak_growth
from PIL import Image

from alexnet.data.folders import (
    DEFAULT_DATA,
    BadFiles,
    BadImageError,
    class_names,
    imagenet_classes,
    list_images,
    open_rgb,
    preprocess,
    splits,
)
from alexnet.errors import InputError

IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
              "n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]
IMAGENETTE_NAMES = ["tench", "English springer", "cassette player", "chain saw", "church",
                    "French horn", "garbage truck", "gas pump", "golf ball", "parachute"]


def hand_preprocess(im: Image.Image, size: int = 256) -> np.ndarray:
    """§2 done the obvious way: resize the whole image so the shorter side is `size`, crop the centre."""
    w, h = im.size
    rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    left, top = (rw - size) // 2, (rh - size) // 2
    return np.asarray(im.resize((rw, rh), Image.BILINEAR).crop((left, top, left + size, top + size)))


def gradient(w: int, h: int) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)


def save_jpeg(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=95, **kwargs)
    return path


def png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w×h pixels and holds none: refusing it proves the limit is read from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\0" * 64)  # the start of the first row only
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# --- class names -----------------------------------------------------------------------------------------------

def test_imagenet_classes_are_1000_sorted_wnids_starting_with_tench():
    classes = imagenet_classes()
    assert len(classes) == 1000 and list(classes) == sorted(classes)
    assert list(classes.items())[0] == ("n01440764", "tench")
    assert list(classes.items())[999] == ("n15075141", "toilet tissue")


def test_imagenet_class_names_match_the_sample_file_names(shared_data):
    files = sorted((shared_data / "imagenet-samples").glob("*.JPEG"))
    assert len(files) == 100
    for f in files:
        wnid, name = f.stem.split("_", 1)
        assert imagenet_classes()[wnid].replace(" ", "_") == name


def test_class_names_keep_names_that_are_not_wnids():
    assert class_names(["n01443537", "cat", "n99999999"]) == ["goldfish", "cat", "n99999999"]


# --- the real photos -------------------------------------------------------------------------------------------

def test_imagenette_mini_splits_counts_and_sorted_wnid_labels(shared_data):
    root = shared_data / "imagenette-mini"
    assert splits(root) == ["train", "val"]
    for split, count in (("train", 1200), ("val", 300)):
        images = list_images(root, split)
        assert len(images) == count and images.root == root / split
        assert images.classes == IMAGENETTE and images.names == IMAGENETTE_NAMES
        assert images.labels.dtype == np.int64
        assert list(images.labels) == [IMAGENETTE.index(p.parent.name) for p in images.paths]
        assert np.bincount(images.labels).tolist() == [count // 10] * 10


def test_imagenette_mini_photos_preprocess_to_256_rgb(shared_data):
    for path in list_images(shared_data / "imagenette-mini", "val").paths[::30]:
        out = preprocess(path)
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8
        # 224×224 squashed photos: the shorter side 256 makes them 256×256, nothing to crop
        assert np.array_equal(out, np.asarray(open_rgb(path).resize((256, 256), Image.BILINEAR)))


def test_imagenet_samples_all_decode_to_rgb_256(shared_data):
    files = sorted((shared_data / "imagenet-samples").glob("*.JPEG"))
    for f in files:
        out = preprocess(f)
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    gray = preprocess(shared_data / "imagenet-samples" / "n03908714_pencil_sharpener.JPEG")
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    assert gray.std() > 10


@pytest.mark.parametrize("name", ["n03908714_pencil_sharpener.JPEG", "n01440764_tench.JPEG"])
def test_preprocess_equals_resize_shorter_side_then_center_crop(shared_data, name):
    path = shared_data / "imagenet-samples" / name  # portrait grayscale 333×500; landscape colour 500×375
    expected = hand_preprocess(Image.open(path).convert("RGB"))
    assert np.abs(preprocess(path).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("name", ["n01924916_flatworm.JPEG", "n03759954_microphone.JPEG"])
def test_preprocess_of_a_large_photo_decoded_at_reduced_scale_stays_close(shared_data, name):
    path = shared_data / "imagenet-samples" / name  # 1152×864 and 702×1094: JPEG draft mode decodes at 1/2 scale
    diff = np.abs(preprocess(path).astype(int) - hand_preprocess(Image.open(path).convert("RGB")))
    assert diff.mean() < 2.5  # a crop off by one pixel differs by 7 to 16 on average


def test_preprocess_geometry_of_a_large_jpeg_decoded_at_quarter_scale(tmp_path):
    x, y = np.meshgrid(np.arange(1800), np.arange(1100))
    waves = np.stack([127 + 100 * np.sin(x / 7), 127 + 100 * np.sin(y / 7), x / 8], axis=-1).astype(np.uint8)
    path = save_jpeg(tmp_path / "big.JPEG", waves)  # decodes at 1/4 scale (450×275), then 224×224
    out = preprocess(path, size=224)
    assert out.shape == (224, 224, 3)
    diff = np.abs(out.astype(int) - hand_preprocess(Image.open(path).convert("RGB"), size=224))
    assert diff.mean() < 2.5  # a crop off by one pixel differs by about 14 on average


# --- messy files in an ImageFolder ------------------------------------------------------------------------------

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """An ImageFolder-style set (no train/val) with good photos, bad files and non-image files in every class."""
    root = tmp_path / "pets"
    for name, colour in COLOURS.items():
        for i in range(2):
            save_jpeg(root / name / f"good{i}.JPEG", np.full((48, 64, 3), colour, np.uint8))
    (root / "cat" / "empty.JPEG").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    data = save_jpeg(tmp_path / "noise.jpg", noise).read_bytes()
    (root / "cat" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "dog" / "notes.JPEG").write_text("not a photo\n")
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(root / "dog" / "cmyk.JPEG", quality=95)
    Image.new("L", (64, 48), 77).save(root / "eel" / "gray.JPEG", quality=95)
    Image.fromarray(gradient(64, 48)).save(root / "eel" / "png.JPEG", format="PNG")
    png_header(root / "eel" / "huge.png", 10_000, 10_000)
    # not images: skipped when listing, and none of them may become a class or shift a label
    (root / "0_readme.txt").write_text("a file beside the class folders\n")
    (root / "cat" / "labels.csv").write_text("x\n")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "eel" / "Thumbs.db").write_bytes(b"\0")
    return root


BAD = {"empty.JPEG": "empty file", "cut.jpg": "truncated", "notes.JPEG": "not an image", "huge.png": "too many pixels"}


def test_imagefolder_without_splits_is_a_train_split_and_skips_non_images(messy):
    assert splits(messy) == ["train"]
    images = list_images(messy)
    assert images.classes == ["cat", "dog", "eel"] and images.names == ["cat", "dog", "eel"]
    assert images.skipped == 3
    names = [p.name for p in images.paths]
    assert names == ["cut.jpg", "empty.JPEG", "good0.JPEG", "good1.JPEG",
                     "cmyk.JPEG", "good0.JPEG", "good1.JPEG", "notes.JPEG",
                     "good0.JPEG", "good1.JPEG", "gray.JPEG", "huge.png", "png.JPEG"]
    assert list(images.labels) == [0] * 4 + [1] * 4 + [2] * 5


def test_bad_files_are_refused_once_each_with_their_reason(messy, caplog):
    images = list_images(messy)
    bad, good = BadFiles(), []
    with caplog.at_level(logging.WARNING, logger="alexnet"):
        for path, label in zip(images.paths, images.labels, strict=True):
            try:
                good.append((path.name, images.classes[label], preprocess(path, size=32)))
            except BadImageError as err:
                bad.add(err.path, err.reason)
    assert sorted((name, cls) for name, cls, _ in good) == sorted(
        [(f"good{i}.JPEG", c) for i in range(2) for c in COLOURS] + [("cmyk.JPEG", "dog"), ("gray.JPEG", "eel"),
                                                                      ("png.JPEG", "eel")])
    for name, cls, pixels in good:
        if name.startswith("good"):
            assert np.abs(pixels.astype(int) - COLOURS[cls]).max() <= 3
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped {messy / cls / name}: {BAD[name]}"
        for cls, name in [("cat", "cut.jpg"), ("cat", "empty.JPEG"), ("dog", "notes.JPEG"), ("eel", "huge.png")]]
    assert bad.summary() == "4 bad files skipped: 1 empty file, 1 not an image, 1 too many pixels, 1 truncated"
    assert len(bad) == 4


def test_cmyk_grayscale_and_png_named_jpeg_decode_to_rgb(messy):
    cmyk = np.asarray(open_rgb(messy / "dog" / "cmyk.JPEG"))
    assert cmyk.shape == (48, 64, 3) and np.abs(cmyk.astype(int) - (255, 0, 0)).max() <= 3
    gray = np.asarray(open_rgb(messy / "eel" / "gray.JPEG"))
    assert gray.shape == (48, 64, 3) and np.abs(gray.astype(int) - 77).max() <= 1
    png = open_rgb(messy / "eel" / "png.JPEG")
    assert png.mode == "RGB" and np.array_equal(np.asarray(png), gradient(64, 48))


def test_pixel_limit_refuses_from_the_header_without_pil_warnings(messy):
    path = messy / "cat" / "good0.JPEG"  # 64×48 = 3072 pixels
    assert open_rgb(path, max_pixels=3072).size == (64, 48)
    with pytest.raises(BadImageError, match="too many pixels"):
        open_rgb(path, max_pixels=3071)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape
        with pytest.raises(BadImageError) as err:
            preprocess(messy / "eel" / "huge.png")  # 100 million pixels claimed, no data to decode
    assert err.value.reason == "too many pixels"
    with pytest.raises(BadImageError, match="truncated"):  # the same file, small enough: decoding is tried
        open_rgb(png_header(messy / "small.png", 100, 100))


def test_bad_image_error_survives_pickling_for_worker_processes(messy):
    with pytest.raises(BadImageError) as err:
        open_rgb(messy / "cat" / "empty.JPEG")
    copy = pickle.loads(pickle.dumps(err.value))
    assert (copy.path, copy.reason, str(copy)) == (messy / "cat" / "empty.JPEG", "empty file",
                                                   f"{messy / 'cat' / 'empty.JPEG'}: empty file")


def test_bad_files_summary_when_nothing_was_refused():
    assert BadFiles().summary() == "no bad files"


# --- the flat validation folder ---------------------------------------------------------------------------------

THREE = ["n01440764", "n01443537", "n15075141"]  # tench, goldfish, toilet tissue: ILSVRC indices 0, 1, 999
DEVKIT_IDS = {"n15075141": 1, "n01440764": 2, "n01443537": 3}  # devkit IDs are not the sorted-wnid order
VAL_WNIDS = ["n15075141", "n01440764", "n01443537", "n01443537", "n15075141", "n01440764"]


def write_meta_mat(path: Path) -> None:
    """The devkit's data/meta.mat: a `synsets` struct array; IDs above 1000 are inner nodes of the hierarchy."""
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, "words", "gloss", 0, np.zeros((1, 0)), 0, 1300) for w, i in DEVKIT_IDS.items()]
    rows.append((1001, "n00001740", "entity", "that which exists", 3, np.array([[1, 2, 3]]), 18, 0))
    synsets = np.empty((len(rows), 1), dtype=[(f, "O") for f in fields])
    for k, row in enumerate(rows):
        synsets[k, 0] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"synsets": synsets})


def flat_val(root: Path, with_train: bool = True) -> Path:
    if with_train:
        for wnid in THREE:
            save_jpeg(root / "train" / wnid / f"{wnid}_1.JPEG", gradient(32, 32))
    for n in range(1, len(VAL_WNIDS) + 1):
        save_jpeg(root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", gradient(32, 32))
    return root


def write_devkit(root: Path) -> None:
    data = root / "ILSVRC2012_devkit_t12" / "data"
    write_meta_mat(data / "meta.mat")
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{DEVKIT_IDS[w]}\n" for w in VAL_WNIDS))


def write_loc_csv(path: Path) -> None:
    rows = [f"ILSVRC2012_val_{n:08d},{w} 10 20 30 40 {w} 1 2 3 4" for n, w in enumerate(VAL_WNIDS, start=1)]
    path.write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")


def test_flat_val_labelled_by_devkit_ground_truth_and_meta_mat(tmp_path):
    root = flat_val(tmp_path / "imagenet")
    write_devkit(root)
    val = list_images(root, "val")
    assert [p.name for p in val.paths] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 7)]
    assert val.classes == THREE and val.names == ["tench", "goldfish", "toilet tissue"]
    assert list(val.labels) == [2, 0, 1, 1, 2, 0]


def test_flat_val_without_train_split_indexes_all_1000_classes(tmp_path):
    root = flat_val(tmp_path / "imagenet", with_train=False)
    write_devkit(root)
    val = list_images(root, "val")
    assert len(val.classes) == 1000 and val.names[999] == "toilet tissue"
    assert list(val.labels) == [999, 0, 1, 1, 999, 0]


def test_flat_val_labelled_by_kaggle_loc_val_solution_csv(tmp_path):
    root = flat_val(tmp_path / "imagenet")
    write_loc_csv(root / "LOC_val_solution.csv")
    assert list(list_images(root, "val").labels) == [2, 0, 1, 1, 2, 0]


def test_flat_val_with_an_explicit_label_file(tmp_path):
    root = flat_val(tmp_path / "imagenet")
    write_loc_csv(tmp_path / "elsewhere.csv")
    assert list(list_images(root, "val", label_file=tmp_path / "elsewhere.csv").labels) == [2, 0, 1, 1, 2, 0]


# --- bad input: one clear line ----------------------------------------------------------------------------------

def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError) as err:
        list_images(tmp_path / "nowhere")
    assert one_line(err) == f"data folder not found: {tmp_path / 'nowhere'}"


def test_empty_class_folder_is_named(tmp_path):
    save_jpeg(tmp_path / "train" / "a" / "1.JPEG", gradient(8, 8))
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "readme.txt").write_text("no photos here")
    with pytest.raises(ValueError) as err:
        list_images(tmp_path)
    assert one_line(err) == f"empty class folder: {tmp_path / 'train' / 'b'} has no image files"


def test_folder_without_class_folders_is_a_clear_error(tmp_path):
    save_jpeg(tmp_path / "loose.JPEG", gradient(8, 8))
    with pytest.raises(ValueError) as err:
        list_images(tmp_path)
    assert one_line(err).startswith(f"no class folders in {tmp_path}")


def test_flat_val_without_a_label_file_is_a_clear_error(tmp_path):
    root = flat_val(tmp_path / "imagenet")
    with pytest.raises(InputError) as err:
        list_images(root, "val")
    assert one_line(err).startswith(f"flat val folder {root / 'val'} has no label file")


def test_ground_truth_without_meta_mat_is_a_clear_error(tmp_path):
    root = flat_val(tmp_path / "imagenet")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n3\n1\n2\n")
    with pytest.raises(InputError) as err:
        list_images(root, "val")
    assert "meta.mat" in one_line(err)


def test_missing_val_split_and_unknown_val_class_are_clear_errors(messy, tmp_path):
    with pytest.raises(InputError) as err:
        list_images(messy, "val")
    assert one_line(err) == f"no val split: {messy / 'val'} is missing"
    save_jpeg(tmp_path / "train" / "a" / "1.JPEG", gradient(8, 8))
    save_jpeg(tmp_path / "val" / "z" / "1.JPEG", gradient(8, 8))
    with pytest.raises(ValueError) as err:
        list_images(tmp_path, "val")
    assert one_line(err) == f"val class folder {tmp_path / 'val' / 'z'} has no train class of that name"


def test_val_folder_missing_a_class_keeps_the_train_indices(tmp_path):
    for name in ("a", "b", "c"):
        save_jpeg(tmp_path / "train" / name / "1.JPEG", gradient(8, 8))
    save_jpeg(tmp_path / "val" / "c" / "1.JPEG", gradient(8, 8))
    val = list_images(tmp_path, "val")
    assert val.classes == ["a", "b", "c"] and list(val.labels) == [2]


# --- the built-in default data set ------------------------------------------------------------------------------

def test_default_data_is_small_balanced_imagenette_in_both_splits():
    files = [p for p in DEFAULT_DATA.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 6_000_000
    assert (DEFAULT_DATA / "README.txt").is_file()
    assert splits(DEFAULT_DATA) == ["train", "val"]
    train, val = list_images(DEFAULT_DATA, "train"), list_images(DEFAULT_DATA, "val")
    assert train.classes == val.classes == IMAGENETTE and train.names[0] == "tench"
    assert np.bincount(train.labels).tolist() == [len(train) // 10] * 10
    assert np.bincount(val.labels).tolist() == [len(val) // 10] * 10 and len(val) >= 200
    assert not set(p.name for p in train.paths) & set(p.name for p in val.paths)
    assert train.skipped == val.skipped == 0


def test_default_data_photos_all_preprocess_to_256_rgb():
    for split in ("train", "val"):
        for path in list_images(DEFAULT_DATA, split).paths:
            out = preprocess(path)
            assert out.shape == (256, 256, 3) and out.std() > 10, path


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    levels = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (300, 1))  # a dark-to-light ramp
    Image.fromarray(levels).save(tmp_path / "deep.png")  # mode I;16
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    pixels = preprocess(tmp_path / "deep.png")
    expected = hand_preprocess(Image.fromarray((levels // 257).astype(np.uint8)).convert("RGB"))
    assert np.abs(pixels.astype(int) - expected).max() <= 1 and 100 < pixels.mean() < 155  # not 98% white


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_photo_is_turned_upright_as_its_exif_orientation_says(tmp_path, orientation):
    upright = Image.fromarray(gradient(400, 300)).convert("RGB")  # wider than high, a gradient across it
    # what the camera stored: the upright picture turned back, with the tag that turns it upright again
    stored = upright.transpose({3: Image.ROTATE_180, 6: Image.ROTATE_90, 8: Image.ROTATE_270}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    upright.save(tmp_path / "upright.jpg", quality=95)
    turned, straight = preprocess(tmp_path / "phone.jpg"), preprocess(tmp_path / "upright.jpg")
    assert np.abs(turned.astype(int) - straight).mean() < 3  # JPEG's losses apart, the same picture


def test_each_image_is_listed_once_whatever_the_links_and_a_pipe_is_passed_over(tmp_path, caplog):
    root = tmp_path / "data"
    for c, colour in (("a", 0), ("b", 200)):
        for i in range(2):
            save_jpeg(root / "train" / c / f"{i}.jpg", np.full((40, 50, 3), colour + i, np.uint8))
    folder = root / "train" / "a"
    (folder / "l1").symlink_to(".")  # two links to the folder itself: walked naively, exponentially many paths
    (folder / "l2").symlink_to(".")
    (folder / "again.jpg").symlink_to(folder / "0.jpg")  # one image under two names
    (folder / "nested").mkdir()
    (folder / "nested" / "up").symlink_to(root / "train")  # a cycle through the split above
    os.mkfifo(folder / "pipe.jpg")  # a reader of it would wait for ever
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    done: list = []
    worker = threading.Thread(target=lambda: done.append(list_images(root, "train")), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "listing the folder did not end within a minute"
    images = done[0]
    assert sorted(Path(p).name for p in images.paths) == ["0.jpg", "0.jpg", "1.jpg", "1.jpg"]
    assert list(images.labels) == [0, 0, 1, 1]
    assert sum("pipe.jpg: not a regular file" in r.getMessage() for r in caplog.records) == 1
    assert sum("gone.jpg: not a regular file" in r.getMessage() for r in caplog.records) == 1


def test_only_photo_formats_are_decoded_and_eps_never_reaches_its_plugin(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self))
    Image.fromarray(gradient(64, 48)).save(tmp_path / "photo.eps", "EPS")  # PostScript: runs Ghostscript
    (tmp_path / "photo.jpg").write_bytes((tmp_path / "photo.eps").read_bytes())
    for name in ("photo.eps", "photo.jpg"):
        with pytest.raises(BadImageError) as err:
            preprocess(tmp_path / name)
        assert err.value.reason == "not an image"
    assert opened == []
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"):  # the formats photos come in are read
        Image.fromarray(gradient(64, 48)).save(tmp_path / f"photo.{fmt}", fmt)
        assert preprocess(tmp_path / f"photo.{fmt}").shape == (256, 256, 3)


def test_a_phones_mpo_photo_is_decoded_at_reduced_scale_as_a_jpeg_is(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    drafted, draft = [], JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, *args: drafted.append(self.format) or draft(self, *args))
    big = Image.fromarray(gradient(1600, 1200))
    big.save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[big.resize((160, 120))])
    assert Image.open(tmp_path / "phone.jpg").format == "MPO"
    assert preprocess(tmp_path / "phone.jpg").shape == (256, 256, 3) and drafted == ["MPO"]


def test_fuzz_every_damaged_image_decodes_or_is_refused_in_bounded_time_and_memory():
    outcomes, start = Counter(), time.monotonic()

    def decode_all() -> None:
        for data in mutants(400, seed=0):
            try:
                pixels = preprocess(io.BytesIO(data))
                assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
                outcomes["decoded"] += 1
            except BadImageError as err:  # a skipped-file line; anything else is a bug
                outcomes[err.reason] += 1

    assert peak_growth(decode_all) < 400  # MiB: no declared size is believed beyond the pixel limit
    assert time.monotonic() - start < 60 and sum(outcomes.values()) == 400
    assert {"decoded", "truncated", "not an image", "too many pixels"} <= set(outcomes), outcomes


def test_a_gray_image_gives_its_rgb_copys_pixels_from_a_third_of_the_memory(tmp_path):
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 256, (300, 400), dtype=np.uint8))
    for name, image in (("gray.png", gray), ("gray.jpg", gray), ("bits.png", gray.convert("1"))):
        image.save(tmp_path / name)
        Image.open(tmp_path / name).convert("RGB").save(tmp_path / f"{name}.rgb.png")
        assert np.array_equal(preprocess(tmp_path / name), preprocess(tmp_path / f"{name}.rgb.png")), name
    bomb = bomb_png(6000, 5000)  # 1 bit a pixel: 30 million pixels, one byte each once decoded
    assert peak_growth(lambda: preprocess(io.BytesIO(bomb))) < 3 * 30e6 / 2**20  # not RGB's 4 more


@pytest.mark.parametrize("mode, suffix", [("P", "png"), ("P", "gif"), ("RGBA", "png"), ("LA", "png"),
                                          ("L", "png"), ("CMYK", "jpg"), ("1", "png")])
def test_every_mode_is_converted_as_pil_converts_it_to_rgb(tmp_path, mode, suffix):
    picture = Image.fromarray(gradient(400, 300)).convert(mode)  # a palette, an alpha channel, gray, print inks
    picture.save(tmp_path / f"image.{suffix}")
    stored = Image.open(tmp_path / f"image.{suffix}")
    pixels = preprocess(tmp_path / f"image.{suffix}")
    assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - hand_preprocess(stored.convert("RGB"))).max() <= 2
