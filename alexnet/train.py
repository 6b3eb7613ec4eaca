"""`alexnet train`: the paper's training recipe (§5), resumable, on one process or many (torchrun).

A run folder holds config.json (the resolved configuration), metrics.jsonl and metrics.csv (one row
per epoch), tb/ (TensorBoard events), curves.png (loss and top-1/top-5 error against epochs),
last.pt (every epoch, and every `save_every` minutes within one) and best.pt (lowest validation
top-1 error). A checkpoint holds the weights, the optimizer, the schedule's state, the random state and
the position in the epoch, so that `--resume RUN` continues exactly where RUN stopped.
"""

import copy
import csv
import dataclasses
import functools
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint
from .data.augment import COLOUR_STD, center_crop, train_batch
from .data.folders import BadImageError, preprocess
from .data.loader import Loader
from .data.sources import data_root, describe, is_store, open_split, prepared_root, split_names
from .data.split import Split
from .data.stats import PixelStats, Recipe
from .data.store import Store
from .errors import InputError, count
from .evaluate import Errors, evaluate
from .figures import plot_curves
from .files import link_or_copy, write_json, write_text
from .inference import Network, network
from .lrn import MODES
from .model import ARCHS, INITS, MIDDLE, PAPER_CLASSES, WIDTHS, build_model, default_init
from .optim import SCHEDULES, Schedule, build_optimizer
from .options import AMOUNT, COUNT, FRACTION, RATE, SIZE, Accepts, check, option, resumed
from .runtime import PRECISIONS, autocast, choose_device, choose_precision
from .towers import Pair, Tower, place

# The built-in photos (850 training images of 10 classes) get a budget that keeps the main job under 10 minutes.
BUILT_IN_MINUTES = 8
# Under a budget the schedule is a cosine over the epochs that fit: the plateau rule cannot be fitted to a
# number of epochs, and with few validation images (the built-in photos have 200) it divides the rate on noise.
BUDGET_SCHEDULE = "cosine"
PAPER_EPOCHS = 90  # §5: "roughly 90 cycles through the training set"
PAPER_SCHEDULE = "plateau"  # §5: divide by 10 "when the validation error rate stopped improving"
PARALLEL = ("data", "towers")
READ_EVERY = 20  # steps between reading the loss back from a GPU
PROBE_BATCH = 64  # images per step in the timing of --precision auto
RECIPE_SAMPLE = 2000  # images that estimate the mean image and RGB PCA when training straight from JPEGs
AUGMENTATIONS = ("paper", "crops", "none")
ORDERS = ("shuffled", "stratified")
# Below PAPER_CLASSES classes a step's gradient is scaled down to this norm where it is longer. On a few classes
# fc8's steepest direction, fc7's mean output, turns unstable at §5's rate as the network learns, and the loss leaps;
# the gradient's norm, 2-4.5 in a steady step, reaches 10-28 in a leap (docs/reproduction.md, "The defaults on a few
# classes: clipped gradients").
CLIP = 5.0
# What a run saved before an option existed did, for the options that came later with another default
BEFORE = {"order": "shuffled", "clip": 0.0}
CROP = Accepts("a whole number of at least 64", lambda v: v >= 64)
NAME = Accepts("a folder name, without /", lambda v: v not in ("", ".", "..") and "/" not in v)


@dataclass
class TrainConfig:
    """Everything a run depends on, each option declared once (the command line's options are made from
    these declarations); written to the run folder as config.json."""

    data: str | None = option(None, "a store from `alexnet prepare`, or an image folder with train/ and val/ "
                                    "(default: the built-in photos)")
    arch: str = option("paper", "network variant", section="§3.5", choices=ARCHS)
    lrn: str | None = option(None, "LRN formula (default: the architecture's own)", section="§3.3", choices=MODES)
    init: str | None = option(None, f"initialization (default: §5's with {PAPER_CLASSES} classes or more; centered "
                                    "with fewer, on which §5's dies: PyTorch's in the convolutions, fc6 and fc7 He's "
                                    "with zero-sum rows, fc8 0; the architecture's own for owt and caffenet)",
                              section="§5", choices=INITS)
    dropout: float = option(0.5, "dropout probability on fc6 and fc7", section="§4.2", accepts=FRACTION)
    width: float = option(1.0, "kernels and units of every hidden layer, as a fraction of the architecture's "
                               "(every one but owt)", section="§3.5", choices=WIDTHS)
    remove: str | None = option(None, "a middle convolutional layer to leave out (default: none)", section="§7",
                                choices=MIDDLE)
    epochs: int | None = option(None, f"epochs (default: {PAPER_EPOCHS}, or as many as --minutes allows; with "
                                      "--minutes, the most it trains)", section="§5", accepts=COUNT, resume=True)
    minutes: float | None = option(None, "a time budget from the command's start: the first epoch's speed decides "
                                         "how many epochs fit, the final evaluation included, and the schedule "
                                         "follows them (default: "
                                         f"none; {BUILT_IN_MINUTES} on the built-in photos)", accepts=RATE)
    batch_size: int = option(128, "images per step, over all processes", section="§5", accepts=COUNT)
    lr: float = option(0.01, "initial learning rate", section="§5", accepts=RATE)
    momentum: float = option(0.9, "momentum", section="§5", accepts=FRACTION)
    weight_decay: float = option(5e-4, "weight decay", section="§5", accepts=AMOUNT)
    optimizer: str = option("paper", "paper: §5's update rule; sgd: torch.optim.SGD", choices=("paper", "sgd"))
    schedule: str | None = option(None, "learning-rate schedule (default: plateau, the paper's; cosine with "
                                        "--minutes, fitted to the epochs the budget allows)", section="§5",
                                  choices=SCHEDULES)
    patience: int = option(2, "plateau: epochs without improvement before a drop", accepts=COUNT)
    min_delta: float = option(0.0, "plateau: the least improvement that counts", accepts=AMOUNT)
    max_drops: int = option(3, "plateau: at most this many drops", section="§5", accepts=SIZE)
    step_size: int = option(30, "step: epochs between drops", accepts=COUNT)
    warmup_epochs: float = option(0.0, "linear warm-up, in epochs", accepts=AMOUNT)
    clip: float | None = option(None, "the longest gradient a step takes: a longer one is scaled down to this norm "
                                      f"(0: never; default: never with {PAPER_CLASSES} classes or more, as in §5; "
                                      f"{CLIP:g} with fewer)", accepts=AMOUNT)
    order: str = option("stratified", "each epoch's order of the training images: stratified (shuffled with each "
                                      "class spread evenly over the epoch, so that every batch holds each class in "
                                      "its share) or shuffled (a plain permutation)", choices=ORDERS)
    crop: int = option(224, "training crop size (224 or 227; smaller for the paper's layout on smaller images: "
                            "64, 67, 96, 99, ...)", section="§4.1", accepts=CROP)
    parallel: str | None = option(None, "how torchrun's processes share the work: data (default): a whole network "
                                        "on each (DDP); towers: a network on each pair of processes, one tower on "
                                        "each, communicating only at conv3 and the fully connected layers, the pairs "
                                        "data-parallel (--arch paper, an even number of processes)", section="§3.2",
                                  choices=PARALLEL, resume=True)
    augment: str = option("paper", "training augmentation: paper (random crops, mirrors, PCA colour noise), "
                                   "crops (without the colour noise), none (the centre crop)", section="§4.1",
                          choices=AUGMENTATIONS)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", resume=True)
    precision: str = option("auto", "auto: bf16 on a GPU; on a CPU the faster of fp32 and bf16, timed once per "
                                    "machine; fp16 uses loss scaling", choices=PRECISIONS, resume=True)
    channels_last: bool = option(True, "keep tensors in NCHW memory order", resume=True)
    compile: bool = option(False, "torch.compile the network", resume=True)
    workers: int = option(2, "decoding processes when reading JPEG folders", accepts=SIZE, resume=True)
    seed: int = option(0, "random seed", accepts=SIZE)
    out: str = option("runs", "folder for run folders")
    name: str | None = option(None, "a new run folder's name (default: date-time-arch)", accepts=NAME)
    save_every: float = option(10.0, "minutes between mid-epoch checkpoints (0: only at the end of an epoch)",
                               accepts=AMOUNT, resume=True)
    max_steps: int | None = option(None, "stop after this many steps in all", accepts=COUNT, resume=True)
    resume: str | None = option(None, "a run folder (or checkpoint) to continue exactly")
    progress: bool = option(True, "no progress bar", resume=True)

    def __post_init__(self):
        check(self)


def fill_defaults(cfg: TrainConfig) -> TrainConfig:
    """The configuration with every default that depends on the data filled in: a budget on the built-in photos
    (BUILT_IN_MINUTES), and a cosine under a budget (--minutes), whose number of epochs stays provisional until the
    first epoch has been timed (Trainer.plan); else the paper's plateau rule and 90 epochs."""
    if cfg.data is None and not cfg.epochs:
        cfg = dataclasses.replace(cfg, minutes=cfg.minutes or BUILT_IN_MINUTES)
    schedule = cfg.schedule or (BUDGET_SCHEDULE if cfg.minutes else PAPER_SCHEDULE)
    return dataclasses.replace(cfg, epochs=cfg.epochs or PAPER_EPOCHS, schedule=schedule)


def default_clip(classes: int) -> tuple[float, str]:
    """The gradient norm a run clips at when --clip is not given (0: none), and why (CLIP)."""
    if classes >= PAPER_CLASSES:
        return 0.0, "§5's"
    return CLIP, f"below {PAPER_CLASSES} classes; --clip 0 for §5's steps"


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


@dataclass
class Data:
    """The training and validation batches and the statistics of the recipe."""

    train: Loader
    val: Loader
    recipe: Recipe
    description: str

    @property
    def classes(self) -> list[str]:
        """The class folder names (wnids) the labels index."""
        return self.train.source.classes

    @property
    def names(self) -> list[str]:
        """Human-readable class names."""
        return self.train.source.names


def estimate_recipe(train: Split, seed: int) -> Recipe:
    """The mean image and RGB PCA from up to RECIPE_SAMPLE training images of a folder (no prepare step)."""
    stats = PixelStats.empty(256, 256)
    for i in sorted(np.random.default_rng(seed).permutation(len(train))[:RECIPE_SAMPLE]):
        try:
            stats.add(preprocess(train.files[i]))
        except BadImageError:  # the loader will report it
            continue
    if stats.count == 0:
        raise InputError(f"no readable training images in {train.root}")
    return stats.recipe()


def open_data(cfg: TrainConfig, rank: int = 0, world: int = 1, pair: Pair | None = None) -> Data:
    """The batches of a store, of an image folder (decoded on the fly), or of the built-in photos (prepared
    by the first process before the others look); each process reads its share of every batch, the two of a
    pair (--parallel towers) the same share."""
    shard, shards = (pair.index, pair.pairs) if pair else (rank, world)
    if cfg.batch_size % shards:  # every process gets an equal share of a step (§5's batch is global)
        unit = "pairs of processes" if pair else "processes"
        raise InputError(f"--batch-size {cfg.batch_size}: does not split evenly over {shards} {unit}")
    if rank == 0:
        prepared_root(cfg.data)
    if world > 1:
        dist.barrier()
    root = data_root(cfg.data)
    if "val" not in split_names(root):
        raise InputError(f"{root} has no validation split (val/), which the recipe needs")
    train, val = open_split(root, "train"), open_split(root, "val")
    if val.classes != train.classes:
        raise InputError(f"{root}: the validation classes differ from the training classes")
    if cfg.crop > train.side:
        raise InputError(f"--crop {cfg.crop}: larger than the {train.side}×{train.side} images of {root}")
    description = describe(cfg.data)
    if is_store(root):
        recipe = Store(root).recipe()
    else:
        recipe = estimate_recipe(train, cfg.seed)
        description += f" (mean and PCA from {min(len(train), RECIPE_SAMPLE)} images)"
    loader = functools.partial(Loader, batch_size=cfg.batch_size, seed=cfg.seed, rank=shard, world=shards,
                               workers=cfg.workers, pin_memory=choose_device(cfg.device).type == "cuda")
    return Data(loader(train, shuffle=True, stratify=cfg.order == "stratified"), loader(val, shuffle=False), recipe,
                description)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun, or (0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _sum(tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """Sum (or another reduction) over processes; a no-op in one process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op)
    return tensor


class RunFolder:
    """The files of a run: configuration, metrics (JSON lines, CSV, TensorBoard), plot, checkpoints."""

    def __init__(self, path: Path, active: bool):
        self.path, self.active = path, active
        self.tb = None
        if active:
            from torch.utils.tensorboard import SummaryWriter

            path.mkdir(parents=True, exist_ok=True)
            self.tb = SummaryWriter(str(path / "tb"))

    def log_epoch(self, row: dict) -> None:
        """Append one epoch's metrics everywhere and redraw the plot."""
        if not self.active:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        rows = [json.loads(line) for line in (self.path / "metrics.jsonl").read_text().splitlines()]
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path / "metrics.csv", table.getvalue())
        for key, value in row.items():
            if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                self.tb.add_scalar(key, value, row["epoch"])
        self.tb.flush()
        plot_curves(rows, self.path / "curves.png")

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def saved_config(state: dict) -> TrainConfig:
    """The configuration a checkpoint was trained with (BEFORE for an option it predates)."""
    saved = {k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**BEFORE, **saved})


def _resolve(cfg: TrainConfig, world: int, local_rank: int) -> tuple[TrainConfig, dict | None, Path]:
    """The run folder, a new one as the first process names it; with --resume, the saved configuration (with
    the changes a resume may make) and the checkpoint to continue from."""
    if cfg.resume:
        state = checkpoint.load(Path(cfg.resume) / "last.pt" if Path(cfg.resume).is_dir() else cfg.resume)
        if "optimizer" not in state:  # a weights file, an import
            raise InputError(f"{state['path']} holds a network's weights only; --resume takes a run's last.pt")
        run = resumed(cfg, saved_config(state))
        epochs, steps = fill_defaults(run).epochs, state["total_steps"]
        if epochs <= state["epoch"] and cfg.epochs is None:
            raise InputError(f"the run has trained all its {count(epochs, 'epoch')}; give --epochs N above "
                             f"{epochs} to train longer")
        if epochs <= state["epoch"]:
            raise InputError(f"--epochs {epochs}: the run has trained {count(state['epoch'], 'epoch')} already; "
                             "give more to train longer")
        if run.max_steps and run.max_steps <= steps:
            raise InputError(f"--max-steps {run.max_steps}: the run has made {count(steps, 'step')} already; "
                             "give more")
        return run, state, Path(state["path"]).parent
    path = Path(cfg.out) / (cfg.name or time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.arch}")
    taken = path.is_file() or path.is_dir() and any(path.iterdir())
    error = f"{path} exists already: --resume {path} trains it on, or give another --name" if taken else None
    if world > 1:  # the processes may have started in different seconds
        shared = [path, error]
        dist.broadcast_object_list(shared, device=torch.device("cuda", local_rank) if dist.get_backend() == "nccl"
                                   else None)
        path, error = shared
    if error:
        raise InputError(error)
    return cfg, None, path


def train(cfg: TrainConfig) -> Path:
    """Train; returns the run folder. Raises DivergedError on a NaN or infinite loss (last.pt stays good).

    The run seeds torch's random generators and gives them back as they were when it ends."""
    started = time.monotonic()  # a budget counts everything from here: the built-in store, the kernels' build
    rank, world, local_rank = _distributed()
    try:
        cfg, state, run_path = _resolve(cfg, world, local_rank)
        device = choose_device(cfg.device)
        pair = place(cfg.arch, rank, world) if cfg.parallel == "towers" else None
        with torch.random.fork_rng(devices=[local_rank] if device.type == "cuda" else []):
            trainer = Trainer(cfg, open_data(cfg, rank, world, pair), run_path, rank, world, local_rank, started,
                              pair)
            if state is not None:
                trainer.restore(state)
            folder = trainer.run()
        if world > 1:
            # DDP keeps the process group, and gloo's worker threads, alive until the process exits. A worker
            # that frees a finished all_reduce's tensors after the interpreter has begun to shut down aborts
            # the process (SIGABRT); waiting here for the slowest process gives the workers that time.
            dist.barrier()
        return folder
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """The state of a run and the loop over its epochs (§5). Seeds torch's global random generator.

    With `pair` (--parallel towers) the process holds one tower of the network (towers.Tower); its counts are
    summed over its twins, which between them see each image once, and its checkpoints hold the whole network."""

    def __init__(self, cfg: TrainConfig, data: Data, run_path: Path, rank: int = 0, world: int = 1,
                 local_rank: int = 0, started: float | None = None, pair: Pair | None = None):
        init, self.init_reason = (cfg.init, "as asked") if cfg.init else default_init(cfg.arch, len(data.classes))
        clip, self.clip_reason = (cfg.clip, "as asked") if cfg.clip is not None else default_clip(len(data.classes))
        self.cfg = cfg = dataclasses.replace(fill_defaults(cfg), init=init, clip=clip)
        self.data, self.run_path, self.rank, self.world, self.pair = data, run_path, rank, world, pair
        self.reduce = pair.sum if pair else _sum
        self.device = choose_device(cfg.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.arch, len(data.classes), cfg.lrn, cfg.init, cfg.dropout, cfg.width, cfg.crop,
                                 cfg.remove).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batch = cfg.batch_size // (pair.pairs if pair else world)  # this process's images per step
        workload = f"{cfg.arch} training, batch {min(self.batch, PROBE_BATCH)}"
        if world > 1 and rank:  # the first process times the precisions; the others read what it found
            dist.barrier()
        choice = choose_precision(cfg.precision, self.device, self._seconds, workload)
        if world > 1 and not rank:
            dist.barrier()
        self.precision, self.precision_reason = choice.name, choice.reason
        if pair:  # the precision was timed on the whole network, which is then split
            self.model = Tower(self.model, pair)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.momentum,
                                         cfg.weight_decay)
        self.schedule = Schedule.of(cfg, steps_per_epoch=len(data.train))
        self.recipe = data.recipe.to(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch, self.step, self.total_steps, self.best = 0, 0, 0, math.inf
        self.sums = [0, 0.0, 0.0]  # images, summed loss, wrong top-1 so far in this epoch (kept across a resume)
        self.guard = DeadGuard(len(data.classes))
        self.alive = torch.zeros((), dtype=torch.float64, device=self.device)  # fc7 units that fired, last batch
        self.model.layers()["fc7"].register_forward_hook(self._count_alive)
        self.started = time.monotonic() if started is None else started  # the clock of --minutes
        self.planned = cfg.minutes is None  # whether the number of epochs is final (see plan)
        self.measured: dict | None = None  # the validation errors of the weights as they are (see snapshot)

    def _seconds(self, precision: str) -> float:
        """Seconds of one training step of a copy of the network (a batch of random images, at most PROBE_BATCH
        of this process's), in `precision`: what `--precision auto` compares. The run's state is left alone."""
        model = copy.deepcopy(self.model)
        optimizer = build_optimizer(self.cfg.optimizer, model.parameters(), self.cfg.lr, self.cfg.momentum,
                                    self.cfg.weight_decay)
        batch, g = min(self.batch, PROBE_BATCH), torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, self.cfg.crop, self.cfg.crop, generator=g).to(self.device)
        y = torch.randint(len(self.data.classes), (batch,), generator=g).to(self.device)
        with torch.random.fork_rng(devices=[]):  # dropout draws from the copy's own stream
            start = time.perf_counter()
            with autocast(self.device, precision):
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start

    def _count_alive(self, layer: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        """A forward hook on fc7: the fraction of its units that fire (before the ReLU: > 0) for some image."""
        self.alive = (out.detach() > 0).any(0).double().mean()

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: weights, optimizer, schedule state, random state, position in the epoch."""
        if state["classes"] != self.data.classes:
            raise InputError(f"{state['path']} was trained on other classes than {self.data.description}")
        self.init_reason = self.clip_reason = "the run's own"  # not a choice of this command's
        if self.pair:
            self.model.load_whole_state(self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step, self.total_steps, self.best = (state[k] for k in ("epoch", "step", "total_steps",
                                                                                    "best"))
        self.sums, self.planned, self.measured = state["sums"], state.get("planned", True), state.get("measured")
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.device.index % len(state["cuda_rng"])])

    def info(self) -> dict:
        """What a checkpoint says about the network, beside its weights (inference.Network.info)."""
        return {"arch": self.cfg.arch, "lrn": self.cfg.lrn, "dropout": self.cfg.dropout, "crop": self.cfg.crop,
                "width": self.cfg.width, "remove": self.cfg.remove,
                "classes": self.data.classes, "names": self.data.names,
                "config": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "progress"}}

    def snapshot(self) -> dict:
        """Everything `restore` needs, and what eval/predict need: a weights_only-loadable dict (of the whole
        network, which under --parallel towers both processes of a pair assemble together)."""
        r = self.data.recipe
        model, optimizer = (self.model.whole_state(self.optimizer) if self.pair else
                            (self.model.state_dict(), self.optimizer.state_dict()))
        return {**self.info(), "model": model,
                "recipe": {"mean": r.mean, "eigval": r.eigval, "eigvec": r.eigvec},
                "optimizer": optimizer, "schedule": self.schedule.state_dict(),
                "epoch": self.epoch, "step": self.step, "total_steps": self.total_steps, "best": self.best,
                "measured": self.measured,
                "sums": list(self.sums), "planned": self.planned, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}

    def save(self, best: bool = False) -> None:
        """Write last.pt, and best.pt as the same file (on the first process only, with the first pair's other
        tower under --parallel towers)."""
        if self.rank == 0 or self.pair and self.pair.index == 0:
            state = self.snapshot()
            if self.rank == 0:
                checkpoint.save(self.run_path / "last.pt", state)
                if best:
                    link_or_copy(self.run_path / "last.pt", self.run_path / "best.pt")
        self.last_save = time.monotonic()

    def save_due(self) -> bool:
        """Whether `save_every` minutes have passed since the last checkpoint (by tower 0's clock in a pair,
        whose two processes save together)."""
        if not self.cfg.save_every:
            return False
        due = torch.tensor(time.monotonic() - self.last_save > 60 * self.cfg.save_every, device=self.device)
        return bool(self.pair.first(due) if self.pair else due)

    def plan(self, epoch_seconds: float, validation_seconds: float) -> None:
        """--minutes: from the first epoch's time, as many epochs as fit in what is left of the budget after
        the final evaluation (the centre crop and the ten patches: about 11 validation passes), at most
        --epochs; the schedule is made again for them."""
        spent, epoch_seconds, validation_seconds = _sum(torch.tensor(
            [time.monotonic() - self.started, epoch_seconds, validation_seconds], dtype=torch.float64),
            dist.ReduceOp.MAX).tolist()  # every process decides the same
        left = 60 * self.cfg.minutes - spent - 11 * validation_seconds
        epochs = min(self.cfg.epochs, self.epoch + max(0, int(left // epoch_seconds)))  # those done, then more
        self.cfg = dataclasses.replace(self.cfg, epochs=epochs)
        state = self.schedule.state_dict()
        self.schedule = Schedule.of(self.cfg, steps_per_epoch=len(self.data.train))
        self.schedule.load_state_dict(state)
        self.planned = True
        if self.rank == 0:
            write_json(self.run_path / "config.json", dataclasses.asdict(self.cfg))
            print(f"--minutes {self.cfg.minutes:g}: {spent:.0f} s for the first epoch and all before it, "
                  f"{epoch_seconds:.0f} s an epoch; {count(epochs, 'epoch')} fit", flush=True)

    def done(self) -> bool:
        """Whether the run has reached its epochs or its step limit."""
        return self.epoch >= self.cfg.epochs or bool(self.cfg.max_steps and self.total_steps >= self.cfg.max_steps)

    def run(self) -> Path:
        """Train epoch after epoch until done; returns the run folder."""
        cfg, data = self.cfg, self.data
        net, ids = self.model, [self.device] if self.device.type == "cuda" else None
        if self.pair and self.pair.pairs > 1:  # each tower's gradients averaged over its twins
            net = torch.nn.parallel.DistributedDataParallel(net, ids, process_group=self.pair.twins)
        elif self.world > 1 and not self.pair:
            net = torch.nn.parallel.DistributedDataParallel(net, ids)
        if cfg.compile:
            net = torch.compile(net)
        validation = Network(self.model, self.recipe, self.device, self.precision, self.info())
        folder = RunFolder(self.run_path, active=self.rank == 0)
        if self.rank == 0:
            write_json(self.run_path / "config.json", dataclasses.asdict(cfg))
            layout = f" in {count(self.pair.pairs, 'pair')} of towers" if self.pair else ""
            print(f"training {cfg.arch!r} on {data.description}: {len(data.train.source)} training and "
                  f"{len(data.val.source)} validation images, {len(data.classes)} classes; "
                  f"initialization {cfg.init} ({self.init_reason}); "
                  + (f"gradients clipped at norm {cfg.clip:g} ({self.clip_reason}); " if cfg.clip else "")
                  + f"{self.device.type}, {self.precision} "
                  f"({self.precision_reason}), {count(self.world, 'process')}{layout}; "
                  f"run folder {self.run_path}", flush=True)
        self.last_save = time.monotonic()
        try:
            while not self.done():
                self.measured = None  # the weights change
                started, first = time.monotonic(), self.sums[0]
                lr = self.train_epoch(net)
                if self.step < len(data.train):  # stopped by --max-steps within the epoch
                    self.save()
                    break
                seconds = time.monotonic() - started
                val = evaluate([validation], data.val.epoch(0), reduce=self.reduce)
                validation_seconds = time.monotonic() - started - seconds
                dropped = self.schedule.end_epoch(val.top1)
                images, loss, wrong = self.sums
                row = {"epoch": self.epoch + 1, "train_loss": loss / max(images, 1),
                       "train_top1": wrong / max(images, 1), "val_loss": val.loss, "val_top1": val.top1,
                       "val_top5": val.top5, "val_images": val.count, "lr": lr,
                       "images_per_s": (images - first) / seconds, "seconds": seconds}
                improved, self.best = val.top1 < self.best, min(self.best, val.top1)
                self.measured = {"data": describe(cfg.data), "split": "val", "crops": 1, "images": val.count,
                                 "top1_error": val.top1, "top5_error": val.top5}
                self.epoch, self.step, self.sums = self.epoch + 1, 0, [0, 0.0, 0.0]
                self.save(best=improved)
                folder.log_epoch(row)
                if not self.planned:  # an epoch's time includes its checkpoints and plots (a second or two)
                    self.plan(time.monotonic() - started, validation_seconds)
                    if self.done():  # last.pt was saved before the plan
                        self.save()
                if self.rank == 0:
                    note = " (learning rate divided by 10)" if dropped else ""
                    print(f"epoch {self.epoch}/{self.cfg.epochs}: train loss {row['train_loss']:.3f}, top-1 error "
                          f"{100 * row['train_top1']:.1f}%; val loss {val.loss:.3f}, top-1 {100 * val.top1:.1f}%, "
                          f"top-5 {100 * val.top5:.1f}%; lr {lr:.2g}; {row['images_per_s']:.0f} img/s{note}",
                          flush=True)
        finally:
            folder.close()
        return self.run_path

    def train_epoch(self, net: torch.nn.Module) -> float:
        """The steps of the current epoch from the current step on; returns the last learning rate."""
        from tqdm import tqdm

        cfg, data = self.cfg, self.data
        net.train()
        lr, started, first = cfg.lr, time.monotonic(), self.sums[0]
        # The loss is read back every step on the CPU, every READ_EVERY steps on a GPU, which then never
        # waits for the CPU to look at one step before it is given the next.
        read_every = READ_EVERY if self.device.type == "cuda" else 1
        # images, summed loss, wrong top-1; the largest |loss − ln(classes)| and fraction of fc7 units that
        # fired (DeadGuard)
        unread = torch.zeros(5, dtype=torch.float64, device=self.device)
        steps = 0  # in `unread`
        bar = tqdm(total=len(data.train), initial=self.step, desc=f"epoch {self.epoch + 1}/"
                   f"{cfg.epochs if self.planned else '?'}",
                   unit="batch", disable=not cfg.progress or self.rank != 0, leave=False, dynamic_ncols=True)
        for images, labels, indices in data.train.epoch(self.epoch, start=self.step):
            lr = self.schedule.rate(self.epoch + self.step / len(data.train))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if cfg.augment == "none":
                x = center_crop(images, self.recipe, cfg.crop)
            else:  # §4.1: the PCA colour noise only in the paper's augmentation
                x = train_batch(images, self.recipe, cfg.crop, cfg.seed, self.epoch, indices,
                                COLOUR_STD if cfg.augment == "paper" else 0.0)
            with autocast(self.device, self.precision):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip:
                self.scaler.unscale_(self.optimizer)
                self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            unread[0] += len(labels)
            unread[1] += loss.detach().double() * len(labels)
            unread[2] += (logits.argmax(1) != labels).sum()
            with torch.no_grad():
                distance = (loss.double() - self.guard.chance).abs()
                torch.maximum(unread[3:], torch.stack([distance, self.alive]), out=unread[3:])
            self.step, self.total_steps, steps = self.step + 1, self.total_steps + 1, steps + 1
            if steps < read_every and self.step < len(data.train) and not self.done():
                continue
            loss_value = self._read(unread, steps)
            rate = (self.sums[0] - first) / max(time.monotonic() - started, 1e-9)
            bar.set_postfix_str(f"loss {loss_value:.3f}, lr {lr:.2g}, {rate:.0f} img/s")
            bar.update(steps)
            steps = 0
            if self.save_due():
                self.save()
            if self.done():
                break
        bar.close()
        return lr

    def _clip(self) -> None:
        """Scale the gradient down to norm --clip where it is longer (CLIP); a pair's is the whole network's norm."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if self.pair:  # each of the two holds its own rows of every layer
            square = norm.square()
            dist.all_reduce(square, group=self.pair.group)
            norm = square.sqrt()
        torch.nn.utils.clip_grads_with_norm_(parameters, self.cfg.clip, norm)

    def _kept(self) -> str:
        """What a stopped run leaves to go back to, in words."""
        last = self.run_path / "last.pt"
        return f"the last checkpoint is {last}" if last.exists() else "no checkpoint had been saved yet"

    def _read(self, unread: torch.Tensor, steps: int) -> float:
        """Add the last `steps` steps' counts (over all processes) to the epoch's sums; their mean loss.

        Raises DivergedError where their loss is NaN or infinite, or where the network has died (DeadGuard)."""
        images, loss, wrong = self.reduce(unread[:3].clone()).tolist()
        loss_range, alive = _sum(unread[3:].clone(), dist.ReduceOp.MAX).tolist()
        unread.zero_()
        where = f"step {self.step}" if steps == 1 else f"steps {self.step - steps + 1}-{self.step}"
        if not math.isfinite(loss):
            raise DivergedError(f"the loss became {loss} at epoch {self.epoch + 1}, {where}; {self._kept()} "
                                "(try a lower --lr)")
        if self.guard.dead(loss / images, loss_range, alive, steps):
            hint = "a lower --lr" if self.cfg.init == "centered" else "--init centered, or a lower --lr"
            raise DivergedError(f"the network died: for {self.guard.flat} steps up to epoch {self.epoch + 1}, "
                                f"step {self.step}, fewer than {DeadGuard.ALIVE:.0%} of fc7's units fired and the mean "
                                f"loss was no lower than a constant guess's (ln {len(self.data.classes)} = "
                                f"{self.guard.chance:.3f}); {self._kept()} (try {hint})")
        self.sums = [self.sums[0] + images, self.sums[1] + loss, self.sums[2] + wrong]
        return loss / images


def final_evaluation(path: Path) -> dict[int, Errors]:
    """Centre-crop and ten-crop validation errors of a checkpoint (of a run folder: its best.pt, else last.pt)."""
    state = checkpoint.load(path)
    cfg = saved_config(state)
    net = network(state, cfg.device, cfg.precision)
    val = Loader(open_split(prepared_root(cfg.data), "val"), cfg.batch_size, shuffle=False, workers=cfg.workers,
                 pin_memory=net.device.type == "cuda")
    return {crops: evaluate([net], val.epoch(0), crops) for crops in (1, 10)}
