"""The paper's SGD update rule and its learning-rate schedule, with the common alternatives (paper §5)."""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .errors import InputError

SCHEDULES = ("plateau", "step", "cosine")


class PaperSGD(torch.optim.Optimizer):
    """§5 exactly: v ← momentum·v − weight_decay·lr·w − lr·∂L/∂w;  w ← w + v.

    The velocity carries the learning rate, so right after a learning-rate drop the step differs
    from torch.optim.SGD's (whose buffer does not); while the rate is constant the two are identical.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient."""
        loss = None if closure is None else closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            velocity = [self.state[p].setdefault("velocity", torch.zeros_like(p)) for p in params]
            lr = group["lr"]
            torch._foreach_mul_(velocity, group["momentum"])
            torch._foreach_add_(velocity, params, alpha=-group["weight_decay"] * lr)
            torch._foreach_add_(velocity, [p.grad for p in params], alpha=-lr)
            torch._foreach_add_(params, velocity)
        return loss


def build_optimizer(name: str, params: Iterable, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """"paper" (the update rule above) or "sgd" (torch.optim.SGD with the same hyper-parameters)."""
    if name == "paper":
        return PaperSGD(params, lr, momentum, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise InputError(f"unknown optimizer {name!r}; expected paper or sgd")


@dataclass
class Schedule:
    """The learning rate by epoch: the paper's divide-by-10-on-plateau, or step or cosine, with a warm-up.

    plateau (§5): divide by 10 when the validation error has not improved by `min_delta` for
    `patience` epochs, at most `max_drops` times (the paper: three). Before the error has improved
    once it has not "stopped improving": a flat start (as with Caffe's initialization) costs no drop.
    step: divide by 10 every `step_size` epochs (the PyTorch ImageNet example: 30). cosine: from lr to 0 over `epochs`.
    Warm-up: linear from lr / (warm-up steps) to lr over the first `warmup_epochs`.

    The settings (the fields up to steps_per_epoch) are a run's, given as plain values; the state (the fields
    after them) is what a checkpoint keeps, so that a resumed run follows its own, possibly changed, settings.
    """

    kind: str
    lr: float
    epochs: int
    warmup_epochs: float
    step_size: int
    patience: int
    min_delta: float
    max_drops: int
    steps_per_epoch: int
    drops: int = 0
    best: float = math.inf
    bad_epochs: int = 0
    improved: bool = False

    STATE = ("drops", "best", "bad_epochs", "improved")

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise InputError(f"unknown schedule {self.kind!r}; expected one of {', '.join(SCHEDULES)}")

    def state_dict(self) -> dict:
        """The state a checkpoint keeps: drops so far, the best error, epochs without improvement."""
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state."""
        for k in self.STATE:
            setattr(self, k, state[k])

    def rate(self, epoch: float) -> float:
        """The learning rate of the step that starts at a (fractional) epoch, counted from 0."""
        if self.kind == "plateau":
            lr = self.lr * 0.1**self.drops
        elif self.kind == "step":
            lr = self.lr * 0.1 ** (int(epoch) // self.step_size)
        else:
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * min(epoch / self.epochs, 1.0)))
        if epoch < self.warmup_epochs:
            lr *= (epoch * self.steps_per_epoch + 1) / (self.warmup_epochs * self.steps_per_epoch)
        return lr

    def end_epoch(self, val_error: float) -> bool:
        """Record an epoch's validation error; True when the plateau rule just divided the rate."""
        if self.kind != "plateau":
            return False
        if val_error < self.best - self.min_delta:
            self.improved |= self.best < math.inf
            self.best, self.bad_epochs = val_error, 0
            return False
        if not self.improved:
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience or self.drops >= self.max_drops:
            return False
        self.drops, self.bad_epochs = self.drops + 1, 0
        return True
