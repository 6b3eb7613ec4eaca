import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import big_photo, photos_source

from alexnet.data.folders import list_images, preprocess
from alexnet.data.loader import Loader, epoch_order, stratified_order
from alexnet.data.store import StoreSplit, prepare

N = 15  # photos in the fixture: batches of 4 end with a short batch of 3, batches of 14 with one of 1


@pytest.fixture
def photos(tmp_path):
    """A small ImageNet-layout train folder of real photos: 3 classes (5, 5, 4 files) and a full-size photo."""
    root = tmp_path / "photos"
    source = photos_source() / "train"
    for wnid, count in zip(sorted(p.name for p in source.iterdir())[:3], (5, 5, 4), strict=True):
        (root / "train" / wnid).mkdir(parents=True)
        for f in sorted((source / wnid).iterdir())[:count]:
            shutil.copy(f, root / "train" / wnid / f.name)
    big_photo(root / "train" / "n01440764" / "big.JPEG")  # tench, the first class: non-square, large
    return root


@pytest.fixture
def split(photos, tmp_path) -> StoreSplit:
    return prepare(photos, tmp_path / "store", workers=1, progress=False).split("train")


def run(loader: Loader, epoch: int = 0, start: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """An epoch's batches as numpy arrays: (images, labels, indices)."""
    return [(images.numpy(), labels.numpy(), indices) for images, labels, indices in loader.epoch(epoch, start)]


def order(batches) -> list[int]:
    return np.concatenate([indices for _, _, indices in batches]).tolist()


def test_store_dataset_fixture_holds_the_photos(split):
    assert len(split) == N and split.labels.tolist() == [0] * 6 + [1] * 5 + [2] * 4


@pytest.mark.parametrize("shuffle", [False, True])
def test_an_epoch_visits_every_image_exactly_once_with_its_label(split, shuffle):
    batches = run(Loader(split, 4, shuffle=shuffle, seed=3))
    assert [len(indices) for _, _, indices in batches] == [4, 4, 4, 3]
    assert sorted(order(batches)) == list(range(N))
    assert (order(batches) == list(range(N))) is not shuffle
    for images, labels, indices in batches:
        assert images.dtype == np.uint8 and images.shape == (len(indices), 256, 256, 3)
        assert labels.dtype == np.int64 and labels.tolist() == split.labels[indices].tolist()
        assert np.array_equal(images, split.read(indices))
        for label, i in zip(labels, indices, strict=True):  # the label is the image's class folder
            assert split.files[i].split("/")[-2] == split.classes[label]


def test_shuffled_order_differs_per_epoch_and_repeats_for_the_same_seed_and_epoch(split):
    a = Loader(split, 4, shuffle=True, seed=7)
    orders = [order(run(a, epoch)) for epoch in range(3)]
    assert len({tuple(o) for o in orders}) == 3
    assert order(run(Loader(split, 4, shuffle=True, seed=7), 1)) == orders[1]  # a fresh loader: same order
    assert order(run(Loader(split, 4, shuffle=True, seed=8), 1)) != orders[1]


@pytest.mark.parametrize(("shares", "batch", "shuffled"), [((85,) * 10, 128, 5), ((300, 200, 100), 128, 5),
                                                      ((13,) * 1000, 128, 3), ((5, 5, 4), 4, 1.5)])
def test_a_training_order_gives_every_batch_each_class_in_its_share(shares, batch, shuffled):
    labels = np.repeat(np.arange(len(shares)), shares)
    worst = {"stratified": 0.0, "shuffled": 0.0}
    for epoch in range(20):
        for way, order in (("stratified", stratified_order(labels, 3, epoch)),
                           ("shuffled", epoch_order(len(labels), 3, epoch, shuffle=True))):
            assert sorted(order.tolist()) == list(range(len(labels)))
            for first in range(0, len(labels), batch):
                counts = np.bincount(labels[order[first:first + batch]], minlength=len(shares))
                expected = np.asarray(shares) * (len(order[first:first + batch]) / len(labels))
                worst[way] = max(worst[way], np.abs(counts - expected).max())
    # each class spread evenly over the epoch: off its share by less than 2 images in every batch, where a plain
    # shuffle's counts swing further (the built-in photos' shares, 12.8 of each class a batch: by 9.2 in these draws)
    assert worst["stratified"] < 2 and worst["shuffled"] >= shuffled
    assert np.array_equal(stratified_order(labels, 3, 1), stratified_order(labels, 3, 1))
    assert not np.array_equal(stratified_order(labels, 3, 1), stratified_order(labels, 3, 2))


def test_resuming_at_batch_k_yields_exactly_the_batches_from_k_on(split):
    loader = Loader(split, 4, shuffle=True, seed=1)
    whole, resumed = run(loader, 5), run(loader, 5, start=2)
    assert len(resumed) == 2
    for (images, labels, indices), (images_r, labels_r, indices_r) in zip(whole[2:], resumed, strict=True):
        assert indices.tolist() == indices_r.tolist() and labels.tolist() == labels_r.tolist()
        assert np.array_equal(images, images_r)
    assert run(loader, 5, start=len(loader)) == []


@pytest.mark.parametrize("batch_size", [4, 14])
def test_two_ranks_split_each_global_batch_into_disjoint_slices_that_make_it_whole(split, batch_size):
    single = run(Loader(split, batch_size, shuffle=True, seed=2), 3)
    ranks = [run(Loader(split, batch_size, shuffle=True, seed=2, rank=r, world=2), 3) for r in (0, 1)]
    # batches of 14 end with one image, which cannot be split over two processes: both ranks drop it
    expected = single if batch_size == 4 else single[:-1]
    assert len(ranks[0]) == len(ranks[1]) == len(expected)
    for whole, part0, part1 in zip(expected, *ranks, strict=True):
        assert not set(part0[2]) & set(part1[2]) and len(part0[2]) >= len(part1[2]) >= 1
        for k in range(3):  # images, labels, indices: rank 0's slice, then rank 1's
            assert np.array_equal(np.concatenate([part0[k], part1[k]]), whole[k])
    assert [len(b[2]) for b in ranks[0]] == ([2, 2, 2, 2] if batch_size == 4 else [7])
    assert [len(b[2]) for b in ranks[1]] == ([2, 2, 2, 1] if batch_size == 4 else [7])


@pytest.mark.parametrize(("batch_size", "world", "batches"), [(4, 1, 4), (14, 1, 2), (4, 2, 4), (14, 2, 1), (16, 2, 1)])
def test_len_is_the_number_of_batches_yielded(split, photos, batch_size, world, batches):
    for source in (split, list_images(photos, "train")):
        for rank in range(world):
            loader = Loader(source, batch_size, shuffle=True, rank=rank, world=world, workers=0)
            assert len(loader) == len(run(loader)) == batches


def test_jpeg_folders_give_the_same_images_labels_and_indices_as_the_store(split, photos):
    images = list_images(photos, "train")
    assert [str(p) for p in images.paths] == split.files
    from_store = run(Loader(split, 4, shuffle=True, seed=4), 2)
    for workers in (0, 2):
        from_jpegs = run(Loader(images, 4, shuffle=True, seed=4, workers=workers), 2)
        assert len(from_jpegs) == len(from_store) == 4
        for (a, la, ia), (b, lb, ib) in zip(from_store, from_jpegs, strict=True):
            assert isinstance(ib, np.ndarray) and ib.tolist() == ia.tolist()
            assert lb.tolist() == la.tolist()
            assert np.array_equal(a, b)  # both did the §2 preprocessing, to the byte


def test_a_bad_file_is_skipped_reported_once_and_does_not_shift_labels(photos, caplog):
    classes = sorted(p.name for p in (photos / "train").iterdir())
    (photos / "train" / classes[0] / "empty.JPEG").write_bytes(b"")
    good = sorted((photos / "train" / classes[1]).iterdir())[0]
    (photos / "train" / classes[1] / "cut.JPEG").write_bytes(good.read_bytes()[:600])
    images = list_images(photos, "train")
    bad = {i for i, p in enumerate(images.paths) if p.name in ("empty.JPEG", "cut.JPEG")}
    assert len(images) == N + 2 and len(bad) == 2
    loader = Loader(images, 4, shuffle=True, seed=5, workers=2)
    for epoch in range(2):
        batches = run(loader, epoch)
        assert sorted(order(batches)) == sorted(set(range(N + 2)) - bad)
        for pixels, labels, indices in batches:
            for image, label, i in zip(pixels, labels, indices, strict=True):
                assert images.paths[i].parent.name == classes[label]
                assert np.array_equal(image, preprocess(images.paths[i]))
    assert dict(loader.bad.counts) == {"empty file": 1, "truncated": 1}  # two files, not two per epoch
    assert sum("skipped" in r.message for r in caplog.records) == 2


def test_an_error_while_reading_ahead_reaches_the_consumer(split, monkeypatch):
    calls = []

    def failing_read(indices, out):
        calls.append(indices)
        if len(calls) == 2:
            raise OSError("disk gone")
        out[:] = 0
        return out

    monkeypatch.setattr(split, "read", failing_read)
    outcome = []

    def consume():
        try:
            run(Loader(split, 4, shuffle=False))
        except OSError as err:
            outcome.append(str(err))

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(30)
    assert not consumer.is_alive(), "the loader hangs after a read error"
    assert outcome == ["disk gone"]


def test_leaving_an_epoch_early_stops_the_read_ahead_thread(split):
    before = threading.active_count()
    batches = Loader(split, 4, shuffle=True).epoch(0)
    images, labels, indices = next(batches)
    assert isinstance(images, torch.Tensor) and len(indices) == 4
    batches.close()
    assert threading.active_count() == before
