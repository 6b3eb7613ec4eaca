"""Local response normalization (paper §3.3): the formulas, and a fused CPU kernel for speed.

    b[i] = a[i] / (k + alpha * sum_{j = i - n/2}^{i + n/2} a[j]^2) ^ beta

with n = 5, alpha = 1e-4, beta = 0.75. Implementations disagree on two constants (docs/paper.md#lrn), so each
reading is a named formula. In the two-tower network each tower normalizes its own channels: the
window never crosses the tower boundary.
"""

from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .kernels import cpu_kernels

WINDOW, ALPHA, BETA = 5, 1e-4, 0.75


class Formula(NamedTuple):
    """The constants of one reading of §3.3, with alpha as it multiplies the sum of squares."""

    alpha: float
    k: float


FORMULAS = {
    "paper": Formula(ALPHA, 2.0),  # §3.3 taken literally: alpha not divided by n
    "cuda-convnet": Formula(ALPHA / WINDOW, 2.0),  # Krizhevsky's released code divides by n
    "caffe": Formula(ALPHA / WINDOW, 1.0),  # Caffe's reference AlexNet: alpha / n, k = 1
}
MODES = (*FORMULAS, "none")


def local_response_norm(x: torch.Tensor, alpha: float, k: float, towers: int = 1, size: int = WINDOW,
                        beta: float = BETA) -> torch.Tensor:
    """The formula in plain PyTorch ops, in float32 or wider: any device, any dtype, autograd for free."""
    n, c, h, w = x.shape
    a = x.double() if x.dtype == torch.float64 else x.float()
    squares = a.square().reshape(n * towers, 1, c // towers, h * w)
    # Zero-padded window of `size` (odd) channels; avg_pool counts the padding, so avg * size is the sum.
    window = F.avg_pool2d(squares, (size, 1), stride=1, padding=(size // 2, 0)) * size
    d = (k + alpha * window).reshape(n, c, h, w)
    return (a * d.pow(-beta)).to(x.dtype)


def cpu_kernel() -> ModuleType | None:
    """The compiled kernels with the fused LRN (csrc/lrn.cpp, vectorized for this CPU), or None where not built."""
    return cpu_kernels()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A channels-last (N, C, H, W) tensor as contiguous (N*H*W, C) rows, without copying when possible."""
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _unrows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


class _KernelLRN(torch.autograd.Function):
    """The fused kernel: apply(x, alpha, beta, k, size, towers, relu), the constants as the formula's."""

    @staticmethod
    def forward(ctx, x, alpha, beta, k, size, towers, relu):
        rows = _rows(x)
        ctx.save_for_backward(rows)
        ctx.constants = alpha, beta, k, size, towers, relu
        return _unrows(cpu_kernel().lrn_forward(rows, *ctx.constants), x.shape)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        grad_rows = cpu_kernel().lrn_backward(rows, _rows(grad), *ctx.constants)
        return _unrows(grad_rows, grad.shape), *(None,) * len(ctx.constants)


class LRN(nn.Module):
    """Local response normalization across channels, per tower, with a named formula (§3.3).

    With relu=True the module takes the pre-activation and applies the ReLU first (§3.1: "applied
    after applying the ReLU nonlinearity"); the kernel fuses the two, sparing the ReLU's own passes.
    """

    def __init__(self, mode: str = "paper", towers: int = 1, relu: bool = False):
        super().__init__()
        if mode not in MODES:
            raise InputError(f"unknown LRN formula {mode!r}; expected one of {', '.join(MODES)}")
        self.mode, self.towers, self.relu = mode, towers, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return F.relu(x) if self.relu else x
        alpha, k = FORMULAS[self.mode]
        if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.compiler.is_exporting()
                and cpu_kernel() is not None):  # torch.export (and ONNX through it) sees the formula's plain ops
            return _KernelLRN.apply(x, alpha, BETA, k, WINDOW, self.towers, self.relu)
        return local_response_norm(F.relu(x) if self.relu else x, alpha, k, self.towers, WINDOW, BETA)

    def extra_repr(self) -> str:
        text = repr(self.mode)
        if self.mode != "none":
            alpha, k = FORMULAS[self.mode]
            text += f", size={WINDOW}, alpha={alpha:g}, beta={BETA}, k={k:g}, towers={self.towers}"
        return text + (", relu=True" if self.relu else "")
