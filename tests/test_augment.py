import numpy as np
import pytest
import torch

import alexnet.data.augment
from alexnet.data.augment import center_crop, ten_crop, train_batch
from alexnet.data.stats import Recipe
from alexnet.kernels import cpu_kernels


def coordinate_images(b: int) -> torch.Tensor:
    """Pixel (y, x) of every image holds (y, x, image index): a crop shows where it came from."""
    y, x = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    img = torch.stack([y, x, torch.zeros_like(y)], -1)
    img = img[None].repeat(b, 1, 1, 1)
    img[..., 2] = torch.arange(b)[:, None, None]
    return img.to(torch.uint8)


def no_stats() -> Recipe:
    return Recipe(torch.zeros(256, 256, 3), torch.zeros(3), torch.eye(3))


def test_crops_cover_every_offset_and_flips_are_even():
    images = coordinate_images(250)
    tops, lefts, flips = [], [], []
    for epoch in range(16):
        out = train_batch(images, no_stats(), 224, seed=0, epoch=epoch, indices=np.arange(250))
        assert out.shape == (250, 3, 224, 224) and out.is_contiguous(memory_format=torch.channels_last)
        first, last = out[:, 1, 0, 0], out[:, 1, 0, -1]  # x coordinate of the first and last column
        flipped = first > last
        tops.append(out[:, 0, 0, 0])
        lefts.append(torch.where(flipped, last, first))
        flips.append(flipped)
        # every row and column is consecutive: a real crop, not a resampling
        assert (out[:, 0, 1:, 0] - out[:, 0, :-1, 0] == 1).all()
        assert ((out[:, 1, 0, 1:] - out[:, 1, 0, :-1]).abs() == 1).all()
        assert torch.equal(out[:, 2, 0, 0], torch.arange(250).float())  # each image stays itself
    tops, lefts, flips = torch.cat(tops), torch.cat(lefts), torch.cat(flips).float()
    assert set(tops.long().tolist()) == set(range(33)) and set(lefts.long().tolist()) == set(range(33))
    assert 0.47 < flips.mean().item() < 0.53


def test_227_crops_take_offsets_up_to_29():
    out = train_batch(coordinate_images(500), no_stats(), 227, seed=1, epoch=0, indices=np.arange(500))
    assert out.shape[-1] == 227 and out[:, 0, 0, 0].max() == 29


def test_colour_noise_follows_the_eigenvectors_with_the_paper_magnitude():
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2)))
    eigval = torch.tensor([0.2, 0.02, 0.005])  # on the [0, 1] pixel scale, as ImageNet's
    recipe = Recipe(torch.full((40, 40, 3), 100.0), eigval, q)  # small images: the noise ignores size
    images = torch.full((4000, 40, 40, 3), 100, dtype=torch.uint8)
    out = train_batch(images, recipe, 32, seed=3, epoch=0, indices=np.arange(4000))
    shift = out[:, :, 0, 0]  # image − mean = 0, so each pixel is the colour shift alone
    assert torch.allclose(out, shift[:, :, None, None].expand_as(out))  # the same shift at every pixel
    alpha = (shift / 255 @ q) / eigval  # coordinates along p1..p3 on the [0, 1] scale, over the eigenvalues
    assert alpha.mean(0).abs().max() < 0.01
    assert torch.allclose(alpha.std(0), torch.full((3,), 0.1), rtol=0.05)


def test_mean_image_is_subtracted_at_the_same_pixels():
    mean = torch.rand(256, 256, 3) * 255
    images = coordinate_images(64)
    out = train_batch(images, Recipe(mean, torch.zeros(3), torch.eye(3)), 224, 4, 0, np.arange(64))
    bare = train_batch(images, no_stats(), 224, 4, 0, np.arange(64))
    ys, xs = bare[:, 0].long(), bare[:, 1].long()
    expected = bare - mean[ys, xs].permute(0, 3, 1, 2)
    assert torch.allclose(out, expected, atol=1e-4)


def test_draws_depend_on_seed_epoch_and_index_only():
    images = coordinate_images(8)
    a = train_batch(images, no_stats(), 224, 5, 2, np.arange(8))
    assert torch.equal(a, train_batch(images, no_stats(), 224, 5, 2, np.arange(8)))
    # the same images in two halves, as two processes would see them: the same crops
    halves = [train_batch(images[i:i + 4], no_stats(), 224, 5, 2, np.arange(i, i + 4)) for i in (0, 4)]
    assert torch.equal(torch.cat(halves), a)
    assert not torch.equal(a, train_batch(images, no_stats(), 224, 5, 3, np.arange(8)))  # another epoch
    assert not torch.equal(a, train_batch(images, no_stats(), 224, 6, 2, np.arange(8)))  # another seed


def test_centre_and_ten_crops_equal_hand_computed_patches():
    g = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (3, 256, 256, 3), dtype=torch.uint8, generator=g)
    mean = torch.rand(256, 256, 3, generator=g) * 255
    recipe = Recipe(mean, torch.zeros(3), torch.eye(3))
    centred = (images.float() - mean).permute(0, 3, 1, 2)  # (3, 3, 256, 256)
    corners = ((0, 0), (0, 32), (32, 0), (32, 32), (16, 16))
    by_hand = [centred[:, :, top:top + 224, left:left + 224] for top, left in corners]
    by_hand += [p.flip(-1) for p in by_hand]
    views = ten_crop(images, recipe, 224)
    assert len(views) == 10
    for view, expected in zip(views, by_hand, strict=True):
        assert torch.allclose(view, expected, atol=1e-4)
    assert torch.allclose(center_crop(images, recipe, 224), by_hand[4], atol=1e-4)


@pytest.mark.parametrize("crop", [224, 227])
def test_ten_crop_sizes(crop):
    views = ten_crop(coordinate_images(2), no_stats(), crop)
    assert all(v.shape == (2, 3, crop, crop) for v in views)
    assert views[3][0, 0, 0, 0].item() == 256 - crop  # bottom-right corner starts at 256 − crop


@pytest.mark.skipif(cpu_kernels() is None, reason="the CPU kernels are not built here")
def test_kernel_and_plain_pytorch_make_the_same_batches(monkeypatch):
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (16, 256, 256, 3), dtype=torch.uint8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    recipe = Recipe(torch.rand(256, 256, 3, generator=g) * 255, torch.tensor([0.2, 0.02, 0.005]), q)
    fast = train_batch(images, recipe, 224, 8, 0, np.arange(16))
    fast_views = ten_crop(images, recipe)
    monkeypatch.setattr(alexnet.data.augment, "cpu_kernels", lambda: None)
    plain = train_batch(images, recipe, 224, 8, 0, np.arange(16))
    assert torch.allclose(fast, plain, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(fast_views, ten_crop(images, recipe), strict=True))
