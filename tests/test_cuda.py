"""The GPU paths against the CPU ones: augmentation, the model, training, evaluation (skipped without CUDA)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import photo_store

from alexnet.config import TrainConfig
from alexnet.data.augment import ten_crop, train_batch
from alexnet.data.stats import Recipe
from alexnet.record import NetworkRecord, build_model
from alexnet.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return photo_store(tmp_path_factory, train=24, val=6)


def test_gpu_batches_equal_cpu_batches():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 256, 256, 3), dtype=torch.uint8, generator=g)
    recipe = Recipe(255 * torch.rand(256, 256, 3, generator=g), torch.tensor([0.2, 0.02, 0.005]),
                    torch.linalg.qr(torch.randn(3, 3, generator=g))[0])
    indices = np.arange(100, 116)
    cpu = train_batch(images, recipe, 224, 0, 3, indices)
    gpu = train_batch(images.cuda(), recipe.to("cuda"), 224, 0, 3, indices)
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-3)
    for a, b in zip(ten_crop(images, recipe), ten_crop(images.cuda(), recipe.to("cuda")), strict=True):
        assert torch.allclose(b.cpu(), a, atol=1e-3)


def test_model_forward_and_gradients_on_the_gpu_match_the_cpu():
    torch.manual_seed(0)
    model = build_model(NetworkRecord.of("paper", 10), "caffe")
    x, y = torch.randn(8, 3, 224, 224), torch.arange(8)
    outputs, grads = [], []
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # the GPU in full float32
        for device in ("cpu", "cuda"):
            model = model.to(device).eval()  # no dropout, so both see the same network
            model.zero_grad()
            logits = model(x.to(device))
            torch.nn.functional.cross_entropy(logits, y.to(device)).backward()
            outputs.append(logits.detach().cpu().clone())  # .to() moves parameters and gradients in place
            grads.append(model.conv1.weight.grad.cpu().clone())
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-3, atol=1e-4)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_on_the_gpu_lowers_the_loss(store, tmp_path, precision):
    cfg = TrainConfig(data=str(store), device="cuda", precision=precision, epochs=6, dropout=0.0, batch_size=32,
                      lr=0.01, out=str(tmp_path), name="run", progress=False, save_every=0.0)
    rows = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["val_images"] == 24
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2


def alexnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=600)


def test_compiled_training_and_evaluation_on_the_gpu(store, tmp_path):
    trained = alexnet("train", "--data", str(store), "--device", "cuda", "--compile", "--epochs", "2",
                      "--batch-size", "32", "--no-progress", "--out", str(tmp_path), "--name", "run")
    assert trained.returncode == 0, trained.stderr
    errors = {}
    for device in ("cpu", "cuda"):  # the GPU-trained checkpoint evaluated on the CPU too
        out = alexnet("eval", str(tmp_path / "run" / "best.pt"), "--data", str(store), "--device", device,
                      "--precision", "fp32", "--crops", "10", "--json")
        assert out.returncode == 0, out.stderr
        errors[device] = json.loads(out.stdout)
    assert errors["cpu"]["images"] == errors["cuda"]["images"] == 24
    for key in ("top1_error", "top5_error"):  # a near-tie may fall the other way on one image
        assert errors["cpu"][key] == pytest.approx(errors["cuda"][key], abs=1 / 24 + 1e-9)
