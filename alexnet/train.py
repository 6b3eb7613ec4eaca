"""`alexnet train`: the paper's training recipe (§5), resumable, on one process or many (torchrun).

A run folder holds config.json (the resolved configuration), metrics.jsonl and metrics.csv (one row
per epoch), tb/ (TensorBoard events), curves.png (loss and top-1/top-5 error against epochs),
last.pt (every epoch, and every `save_every` minutes within one) and best.pt (lowest validation
top-1 error). A checkpoint holds the weights, the optimizer, the schedule's state, the random state and
the position in the epoch, so that `--resume RUN` continues exactly where RUN stopped.
"""

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
from .data.augment import train_batch
from .data.folders import preprocess
from .data.loader import Loader
from .data.sources import data_root, describe, is_store, open_split, split_names
from .data.split import Split
from .data.stats import PixelStats, Recipe
from .data.store import Store
from .evaluate import Errors, evaluate
from .figures import plot_curves
from .files import link_or_copy, write_json, write_text
from .inference import Network, network
from .lrn import MODES
from .model import ARCHS, INITS, build_model
from .optim import SCHEDULES, Schedule, build_optimizer
from .options import option
from .runtime import PRECISIONS, autocast, choose_device, choose_precision

# The built-in photos (850 training images of 10 classes) get a short run with Caffe's initialization
# (README, "The main job"): the paper's (biases 1) at the paper's learning rate sends a 10-class loss from
# 2.3 to over 20 in the first steps and leaves the network dead at ln 10. With 200 validation images the
# plateau rule divides the rate on noise, so the short run follows a cosine instead.
BUILT_IN = {"epochs": 25, "init": "caffe", "schedule": "cosine"}
PAPER_EPOCHS = 90  # §5: "roughly 90 cycles through the training set"
PAPER_SCHEDULE = "plateau"  # §5: divide by 10 "when the validation error rate stopped improving"
READ_EVERY = 20  # steps between reading the loss back from a GPU
RECIPE_SAMPLE = 2000  # images that estimate the mean image and RGB PCA when training straight from JPEGs


@dataclass
class TrainConfig:
    """Everything a run depends on, each option declared once (the command line's options are made from
    these declarations); written to the run folder as config.json."""

    data: str | None = option(None, "a store from `alexnet prepare`, or an image folder with train/ and val/ "
                                    "(default: the built-in photos)")
    arch: str = option("paper", "network variant", section="§3.5", choices=ARCHS)
    lrn: str | None = option(None, "LRN formula (default: the architecture's own)", section="§3.3", choices=MODES)
    init: str | None = option(None, "initialization (default: the architecture's own; "
                                    f"{BUILT_IN['init']} on the built-in photos)", section="§5", choices=INITS)
    dropout: float = option(0.5, "dropout probability on fc6 and fc7", section="§4.2")
    epochs: int | None = option(None, f"epochs (default: {PAPER_EPOCHS}, or {BUILT_IN['epochs']} on the built-in "
                                      "photos)", section="§5")
    batch_size: int = option(128, "images per step, over all processes", section="§5")
    lr: float = option(0.01, "initial learning rate", section="§5")
    momentum: float = option(0.9, "momentum", section="§5")
    weight_decay: float = option(5e-4, "weight decay", section="§5")
    optimizer: str = option("paper", "paper: §5's update rule; sgd: torch.optim.SGD", choices=("paper", "sgd"))
    schedule: str | None = option(None, "learning-rate schedule (default: plateau, the paper's; "
                                        f"{BUILT_IN['schedule']} on the built-in photos)", section="§5",
                                  choices=SCHEDULES)
    patience: int = option(2, "plateau: epochs without improvement before a drop")
    min_delta: float = option(0.0, "plateau: the least improvement that counts")
    max_drops: int = option(3, "plateau: at most this many drops", section="§5")
    step_size: int = option(30, "step: epochs between drops")
    warmup_epochs: float = option(0.0, "linear warm-up, in epochs")
    crop: int = option(224, "training crop size", section="§4.1", choices=(224, 227))
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    precision: str = option("auto", "auto: bf16 on GPUs and AMX CPUs, fp32 elsewhere; fp16 uses loss scaling",
                            choices=PRECISIONS)
    channels_last: bool = option(True, "keep tensors in NCHW memory order")
    compile: bool = option(False, "torch.compile the network")
    workers: int = option(2, "decoding processes when reading JPEG folders")
    seed: int = option(0, "random seed")
    out: str = option("runs", "folder for run folders")
    name: str | None = option(None, "run folder name (default: date-time-arch)")
    save_every: float = option(10.0, "minutes between mid-epoch checkpoints")
    max_steps: int | None = option(None, "stop after this many steps")
    resume: str | None = option(None, "a run folder (or checkpoint) to continue exactly")
    progress: bool = option(True, "no progress bar")


def fill_defaults(cfg: TrainConfig) -> TrainConfig:
    """The configuration with every default that depends on the data filled in (see BUILT_IN)."""
    if cfg.data is None:
        cfg = dataclasses.replace(cfg, epochs=cfg.epochs or BUILT_IN["epochs"], init=cfg.init or BUILT_IN["init"],
                                  schedule=cfg.schedule or BUILT_IN["schedule"])
    return dataclasses.replace(cfg, epochs=cfg.epochs or PAPER_EPOCHS, schedule=cfg.schedule or PAPER_SCHEDULE)


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


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
        except ValueError:  # a bad file: the loader will report it
            continue
    if stats.count == 0:
        raise ValueError(f"no readable training images in {train.root}")
    return stats.recipe()


def open_data(cfg: TrainConfig, rank: int = 0, world: int = 1) -> Data:
    """The batches of a store, of an image folder (decoded on the fly), or of the built-in photos (prepared
    by the first process before the others look)."""
    if rank == 0:
        data_root(cfg.data)
    if world > 1:
        dist.barrier()
    root = data_root(cfg.data)
    if "val" not in split_names(root):
        raise ValueError(f"{root} has no validation split (val/), which the recipe needs")
    train, val = open_split(root, "train"), open_split(root, "val")
    if val.classes != train.classes:
        raise ValueError(f"{root}: the validation classes differ from the training classes")
    description = describe(cfg.data)
    if is_store(root):
        recipe = Store(root).recipe()
    else:
        recipe = estimate_recipe(train, cfg.seed)
        description += f" (mean and PCA from {min(len(train), RECIPE_SAMPLE)} images)"
    loader = functools.partial(Loader, batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world=world,
                               workers=cfg.workers, pin_memory=choose_device(cfg.device).type == "cuda")
    return Data(loader(train, shuffle=True), loader(val, shuffle=False), recipe, description)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun, or (0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a no-op in one process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
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


def _resolve(cfg: TrainConfig) -> tuple[TrainConfig, dict | None, Path]:
    """The run folder; with --resume, the saved configuration and the checkpoint to continue from."""
    if cfg.resume:
        state = checkpoint.load(Path(cfg.resume) / "last.pt" if Path(cfg.resume).is_dir() else cfg.resume)
        saved = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
        saved.resume, saved.progress = cfg.resume, cfg.progress
        if cfg.epochs is not None:
            saved.epochs = cfg.epochs  # the one thing a resumed run may change: train longer
        if cfg.max_steps is not None:
            saved.max_steps = cfg.max_steps
        return saved, state, Path(state["path"]).parent
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.arch}"
    return cfg, None, Path(cfg.out) / name


def train(cfg: TrainConfig) -> Path:
    """Train; returns the run folder. Raises DivergedError on a NaN or infinite loss (last.pt stays good).

    The run seeds torch's random generators and gives them back as they were when it ends."""
    cfg, state, run_path = _resolve(cfg)
    rank, world, local_rank = _distributed()
    device = choose_device(cfg.device)
    try:
        with torch.random.fork_rng(devices=[local_rank] if device.type == "cuda" else []):
            trainer = Trainer(cfg, open_data(cfg, rank, world), run_path, rank, world, local_rank)
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
    """The state of a run and the loop over its epochs (§5). Seeds torch's global random generator."""

    def __init__(self, cfg: TrainConfig, data: Data, run_path: Path, rank: int = 0, world: int = 1,
                 local_rank: int = 0):
        self.cfg = cfg = fill_defaults(cfg)
        self.data, self.run_path, self.rank, self.world = data, run_path, rank, world
        self.device = choose_device(cfg.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.precision = choose_precision(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.arch, len(data.classes), cfg.lrn, cfg.init, cfg.dropout).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.momentum,
                                         cfg.weight_decay)
        self.schedule = Schedule.of(cfg, steps_per_epoch=len(data.train))
        self.recipe = data.recipe.to(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch, self.step, self.total_steps, self.best = 0, 0, 0, math.inf
        self.sums = [0, 0.0, 0.0]  # images, summed loss, wrong top-1 so far in this epoch (kept across a resume)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: weights, optimizer, schedule state, random state, position in the epoch."""
        if state["classes"] != self.data.classes:
            raise ValueError(f"{state['path']} was trained on other classes than {self.data.description}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step, self.total_steps, self.best = (state[k] for k in ("epoch", "step", "total_steps",
                                                                                    "best"))
        self.sums = state["sums"]
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.device.index % len(state["cuda_rng"])])

    def info(self) -> dict:
        """What a checkpoint says about the network, beside its weights (inference.Network.info)."""
        return {"arch": self.cfg.arch, "lrn": self.cfg.lrn, "dropout": self.cfg.dropout, "crop": self.cfg.crop,
                "classes": self.data.classes, "names": self.data.names,
                "config": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "progress"}}

    def snapshot(self) -> dict:
        """Everything `restore` needs, and what eval/predict need: a weights_only-loadable dict."""
        r = self.data.recipe
        return {**self.info(), "model": self.model.state_dict(),
                "recipe": {"mean": r.mean, "eigval": r.eigval, "eigvec": r.eigvec},
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "epoch": self.epoch, "step": self.step, "total_steps": self.total_steps, "best": self.best,
                "sums": list(self.sums), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}

    def save(self, best: bool = False) -> None:
        """Write last.pt, and best.pt as the same file (on the first process only)."""
        if self.rank == 0:
            checkpoint.save(self.run_path / "last.pt", self.snapshot())
            if best:
                link_or_copy(self.run_path / "last.pt", self.run_path / "best.pt")
        self.last_save = time.monotonic()

    def done(self) -> bool:
        """Whether the run has reached its epochs or its step limit."""
        return self.epoch >= self.cfg.epochs or bool(self.cfg.max_steps and self.total_steps >= self.cfg.max_steps)

    def run(self) -> Path:
        """Train epoch after epoch until done; returns the run folder."""
        cfg, data = self.cfg, self.data
        net = self.model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net, [self.device] if self.device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
        validation = Network(self.model, self.recipe, self.device, self.precision, self.info())
        folder = RunFolder(self.run_path, active=self.rank == 0)
        if self.rank == 0:
            write_json(self.run_path / "config.json", dataclasses.asdict(cfg))
            print(f"training {cfg.arch!r} on {data.description}: {len(data.train.source)} training and "
                  f"{len(data.val.source)} validation images, {len(data.classes)} classes; "
                  f"{self.device.type}, {self.precision}, {self.world} process{'es' if self.world > 1 else ''}; "
                  f"run folder {self.run_path}", flush=True)
        self.last_save = time.monotonic()
        try:
            while not self.done():
                started, first = time.monotonic(), self.sums[0]
                lr = self.train_epoch(net)
                if self.step < len(data.train):  # stopped by --max-steps within the epoch
                    self.save()
                    break
                seconds = time.monotonic() - started
                val = evaluate([validation], data.val.epoch(0), reduce=_sum)
                dropped = self.schedule.end_epoch(val.top1)
                images, loss, wrong = self.sums
                row = {"epoch": self.epoch + 1, "train_loss": loss / max(images, 1),
                       "train_top1": wrong / max(images, 1), "val_loss": val.loss, "val_top1": val.top1,
                       "val_top5": val.top5, "val_images": val.count, "lr": lr,
                       "images_per_s": (images - first) / seconds, "seconds": seconds}
                improved, self.best = val.top1 < self.best, min(self.best, val.top1)
                self.epoch, self.step, self.sums = self.epoch + 1, 0, [0, 0.0, 0.0]
                self.save(best=improved)
                folder.log_epoch(row)
                if self.rank == 0:
                    note = " (learning rate divided by 10)" if dropped else ""
                    print(f"epoch {self.epoch}/{cfg.epochs}: train loss {row['train_loss']:.3f}, top-1 error "
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
        unread = torch.zeros(3, dtype=torch.float64, device=self.device)  # images, summed loss, wrong top-1
        steps = 0  # in `unread`
        bar = tqdm(total=len(data.train), initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not cfg.progress or self.rank != 0, leave=False, dynamic_ncols=True)
        for images, labels, indices in data.train.epoch(self.epoch, start=self.step):
            lr = self.schedule.rate(self.epoch + self.step / len(data.train))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            x = train_batch(images, self.recipe, cfg.crop, cfg.seed, self.epoch, indices)
            with autocast(self.device, self.precision):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            unread[0] += len(labels)
            unread[1] += loss.detach().double() * len(labels)
            unread[2] += (logits.argmax(1) != labels).sum()
            self.step, self.total_steps, steps = self.step + 1, self.total_steps + 1, steps + 1
            if steps < read_every and self.step < len(data.train) and not self.done():
                continue
            loss_value = self._read(unread, steps)
            rate = (self.sums[0] - first) / max(time.monotonic() - started, 1e-9)
            bar.set_postfix_str(f"loss {loss_value:.3f}, lr {lr:.2g}, {rate:.0f} img/s")
            bar.update(steps)
            steps = 0
            if cfg.save_every and time.monotonic() - self.last_save > 60 * cfg.save_every:
                self.save()
            if self.done():
                break
        bar.close()
        return lr

    def _read(self, unread: torch.Tensor, steps: int) -> float:
        """Add the last `steps` steps' counts (over all processes) to the epoch's sums; their mean loss.

        Raises DivergedError where their loss is NaN or infinite."""
        images, loss, wrong = _sum(unread.clone()).tolist()
        unread.zero_()
        if not math.isfinite(loss):
            where = f"step {self.step}" if steps == 1 else f"steps {self.step - steps + 1}-{self.step}"
            raise DivergedError(f"the loss became {loss} at epoch {self.epoch + 1}, {where}; the last good "
                                f"checkpoint is {self.run_path / 'last.pt'} (try a lower --lr)")
        self.sums = [self.sums[0] + images, self.sums[1] + loss, self.sums[2] + wrong]
        return loss / images


def final_evaluation(run_path: Path) -> dict[int, Errors]:
    """Centre-crop and ten-crop validation errors of the run's best checkpoint (last.pt if none is best)."""
    state = checkpoint.load(run_path)
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
    net = network(state, cfg.device, cfg.precision)
    val = Loader(open_split(data_root(cfg.data), "val"), cfg.batch_size, shuffle=False, workers=cfg.workers,
                 pin_memory=net.device.type == "cuda")
    return {crops: evaluate([net], val.epoch(0), crops) for crops in (1, 10)}
