"""The paper's small-scale experiments on CIFAR-10: ReLU against tanh (§3.1, Figure 1), local response
normalization (§3.3) and overlapping pooling (§3.4).

Each experiment trains two variants of one small network in turn, on the CPU, from the same initial
weights and through the same sequence of mini-batches, once for each of --seeds seeds, and writes into
its output folder:

    config.json     the settings of the run
    curves.csv      one row per variant, epoch and seed: training and test error, loss, learning rate, seconds,
                    threads
    results.json    per variant: final and best errors (the mean over seeds), training images/s; relu-vs-tanh:
                    epochs to 25%; per seed and over seeds (spread.py): the final test errors, the difference
                    between the variants seed by seed with a 95% interval and the seeds needed to tell it
                    from noise, and for relu-vs-tanh the ratio of epochs to 25%; the machine and wall time
    <name>.png      training error (relu-vs-tanh) or test error (lrn, pooling) against epochs, both variants,
                    mean and range over the seeds

The network. The paper's "four-layer convolutional neural network" (Figure 1; §3.3 on CIFAR-10) is not
specified further. We read it as Krizhevsky's own CIFAR-10 example for cuda-convnet, layers-18pct.cfg
(code.google.com/p/cuda-convnet, example-layers/; "18% error on CIFAR-10 in 20 minutes"): four learned
layers, conv 32 5×5 → pool 3/2 → norm → conv 32 5×5 → pool 3/2 → norm → conv 64 5×5 → pool 3/2 → fc 10,
pooling before normalization as there. Departures from that file: every pooling layer is max-pooling
(the file averages in pool2 and pool3; the paper's network and §3.4 use max), and the normalization is
this package's LRN across 5 channels (§3.3) where the file normalizes within each map over 3×3 pixels.

Training error (Figure 1) is the error on the mini-batches of an epoch as they were trained on, as
cuda-convnet reported it; test error is measured after each epoch on the whole test (or val) split.
"""

import argparse
import csv
import hashlib
import io
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.folders import BadFiles, BadImageError, ImageList, list_images, open_rgb
from .data.loader import epoch_order
from .data.stats import PixelStats
from .errors import InputError, count
from .files import atomic_write, cache_dir, write_json, write_text
from .lrn import LRN
from .optim import PaperSGD
from .options import COUNT, SEED, check, option
from .report import error_curves, out_folder, results_text
from .runtime import machine
from .spread import paired, spread

TARGET_ERROR = 0.25  # Figure 1: the epochs each network needs to reach 25% training error
CIFAR_SIDE = 32  # CIFAR-10 images are 32×32
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
FOUR_LAYER_INITS = ("lecun", "paper")


class FourLayerNet(nn.Module):
    """Figure 1's four-layer CNN for 32×32 images: three 5×5 conv layers and one fully connected layer."""

    def __init__(self, activation: str = "relu", lrn: str = "none", pool: tuple[int, int] = (3, 2),
                 classes: int = 10):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InputError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        size, stride = pool
        # ceil_mode rounds the pooled size up as cuda-convnet does: 32 → 16 → 8 → 4 for both 3/2 and 2/2, so
        # the pooling variants have the same shapes and weights. Max-pooling commutes with the ReLU and tanh
        # (both increasing), so pooling before the nonlinearity gives the same outputs for a quarter of the
        # work; layers-18pct applies conv1's ReLU after its pooling layer too.
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(size, stride, ceil_mode=True), act(), LRN(lrn),
            nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(size, stride, ceil_mode=True), act(), LRN(lrn),
            nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(size, stride, ceil_mode=True), act(),
        )
        self.classifier = nn.Linear(64 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) for a batch of (N, 3, 32, 32) images."""
        return self.classifier(torch.flatten(self.features(x), 1))


def init_four_layer(net: nn.Module, scheme: str) -> None:
    """Biases 0; weights N(0, 0.01) ("paper", §5) or N(0, 1/fan-in) ("lecun", LeCun et al. 1998)."""
    if scheme not in FOUR_LAYER_INITS:
        raise InputError(f"unknown initialization {scheme!r}; expected one of {', '.join(FOUR_LAYER_INITS)}")
    for layer in net.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            std = 0.01 if scheme == "paper" else 1 / math.sqrt(layer.weight[0].numel())
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)


@dataclass(frozen=True)
class FourLayerVariant:
    """One of the two networks an experiment compares, with its learning rate."""

    label: str
    lr: float
    activation: str = "relu"
    lrn: str = "none"
    pool: tuple[int, int] = (3, 2)

    def build(self, classes: int) -> FourLayerNet:
        """The untrained network (initialize it with `init_four_layer`)."""
        return FourLayerNet(self.activation, self.lrn, self.pool, classes)


@dataclass(frozen=True)
class Setup:
    """How one experiment trains its two variants."""

    title: str
    variants: tuple[FourLayerVariant, FourLayerVariant]
    curve: str  # "train" or "test": the error the figure shows
    pixels: str  # "raw": mean image subtracted, 0-255 scale (§2); "unit": also divided by the pixel std
    init: str
    # The default number of epochs: both variants, 3 seeds, on the full CIFAR-10 within the hour on a 2-core CPU
    # of either kind measured (batch 128, two threads, quiet; every variant within 5% of these): 1,260-1,570
    # training images/s on an AMD EPYC with AVX2 only (6 runs of 12 epochs: 45 minutes, measured), 2,150-2,300
    # on one with AVX-512 (6 runs of 25 epochs: 62 minutes, measured; of 12 epochs about 30, estimated).
    # Two threads on a busy machine fall to 300-900 images/s (threads waiting for each other); there, one
    # thread is faster, and ThreadChooser takes it.
    epochs: int = 12
    weight_decay: float = 0.0
    flip: bool = False
    drop_at: float = 1.0  # the learning rate is divided by 10 from this fraction of the epochs on
    paper: str = ""


# Figure 1 (§3.1): no regularization at all, each network at its own fastest learning rate. Unit-variance
# pixels and LeCun's initialization, the textbook setting for tanh: with raw pixels and N(0, 0.01)
# weights conv1's pre-activations have a std of about 5 and tanh would start saturated, which would
# measure the initialization rather than the nonlinearity. The learning rates are the best of a search
# (SGD with momentum 0.9, batch 128, training error in the second of two epochs over 10,000 random
# training images of CIFAR-10; seed 0):
#     rate    0.003  0.01   0.02   0.03   0.1    0.3
#     ReLU    0.591  0.554  0.569  0.612  0.899  -      (0.1: diverged)
#     tanh    0.612  0.533  -      0.498  0.772  0.831
RELU_VS_TANH = Setup(
    "ReLU vs tanh (Figure 1)",
    (FourLayerVariant("ReLU", lr=0.01, activation="relu"), FourLayerVariant("tanh", lr=0.03, activation="tanh")),
    curve="train", pixels="unit", init="lecun",
    paper="ReLU reached 25% training error six times faster than tanh (Figure 1)")

# §3.3 and §3.4 at small scale. LRN's constants (k = 2, alpha = 1e-4) are in the units of the paper's
# activations, which come from raw 0-255 pixels and N(0, 0.01) weights; with unit-variance pixels the
# term alpha·Σa² is about 1e-4·k and LRN is a constant division by k^0.75. So these two experiments take
# the paper's input (§2) and initialization (§5), and the `paper` LRN formula (§3.3 as printed: its alpha
# is five times cuda-convnet's, so it normalizes the most at this scale): after one epoch over 10,000
# images, alpha·Σa² / k at the first LRN has a median of 0.02 and a 99th percentile of 0.24, so LRN damps
# the strongest responses as in the paper, where the other formulas would act five times less. Also
# the paper's regularizers that fit a 32×32 image: weight decay 0.0005 (§5) and horizontal flips (§4.1).
# The learning rate is divided by 10 for the last quarter of the epochs (the paper's rule, §5, on a
# fixed epoch so that both variants share it).
# One learning rate for both variants of both experiments, so that the network with LRN and 3/2 pooling
# is the same in both: 0.003. Test error on 2,000 test images after two epochs over 10,000 training images
# (seed 0), by learning rate:
#     rate                  0.001  0.003  0.006  0.01
#     LRN, pool 3/2         0.664  0.580  -      0.595
#     no LRN, pool 3/2      -      0.538  0.661  0.906  (0.01: diverged)
#     LRN, pool 2/2         -      0.582  -      0.563
LRN_ABLATION = Setup(
    "LRN (§3.3)",
    (FourLayerVariant("with LRN", lr=0.003, lrn="paper"), FourLayerVariant("without LRN", lr=0.003, lrn="none")),
    curve="test", pixels="raw", init="paper", weight_decay=5e-4, flip=True, drop_at=0.75,
    paper="a four-layer CNN on CIFAR-10: 13% test error without LRN, 11% with it (§3.3)")

POOLING_ABLATION = Setup(
    "overlapping pooling (§3.4)",
    (FourLayerVariant("pool 3/2 (overlapping)", lr=0.003, lrn="paper", pool=(3, 2)),
     FourLayerVariant("pool 2/2", lr=0.003, lrn="paper", pool=(2, 2))),
    curve="test", pixels="raw", init="paper", weight_decay=5e-4, flip=True, drop_at=0.75,
    paper="AlexNet on ImageNet: 0.4 / 0.3 points lower top-1 / top-5 error with 3/2 than with 2/2 (§3.4)")

EXPERIMENTS = {"relu-vs-tanh": RELU_VS_TANH, "lrn": LRN_ABLATION, "pooling": POOLING_ABLATION}


def _threads(text: str) -> int | None:
    """--threads: "auto" (None) or a number."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


@dataclass
class ExperimentConfig:
    """The settings of one `alexnet experiment` run, each option declared once; written to its output folder
    as config.json."""

    experiment: str
    data: str = option(None, "CIFAR-10 folder: DATA/train/<class>/*, DATA/test/<class>/* (or DATA/val/<class>/*); "
                             "required", required=True)
    out: str | None = option(None, "folder for the figure, curves and results")  # None: report.out_folder
    epochs: int | None = option(None, "epochs per network", accepts=COUNT)  # None: the experiment's own
    batch_size: int = option(128, "images per mini-batch", accepts=COUNT)
    seed: int = option(0, "seed of the initial weights, batch order and flips (the first, with --seeds)",
                       accepts=SEED)
    seeds: int = option(3, "seeds SEED, SEED+1, ...: both variants trained once for each", accepts=COUNT)
    cache: str | None = option(None, "folder for the decoded images (.npz); $XDG_CACHE_HOME/alexnet where that is "
                                     "set (default: ~/.cache/alexnet)")
    threads: int | None = option(None, "CPU threads, or auto: one per core or 1, whichever trains faster, chosen "
                                       "again each epoch (on a busy machine 1 can be much faster) (default: auto)",
                                 parse=_threads, accepts=COUNT)
    progress: bool = option(True, "no progress bars")

    def __post_init__(self):
        check(self)


@dataclass
class CifarSplit:
    """One split of CIFAR-10 decoded into memory."""

    images: np.ndarray  # uint8 (N, 32, 32, 3)
    labels: np.ndarray  # int64 (N,)


@dataclass
class Curve:
    """One variant's record, epoch by epoch."""

    label: str
    train_error: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)  # in use at the end of the epoch
    images: int = 0  # training images seen, for the throughput
    train_seconds: float = 0.0


def epochs_to_reach(errors: Sequence[float], target: float = TARGET_ERROR) -> float | None:
    """The (fractional) epoch at which a curve, one error per epoch from epoch 1, first reaches `target`.

    Linear between epochs; 1.0 when the first epoch already reaches it; None when it never does.
    """
    for epoch, error in enumerate(errors, start=1):
        if error <= target:
            if epoch == 1:
                return 1.0
            before = errors[epoch - 2]
            return epoch - 1 + (before - target) / (before - error)
    return None


def load_cifar(data: str | Path, cache: str | Path | None,
               progress: bool = True) -> tuple[CifarSplit, CifarSplit, list[str]]:
    """The train and test (or val) splits of `data` as uint8 arrays, decoded once and cached in `cache` (None: not
    cached)."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    if not (root / "train").is_dir():
        raise InputError(f"no train split: {root / 'train'} is missing")
    train = list_images(root, "train")
    test = _test_list(root, train)
    listing = [str(root.resolve()), train.classes]
    for part in (train, test):
        for path, label in zip(part.paths, part.labels.tolist(), strict=True):
            stat = path.stat()
            listing.append((str(path.relative_to(root)), label, stat.st_size, stat.st_mtime_ns))
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:20]
    cached = Path(cache).expanduser() / f"cifar-{digest}.npz" if cache is not None else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached) as arrays:
                return (CifarSplit(arrays["train_images"], arrays["train_labels"]),
                        CifarSplit(arrays["test_images"], arrays["test_labels"]), train.classes)
        except (OSError, ValueError, KeyError):  # an unreadable cache is decoded again
            pass
    splits = _decode(train, "train", progress), _decode(test, test.root.name, progress)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda f: np.savez(f, train_images=splits[0].images, train_labels=splits[0].labels,
                                                test_images=splits[1].images, test_labels=splits[1].labels))
    return splits[0], splits[1], train.classes


def _test_list(root: Path, train: ImageList) -> ImageList:
    """root/test/<class>/* (CIFAR-10's name) or root/val/<class>/*, labelled by the train split's classes."""
    if (root / "test").is_dir():
        test = list_images(root / "test")
        unknown = sorted(set(test.classes) - set(train.classes))
        if unknown:
            raise InputError(f"test class folder {root / 'test' / unknown[0]} has no train class of that name")
        index = np.array([train.classes.index(c) for c in test.classes])
        return ImageList(test.root, test.paths, index[test.labels], train.classes, train.names, test.skipped)
    if (root / "val").is_dir():
        return list_images(root, "val")
    raise InputError(f"no test split: {root} has neither test/ nor val/ class folders")


def _decode(images: ImageList, name: str, progress: bool) -> CifarSplit:
    from tqdm import tqdm

    bad = BadFiles()
    out = np.empty((len(images), CIFAR_SIDE, CIFAR_SIDE, 3), np.uint8)
    kept = np.zeros(len(images), bool)
    for i, path in enumerate(tqdm(images.paths, desc=f"decode {name}", unit="img", disable=not progress)):
        try:
            image = open_rgb(path)
        except BadImageError as err:
            bad.add(path, err.reason)
            continue
        if image.size != (CIFAR_SIDE, CIFAR_SIDE):
            raise InputError(f"{path} is {image.width}×{image.height}: the experiments take 32×32 images (CIFAR-10)")
        out[i], kept[i] = np.asarray(image), True
    if bad:
        print(f"{name}: {bad.summary()}")
    if not kept.any():
        raise InputError(f"no readable images in {images.root}")
    return CifarSplit(out[kept], images.labels[kept])


class _Inputs:
    """Turns uint8 images into a float batch, channels-last: minus the mean image (§2), optionally scaled."""

    def __init__(self, train: CifarSplit, pixels: str):
        stats = PixelStats.empty(CIFAR_SIDE, CIFAR_SIDE)
        stats.add(train.images)
        self.mean = torch.from_numpy(stats.mean_image()).float()  # §2: subtract the training set's mean image
        self.scale = 1.0 if pixels == "raw" else math.sqrt(stats.variance())  # over all pixel values

    def __call__(self, images: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        x = torch.from_numpy(images).float().sub_(self.mean).div_(self.scale)  # (N, H, W, C)
        if flip is not None:  # §4.1: horizontal reflections
            mask = torch.from_numpy(flip)[:, None, None, None]
            x = torch.where(mask, x.flip(2), x)
        return x.permute(0, 3, 1, 2)  # an (N, C, H, W) view with channels-last strides


class ThreadChooser:
    """A fixed number of threads, or (None) each epoch's first steps alternated between one thread per core
    and one thread, keeping the faster for the rest of the epoch (in epochs at least ten times as long as
    the trial; shorter ones keep one thread per core).

    On a machine busy with other work, the threads of one process wait for each other: measured on 2 cores,
    two threads trained 300-900 images/s where one thread trained 1,700 (and 3,000 when the machine was quiet).
    """

    def __init__(self, threads: int | None, steps: int, trials: int = 6, cores: int | None = None):
        """`cores`: the threads of one per core (default: PyTorch's count, which is that unless it was set)."""
        most = threads or cores or torch.get_num_threads()
        auto = threads is None and most > 1 and steps >= 10 * 2 * (trials + 1)
        self.choices = (most, 1) if auto else (most,)
        self.trials = trials  # steps timed with each choice, after one to warm up
        self.chosen = most
        self.times: dict[int, list[float]] = {}

    def threads(self, step: int) -> int:
        """The number of threads for this step of the epoch."""
        if step == 0:
            self.times = {t: [] for t in self.choices}
        return self.choices[step % 2] if self._trying(step) else self.chosen

    def record(self, step: int, seconds: float) -> None:
        """Note how long a step took; after the last trial step, choose."""
        if not self._trying(step):
            return
        if step >= 2:
            self.times[self.choices[step % 2]].append(seconds)
        if step == 2 * (self.trials + 1) - 1:
            self.chosen = min(self.choices, key=lambda t: statistics.median(self.times[t]))

    def _trying(self, step: int) -> bool:
        return len(self.choices) > 1 and step < 2 * (self.trials + 1)


def train_variant(variant: FourLayerVariant, setup: Setup, train: CifarSplit, test: CifarSplit, inputs: _Inputs,
                  classes: int, epochs: int, batch_size: int, seed: int, threads: int | None = None,
                  cores: int | None = None, progress: bool = True) -> Curve:
    """Train one variant for `epochs`, recording its training and test error after every epoch (`threads`, `cores`:
    see ThreadChooser)."""
    # Its own loop, not train.Trainer's: the Trainer trains AlexNet on a store or image folder, not these arrays
    from tqdm import tqdm

    torch.manual_seed(seed)  # the same initial weights for both variants of an experiment
    net = variant.build(classes).to(memory_format=torch.channels_last)
    init_four_layer(net, setup.init)
    optimizer = PaperSGD(net.parameters(), lr=variant.lr, momentum=0.9, weight_decay=setup.weight_decay)
    drop = math.ceil(setup.drop_at * epochs)  # §5's division by 10, on a fixed epoch for both variants
    labels = torch.from_numpy(train.labels)
    curve = Curve(variant.label)
    n = len(labels)
    steps = -(-n // batch_size)
    chooser = ThreadChooser(threads, steps, cores=cores)
    for epoch in range(epochs):
        start = time.perf_counter()
        order = epoch_order(n, seed, epoch, shuffle=True)  # the same batches for both variants
        flips = np.random.default_rng([seed, epoch, 1]).random(n) < 0.5 if setup.flip else None
        for group in optimizer.param_groups:
            group["lr"] = variant.lr * (0.1 if epoch >= drop else 1.0)
        net.train()
        wrong, loss_sum = torch.zeros((), dtype=torch.long), torch.zeros(())
        bar = tqdm(range(steps), desc=f"{variant.label} {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=not progress)
        for step in bar:
            torch.set_num_threads(chooser.threads(step))
            step_start = time.perf_counter()
            index = order[step * batch_size:(step + 1) * batch_size]
            x = inputs(train.images[index], None if flips is None else flips[index])
            y = labels[index]
            scores = net(x)
            loss = F.cross_entropy(scores, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                wrong += (scores.argmax(1) != y).sum()
                loss_sum += loss.detach() * len(index)
            chooser.record(step, time.perf_counter() - step_start)
        bar.close()
        seconds = time.perf_counter() - start
        curve.images += n
        curve.train_seconds += seconds
        curve.train_error.append(wrong.item() / n)
        curve.train_loss.append(loss_sum.item() / n)
        curve.test_error.append(error_rate(net, test, inputs))
        curve.lr.append(optimizer.param_groups[0]["lr"])
        curve.seconds.append(time.perf_counter() - start)
        curve.threads.append(torch.get_num_threads())
        print(f"{variant.label}, epoch {epoch + 1}/{epochs}: training error {curve.train_error[-1]:.4f}, "
              f"test error {curve.test_error[-1]:.4f}, {n / seconds:.0f} images/s, "
              f"{count(curve.threads[-1], 'thread')}", flush=True)
    return curve


@torch.inference_mode()
def error_rate(net: nn.Module, split: CifarSplit, inputs: _Inputs, batch_size: int = 1000) -> float:
    """The fraction of the split's images whose top-scoring class is not their label."""
    net.eval()
    wrong = 0
    for first in range(0, len(split.labels), batch_size):
        scores = net(inputs(split.images[first:first + batch_size]))
        wrong += int((scores.argmax(1) != torch.from_numpy(split.labels[first:first + batch_size])).sum())
    return wrong / len(split.labels)


def run_experiment(config: ExperimentConfig) -> dict:
    """Run one experiment end to end: data, both variants, curves, figure, results (see the module's doc)."""
    if config.experiment not in EXPERIMENTS:
        raise InputError(f"unknown experiment {config.experiment!r}; expected one of {', '.join(EXPERIMENTS)}")
    setup = EXPERIMENTS[config.experiment]
    epochs = setup.epochs if config.epochs is None else config.epochs
    cache = config.cache or str(cache_dir())
    train, test, classes = load_cifar(config.data, cache, config.progress)
    out = out_folder(config.out, config.experiment)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**asdict(config), "epochs": epochs, "cache": cache})
    cores = torch.get_num_threads()  # one per core, unless the caller set it: the variants change it as they train
    print(f"{config.experiment}: {len(train.labels)} training and {len(test.labels)} test images, "
          f"{count(epochs, 'epoch')}, batch {config.batch_size}, "
          + (f"{count(config.threads, 'thread')}" if config.threads is not None
             else f"{cores} threads or 1, whichever is faster"))
    inputs = _Inputs(train, setup.pixels)
    where, started = machine(), time.monotonic()
    try:
        with torch.random.fork_rng(devices=[]):  # the seeds below leave the caller's generator alone
            runs = [[train_variant(variant, setup, train, test, inputs, len(classes), epochs, config.batch_size,
                                   seed, config.threads, cores, config.progress) for variant in setup.variants]
                    for seed in range(config.seed, config.seed + config.seeds)]
    finally:
        torch.set_num_threads(cores)

    write_curves(out / "curves.csv", runs, config.seed)
    results = {**summarize(config.experiment, runs), "machine": where, "wall_seconds": time.monotonic() - started}
    write_json(out / "results.json", results)
    plot(out / f"{config.experiment}.png", setup, runs)
    print(experiment_report(config.experiment, results))
    print(f"wrote {out / 'curves.csv'}, {out / 'results.json'} and {out / (config.experiment + '.png')}")
    return results


def write_curves(path: Path, runs: list[list[Curve]], first_seed: int = 0) -> None:
    """One CSV row per variant, epoch and seed (the seeds in turn, from `first_seed`)."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["variant", "epoch", "train_error", "test_error", "train_loss", "lr", "seconds", "threads",
                     "seed"])
    for seed, curves in enumerate(runs, start=first_seed):
        for c in curves:
            for epoch, row in enumerate(zip(c.train_error, c.test_error, c.train_loss, c.lr, c.seconds,
                                            strict=True), start=1):
                writer.writerow([c.label, epoch, *(f"{v:.6g}" for v in row), c.threads[epoch - 1], seed])
    write_text(path, table.getvalue())


def summarize(experiment: str, runs: list[list[Curve]]) -> dict:
    """The numbers of results.json: per variant its errors and throughput (means over seeds); for Figure 1, epochs
    to 25% (and their ratio) where every seed reached it; per seed, the spread and the paired differences."""
    labels = [c.label for c in runs[0]]
    per_seed = [{c.label: {"final_test_error": c.test_error[-1], "best_test_error": min(c.test_error),
                           "final_train_error": c.train_error[-1], "images_per_s": c.images / c.train_seconds,
                           "epochs": len(c.train_error), "epochs_to_25": epochs_to_reach(c.train_error)}
                 for c in curves} for curves in runs]
    variants = {}
    for label in labels:
        values = {k: [seed[label][k] for seed in per_seed] for k in per_seed[0][label]}
        variants[label] = {k: None if None in v else statistics.fmean(v) for k, v in values.items()}
        if experiment != "relu-vs-tanh":
            del variants[label]["epochs_to_25"]
    first, second = ([seed[label]["final_test_error"] for seed in per_seed] for label in labels)
    results = {"experiment": experiment, "paper": EXPERIMENTS[experiment].paper, "variants": variants,
               "seeds": len(runs), "per_seed": per_seed,
               "spread": {label: spread([seed[label]["final_test_error"] for seed in per_seed]) for label in labels},
               "difference": {"what": f"final test error, {labels[1]} minus {labels[0]}", **paired(first, second)}}
    if experiment == "relu-vs-tanh":
        reach = [variants[label]["epochs_to_25"] for label in labels]
        results["ratio"] = reach[1] / reach[0] if None not in reach else None
        ratios = [seed[labels[1]]["epochs_to_25"] / seed[labels[0]]["epochs_to_25"] for seed in per_seed
                  if None not in (seed[labels[0]]["epochs_to_25"], seed[labels[1]]["epochs_to_25"])]
        results["ratio_spread"] = spread(ratios) if len(ratios) == len(runs) else None
    return results


def experiment_report(experiment: str, results: dict) -> str:
    """The results as a few lines of text (report.results_text): a table of errors, and Figure 1's ratio."""
    table = {label: {"test error": f"{v['final_test_error']:.2%}", "best test": f"{v['best_test_error']:.2%}",
                     "train error": f"{v['final_train_error']:.2%}", "images/s": f"{v['images_per_s']:.0f}"}
             for label, v in results["variants"].items()}
    notes = []
    if experiment == "relu-vs-tanh":
        (relu, a), (tanh, b) = ((label, v["epochs_to_25"]) for label, v in results["variants"].items())
        epochs = results["variants"][tanh]["epochs"]
        if a is not None and b is not None:
            notes.append(f"epochs to 25% training error: {relu} {a:.1f}, {tanh} {b:.1f}: "
                         f"{relu} {results['ratio']:.1f} times as fast")
        elif a is not None:
            notes.append(f"epochs to 25% training error: {relu} {a:.1f}, {tanh} not within {epochs}: "
                         f"{relu} more than {epochs / a:.1f} times as fast")
        else:
            notes.append(f"{relu} did not reach 25% training error within {count(epochs, 'epoch')}"
                         + (f" ({tanh}: {b:.1f})" if b is not None else ", nor did " + tanh))
    if results.get("ratio_spread"):
        r = results["ratio_spread"]
        notes.append(f"ratio of epochs to 25% over seeds: {r['mean']:.1f} (range {r['min']:.1f} to {r['max']:.1f})")
    differences = [results["difference"]] if "difference" in results else []
    return results_text(table, differences, notes, results["paper"], results["seeds"])


def plot(path: Path, setup: Setup, runs: list[list[Curve]]) -> None:
    """Both variants' training or test error against epochs over the seeds, as a 640×480 PNG
    (report.error_curves)."""
    errors = "train_error" if setup.curve == "train" else "test_error"
    lines = [(runs[0][i].label, colour, style, [getattr(curves[i], errors) for curves in runs])
             for i, (style, colour) in enumerate((("-", "C0"), ("--", "C1")))]  # Figure 1: ReLU solid, tanh dashed
    title = f"CIFAR-10, four-layer CNN: {setup.title}" + (f", {len(runs)} seeds" if len(runs) > 1 else "")
    if setup.curve == "train":  # Figure 1's scale; test errors are left to autoscale, to show small gaps
        error_curves(path, title, "training error rate", lines, target=("25% training error", TARGET_ERROR),
                     top=0.8)
    else:
        error_curves(path, title, "test error rate", lines)
