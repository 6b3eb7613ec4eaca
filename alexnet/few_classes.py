"""What a run on fewer classes than ImageNet's takes where the command line leaves it open, and why.

§5's recipe trained on ImageNet's 1000 classes. On a few classes two things go wrong at its learning rate
(docs/reproduction.md, "What the defaults do on a few classes" and "The defaults on a few classes: clipped
gradients"): §5's initialization dies, and from any initialization the steps leap as the network learns. So
below PAPER_CLASSES classes a run starts from the `centered` initialization and clips its gradient at CLIP;
from PAPER_CLASSES on it is §5's recipe. (Every run takes stratified batches, on any data: §5 does not say how
it ordered them.)
"""

PAPER_CLASSES = 1000  # from this many classes on, §5's initialization and steps train at §5's learning rate
# Below PAPER_CLASSES classes a step's gradient is scaled down to this norm where it is longer. On a few classes
# fc8's steepest direction, fc7's mean output, turns unstable at §5's rate as the network learns, and the loss leaps;
# the gradient's norm, 2-4.5 in a steady step, reaches 10-28 in a leap.
CLIP = 5.0


def default_init(arch: str, classes: int) -> tuple[str, str]:
    """The initialization an architecture gets when none is named, and why.

    §5's (weights N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7) makes fc7's 4096 outputs start
    near 1, so that a step of fc8 moves every logit by about lr·4096 times its gradient. On ImageNet's
    1000 classes that gradient averages out; on a few classes it does not. Measured at §5's learning rate
    on 2, 3 and 4 classes of Imagenette: the loss rises 2-45 nats above ln(classes) within ten steps,
    comes back to ln(classes) and stays there while fc7's units stop firing (DeadGuard); a warm-up of one
    epoch delays the rise but does not prevent it (2, 3 and 10 classes). PyTorch's default initialization
    learned on 2, 3 and 10 classes, its fc7 units firing throughout, but slowly: 14 steps on 10 classes did
    not move the loss 0.1 below ln 10. "centered" moves it there, with stratified batches; on 2 and 3 classes
    it needs the clipped gradient that goes with it (default_clip).
    """
    if arch == "owt":
        return "torchvision", "torchvision's own"
    if arch == "caffenet":
        return "caffe", "Caffe's own"
    if classes >= PAPER_CLASSES:
        return "paper", "§5's"
    return "centered", "§5's dies on few classes at §5's learning rate; --init paper for it"


def default_clip(classes: int) -> tuple[float, str]:
    """The gradient norm a run clips at when --clip is not given (0: none), and why (CLIP)."""
    if classes >= PAPER_CLASSES:
        return 0.0, "§5's"
    return CLIP, f"below {PAPER_CLASSES} classes; --clip 0 for §5's steps"
