import pytest
import torch

from alexnet.lrn import BETA, FORMULAS, LRN, WINDOW, _KernelLRN, cpu_kernel, local_response_norm

# the window's size and beta: the paper's, others that every implementation must take as given, and each path of the
# kernel (the window of 5 with another beta, another window with the paper's beta)
SIZES_AND_BETAS = [(WINDOW, BETA), (3, 0.5), (7, 1.0), (WINDOW, 1.0), (3, BETA)]


def lrn_loop(x: torch.Tensor, alpha: float, k: float, towers: int, size: int = WINDOW,
             beta: float = BETA) -> torch.Tensor:
    """§3.3 written out channel by channel, in float64, window clipped to the tower."""
    x = x.double()
    out = torch.empty_like(x)
    per_tower = x.shape[1] // towers
    for i in range(x.shape[1]):
        first, last = (i // per_tower) * per_tower, (i // per_tower + 1) * per_tower - 1
        lo, hi = max(first, i - size // 2), min(last, i + size // 2)
        total = sum(x[:, j] ** 2 for j in range(lo, hi + 1))
        out[:, i] = x[:, i] / (k + alpha * total) ** beta
    return out


def sample(channels: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, channels, 5, 7, generator=g).relu()


needs_kernel = pytest.mark.skipif(cpu_kernel() is None, reason="the CPU kernels are not built here")


@pytest.mark.parametrize("mode", list(FORMULAS))
@pytest.mark.parametrize("towers", [1, 2])
def test_lrn_formula_matches_loop(mode, towers):
    x = sample()
    alpha, k = FORMULAS[mode]
    expected = lrn_loop(x, alpha, k, towers).float()
    assert (local_response_norm(x, alpha, k, towers) - expected).abs().max() <= 1e-6
    assert (LRN(mode, towers)(x) - expected).abs().max() <= 1e-6
    assert (LRN(mode, towers)(x.contiguous(memory_format=torch.channels_last)) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("size,beta", SIZES_AND_BETAS)
@pytest.mark.parametrize("towers", [1, 2])
def test_lrn_formula_takes_the_size_and_beta_it_is_given(size, beta, towers):
    x = sample(channels=24)
    alpha, k = 0.01, 2.0  # a large alpha, so that every channel of the window counts
    expected = lrn_loop(x, alpha, k, towers, size, beta)
    assert (local_response_norm(x.double(), alpha, k, towers, size, beta) - expected).abs().max() <= 1e-12
    if (size, beta) != (WINDOW, BETA):
        assert (lrn_loop(x, alpha, k, towers) - expected).abs().max() > 1e-2  # the pair changes the result


def test_lrn_formulas_differ_as_specified():
    x = sample()
    paper, convnet, caffe = (LRN(mode)(x) for mode in ("paper", "cuda-convnet", "caffe"))
    assert not torch.allclose(paper, convnet) and not torch.allclose(convnet, caffe)
    # paper alpha = 5 × cuda-convnet alpha on the same sum of squares
    assert torch.allclose(paper, local_response_norm(x, 5 * FORMULAS["cuda-convnet"].alpha, 2.0), atol=1e-6)
    assert torch.equal(LRN("none")(x), x)


def test_lrn_border_channels_use_a_clipped_window():
    x = torch.zeros(1, 16, 1, 1)
    x[0, :3, 0, 0] = torch.tensor([3.0, 4.0, 5.0])
    out = LRN("paper")(x)
    # channel 0 sees channels 0..2 only; channel 2 sees 0..4
    assert out[0, 0, 0, 0].item() == pytest.approx(3.0 / (2 + 1e-4 * (9 + 16 + 25)) ** 0.75, rel=1e-6)
    assert out[0, 15, 0, 0].item() == 0.0


def test_lrn_window_does_not_cross_the_tower_boundary():
    x = torch.zeros(2, 96, 3, 3)
    x[:, 47] = 1.0  # last channel of tower one
    x[:, 48] = 100.0  # first channel of tower two, a neighbor only if the window crossed
    crossing, per_tower = LRN("paper", towers=1)(x), LRN("paper", towers=2)(x)
    assert per_tower[0, 47, 0, 0].item() == pytest.approx(1 / (2 + 1e-4) ** 0.75, rel=1e-6)
    assert crossing[0, 47, 0, 0].item() == pytest.approx(1 / (2 + 1e-4 * 10001) ** 0.75, rel=1e-6)


@pytest.mark.parametrize("mode", list(FORMULAS))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lrn_gradient_matches_autograd_of_formula(mode, layout):
    alpha, k = FORMULAS[mode]
    x = sample(seed=1).contiguous(memory_format=layout).requires_grad_()
    ref = x.detach().double().requires_grad_()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    LRN(mode, towers=2)(x).backward(grad)
    local_response_norm(ref, alpha, k, towers=2).backward(grad.double())
    assert (x.grad - ref.grad).abs().max() <= 1e-6 * ref.grad.abs().max().item() + 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lrn_with_fused_relu_equals_relu_then_lrn(dtype):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 256, 4, 6, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(z.shape, generator=g).to(dtype)
    fused_in, plain_in = z.clone().requires_grad_(), z.clone().requires_grad_()
    fused = LRN("paper", towers=2, relu=True)(fused_in)
    plain = LRN("paper", towers=2)(torch.relu(plain_in))
    fused.backward(grad)
    plain.backward(grad)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert (fused.float() - plain.float()).abs().max() <= tol
    assert (fused_in.grad.float() - plain_in.grad.float()).abs().max() <= tol
    assert (fused_in.grad[z <= 0] == 0).all()


@pytest.mark.parametrize("size,beta", SIZES_AND_BETAS)
def test_lrn_formula_passes_gradcheck(size, beta):
    x = sample(channels=10).double()[:1, :, :2, :2].requires_grad_()
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 1e-3, 2.0, 2, size, beta), (x,))


@pytest.mark.parametrize("mode", list(FORMULAS))
def test_lrn_bfloat16_matches_loop(mode):
    x = sample().bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    alpha, k = FORMULAS[mode]
    out = LRN(mode, towers=2)(x)
    assert out.dtype == torch.bfloat16
    expected = lrn_loop(x.detach().float(), alpha, k, towers=2)
    assert ((out.double() - expected).abs() / expected.abs().clamp_min(1e-2)).max() <= 2e-2
    out.float().sum().backward()
    ref = x.detach().double().requires_grad_()
    local_response_norm(ref, alpha, k, towers=2).sum().backward()
    assert (x.grad.double() - ref.grad).abs().max() <= 2e-2 * ref.grad.abs().max()


def test_lrn_under_bfloat16_autocast_on_cpu():
    conv = torch.nn.Conv2d(3, 96, 3)
    x = torch.randn(2, 3, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LRN("paper", towers=2)(conv(x).relu())
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@needs_kernel
def test_lrn_kernel_is_used_on_cpu():
    x = sample()
    out = LRN("paper", towers=2)(x.requires_grad_())
    assert out.grad_fn is not None and "KernelLRN" in type(out.grad_fn).__name__


@needs_kernel
@pytest.mark.parametrize("size,beta", SIZES_AND_BETAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("towers,per_tower", [(1, 1), (1, 7), (2, 21), (3, 37), (2, 48), (1, 130)])
def test_lrn_kernel_matches_the_formula(size, beta, dtype, relu, towers, per_tower):
    """Forward and backward against autograd of the formula in float64, for towers of any length: whole
    and partial vectors of AVX-512 (16 floats), AVX2 (8) and NEON (4); at the paper's size and beta, which
    have paths of their own, and at others."""
    alpha, k = 0.01, 2.0  # a large alpha, so that every channel of the window counts
    g = torch.Generator().manual_seed(per_tower)
    z = (3 * torch.randn(2, towers * per_tower, 3, 5, generator=g)).to(dtype)
    z = z.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(z.shape, generator=g).to(dtype)
    x = z.clone().requires_grad_()
    out = _KernelLRN.apply(x, alpha, beta, k, size, towers, relu)
    out.backward(grad)
    ref = z.double().requires_grad_()
    expected = local_response_norm(ref.relu() if relu else ref, alpha, k, towers, size, beta)
    expected.backward(grad.double())
    assert out.dtype == x.grad.dtype == dtype
    forward_tol, backward_tol = (1e-6, 1e-6) if dtype == torch.float32 else (2**-8, 1e-2)  # a bfloat16 rounding
    assert (out.double() - expected).abs().max() <= forward_tol * expected.abs().max()
    assert (x.grad.double() - ref.grad).abs().max() <= backward_tol * ref.grad.abs().max()
    if relu:
        assert (x.grad[z <= 0] == 0).all()


@needs_kernel
def test_lrn_kernel_refuses_an_even_window():
    with pytest.raises(RuntimeError, match="an odd size"):
        _KernelLRN.apply(sample().contiguous(memory_format=torch.channels_last), 1e-4, BETA, 2.0, 4, 1, False)
