"""The paper's SGD update rule and its learning-rate schedule, with the common alternatives (paper §5)."""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError

SCHEDULES = ("plateau", "step", "cosine")
SCALE = "lr_scale"  # a parameter group's learning rate as a factor of the schedule's


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
    """"paper" (the update rule above) or "sgd" (torch.optim.SGD with the same hyper-parameters), over parameters
    or parameter groups (parameter_groups), each group at its share of `lr` (set_rate)."""
    if name == "paper":
        optimizer = PaperSGD(params, lr, momentum, weight_decay)
    elif name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise InputError(f"unknown optimizer {name!r}; expected paper or sgd")
    set_rate(optimizer, lr)
    return optimizer


def parameter_groups(model: nn.Module, scaled: Iterable[str], factor: float) -> list[dict]:
    """The parameters of `model` that train (requires_grad) as an optimizer's groups: those of the layers `scaled`
    (by their paper names, model.layers()) at `factor` times the schedule's learning rate, the others at the rate
    itself; one group, in the model's order, where the factor is 1. A parameter that does not train is left out, and
    so takes neither steps nor weight decay."""
    layers = model.layers()
    slow = {id(p) for name in scaled if factor != 1 for p in layers[name].parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) in slow], SCALE: factor},
              {"params": [p for p in params if id(p) not in slow], SCALE: 1.0}]
    return [group for group in groups if group["params"]]


def set_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the schedule's learning rate: each group takes its share of it (SCALE; all of it in a group without one,
    as a checkpoint saved before groups had shares holds)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(SCALE, 1.0)


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
