"""A run that fails stops itself: its loss became NaN or infinite, or its network died (DeadGuard)."""

import math


class DivergedError(RuntimeError):
    """Training failed and stopped itself: the loss became NaN or infinite, or the network died."""


class DeadGuard:
    """Tells when the network has died: for `steps` steps nearly all of fc7's units stayed off (fewer than
    ALIVE of them fired for any image of a batch), so that the outputs hardly depend on the image, and the
    training loss over those steps was no better than a constant guess's (not below ln(classes) by more than
    MARGIN), after the loss had once moved more than MOVED away from ln(classes). Units that are off for
    every image get no gradient and never fire again. A slow start, which has not moved away yet, does not
    count; nor does a network whose fc7 units fire.

    Measured: the paper's initialization at the paper's learning rate on 4 classes of the built-in photos
    (batch 16): the loss goes 2.0 → 36.8 in two steps, then sits at 1.28-1.56 (ln 4 = 1.386) for good,
    while the fraction of fc7 units that fire falls from 100% to 5% within 20 steps and to 0.1% by step
    70; in healthy runs (Caffe's and PyTorch's initializations, on 2 to 10 classes) it stays at 98-100%."""

    MARGIN, MOVED, ALIVE = 0.05, 0.25, 0.05

    def __init__(self, classes: int, steps: int = 30):
        self.chance, self.steps = math.log(classes), steps
        self.moved, self.flat, self.loss = False, 0, 0.0

    def dead(self, loss: float, loss_range: float, alive: float, steps: int) -> bool:
        """Count `steps` more steps of mean loss `loss`, largest |loss − ln(classes)| `loss_range` and largest
        fraction of fc7 units firing for some image of a batch `alive`; True when the network has died."""
        self.moved |= loss_range > self.MOVED
        if self.moved and alive < self.ALIVE:
            self.flat, self.loss = self.flat + steps, self.loss + loss * steps
        else:
            self.flat, self.loss = 0, 0.0
        return self.flat >= self.steps and self.chance - self.loss / self.flat < self.MARGIN
