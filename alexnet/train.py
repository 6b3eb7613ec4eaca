"""`alexnet train`: the paper's training recipe (§5), resumable, on one process or many (torchrun).

A run folder holds config.json (the resolved configuration), metrics.jsonl and metrics.csv (one row
per epoch), tb/ (TensorBoard events), curves.png (loss and top-1/top-5 error against epochs),
last.pt (every epoch, and every `save_every` minutes within one) and best.pt (lowest validation
top-1 error). A checkpoint holds the weights, the optimizer, the schedule, the random state and the
position in the epoch, so that `--resume RUN` continues exactly where RUN stopped.
"""

import contextlib
import csv
import dataclasses
import functools
import hashlib
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
from .data.augment import Recipe, train_batch
from .data.folders import DEFAULT_DATA, preprocess
from .data.loader import Loader, is_store, open_split, split_names
from .data.store import Store, atomic_write, prepare, rgb_pca
from .evaluate import Errors, evaluate
from .model import build_model
from .optim import Schedule, build_optimizer
from .runtime import autocast, choose_device, choose_precision, keep_freed_memory, prepare_device

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
    """Everything a run depends on; written to the run folder as config.json."""

    data: str | None = None  # a store made by `alexnet prepare`, an image folder, or None: the built-in photos
    arch: str = "paper"
    lrn: str | None = None  # None: the architecture's own formula
    init: str | None = None  # None: the architecture's own initialization
    dropout: float = 0.5
    epochs: int | None = None  # None: 90 (the paper), or BUILT_IN["epochs"] on the built-in photos
    batch_size: int = 128  # global, over all processes (§5)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "paper"
    schedule: str | None = None  # None: "plateau" (the paper), or BUILT_IN["schedule"] on the built-in photos
    patience: int = 2
    min_delta: float = 0.0
    max_drops: int = 3
    step_size: int = 30
    warmup_epochs: float = 0.0
    crop: int = 224
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    workers: int = 2  # decoding processes when training straight from JPEG folders
    seed: int = 0
    out: str = "runs"
    name: str | None = None
    save_every: float = 10.0  # minutes between checkpoints within an epoch (0: only at epoch ends)
    max_steps: int | None = None  # stop after this many steps in all (for quick checks)
    resume: str | None = None  # a run folder or checkpoint to continue
    progress: bool = True


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Data:
    """The training and validation batches and the statistics of the recipe."""

    train: Loader
    val: Loader
    recipe: Recipe
    classes: list[str]
    names: list[str]
    description: str


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet"


def _estimate_recipe(images, seed: int) -> Recipe:
    """The mean image and RGB PCA from up to RECIPE_SAMPLE training images (no prepare step)."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:RECIPE_SAMPLE]
    total, pixel_sum, pixel_outer, n = np.zeros((256, 256, 3)), np.zeros(3), np.zeros((3, 3)), 0
    for i in sorted(chosen):
        with contextlib.suppress(ValueError):  # a bad file: the loader will report it
            image = preprocess(images.paths[i])
            pixels = np.ascontiguousarray(image.reshape(-1, 3).T, dtype=np.float64)
            total += image
            pixel_sum += pixels.sum(1)
            pixel_outer += pixels @ pixels.T
            n += 1
    if n == 0:
        raise ValueError(f"no readable training images in {images.root}")
    pca = rgb_pca(pixel_sum, pixel_outer, n * 256 * 256)
    return Recipe(torch.from_numpy(total / n), torch.from_numpy(pca["eigval"]), torch.from_numpy(pca["eigvec"]))


def open_data(cfg: TrainConfig, rank: int = 0, world: int = 1) -> Data:
    """The batches of a store, of an image folder (decoded on the fly), or of the built-in photos."""
    source = cfg.data
    if source is None:  # the built-in photos, prepared once into the cache
        source = _cache_dir() / f"default-{hashlib.sha256(str(DEFAULT_DATA).encode()).hexdigest()[:12]}"
        if rank == 0:
            prepare(DEFAULT_DATA, source, progress=False)
        if world > 1:
            dist.barrier()
    if not Path(source).is_dir():
        raise FileNotFoundError(f"data folder not found: {source}")
    if "val" not in split_names(source):
        raise ValueError(f"{source} has no validation split (val/), which the recipe needs")
    train, val = open_split(source, "train"), open_split(source, "val")
    if val.classes != train.classes:
        raise ValueError(f"{source}: the validation classes differ from the training classes")
    if is_store(source):
        recipe, description = Store(source).recipe(), f"store {source}"
    else:
        recipe = _estimate_recipe(train, cfg.seed)
        description = f"JPEG folder {source} (mean and PCA from {min(len(train), RECIPE_SAMPLE)} images)"
    if cfg.data is None:
        description = f"the built-in photos ({DEFAULT_DATA})"
    loader = functools.partial(Loader, batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world=world,
                               workers=cfg.workers, pin_memory=choose_device(cfg.device).type == "cuda")
    return Data(loader(train, shuffle=True), loader(val, shuffle=False), recipe, train.classes, train.names,
                description)


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
        with open(self.path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                self.tb.add_scalar(key, value, row["epoch"])
        self.tb.flush()
        plot_curves(rows, self.path / "curves.png")

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss and top-1/top-5 error against epochs, training and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", label="training")
    left.plot(epochs, [r["val_loss"] for r in rows], "o-", label="validation (centre crop)")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    right.plot(epochs, [100 * r["train_top1"] for r in rows], "o-", label="training top-1")
    right.plot(epochs, [100 * r["val_top1"] for r in rows], "o-", label="validation top-1")
    right.plot(epochs, [100 * r["val_top5"] for r in rows], "o-", label="validation top-5")
    right.set(xlabel="epoch", ylabel="error (%)", title="Error rates", ylim=(0, 100))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=90, format="png"))
    plt.close(fig)


def _resolve(cfg: TrainConfig) -> tuple[TrainConfig, dict | None, Path]:
    """Fill the defaults; with --resume take the saved configuration and checkpoint instead."""
    if cfg.resume:
        state = checkpoint.load(Path(cfg.resume) / "last.pt" if Path(cfg.resume).is_dir() else cfg.resume)
        saved = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
        saved.resume, saved.progress = cfg.resume, cfg.progress
        if cfg.epochs is not None:
            saved.epochs = cfg.epochs  # the one thing a resumed run may change: train longer
        if cfg.max_steps is not None:
            saved.max_steps = cfg.max_steps
        return saved, state, Path(state["path"]).parent
    if cfg.data is None:  # the built-in photos (see BUILT_IN)
        cfg = dataclasses.replace(cfg, epochs=cfg.epochs or BUILT_IN["epochs"], init=cfg.init or BUILT_IN["init"],
                                  schedule=cfg.schedule or BUILT_IN["schedule"])
    cfg = dataclasses.replace(cfg, epochs=cfg.epochs or PAPER_EPOCHS, schedule=cfg.schedule or PAPER_SCHEDULE)
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.arch}"
    return cfg, None, Path(cfg.out) / name


def train(cfg: TrainConfig) -> Path:
    """Train; returns the run folder. Raises DivergedError on a NaN or infinite loss (last.pt stays good)."""
    cfg, state, run_path = _resolve(cfg)
    rank, world, local_rank = _distributed()
    try:
        trainer = Trainer(cfg, run_path, rank, world, local_rank)
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
    """The state of a run and the loop over its epochs (§5)."""

    def __init__(self, cfg: TrainConfig, run_path: Path, rank: int, world: int, local_rank: int):
        keep_freed_memory()
        self.cfg, self.run_path, self.rank, self.world = cfg, run_path, rank, world
        self.device = choose_device(cfg.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        elif world > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        prepare_device(self.device)
        self.precision = choose_precision(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.data = open_data(cfg, rank, world)
        self.model = build_model(cfg.arch, len(self.data.classes), cfg.lrn, cfg.init, cfg.dropout).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.momentum,
                                         cfg.weight_decay)
        self.schedule = Schedule(cfg.schedule or PAPER_SCHEDULE, cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.step_size,
                                 cfg.patience, cfg.min_delta, cfg.max_drops, steps_per_epoch=len(self.data.train))
        self.recipe = self.data.recipe.to(self.device)
        self.mixed = functools.partial(autocast, self.device, self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch, self.step, self.total_steps, self.best = 0, 0, 0, math.inf
        self.sums = [0, 0.0, 0.0]  # images, summed loss, wrong top-1 so far in this epoch (kept across a resume)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: weights, optimizer, schedule, random state, position in the epoch."""
        if state["classes"] != self.data.classes:
            raise ValueError(f"{state['path']} was trained on other classes than {self.data.description}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule = Schedule(**state["schedule"])
        self.epoch, self.step, self.total_steps, self.best = (state[k] for k in ("epoch", "step", "total_steps",
                                                                                    "best"))
        self.sums = state["sums"]
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.device.index % len(state["cuda_rng"])])

    def snapshot(self) -> dict:
        """Everything `restore` needs, and what eval/predict need: a weights_only-loadable dict."""
        r = self.data.recipe
        return {"arch": self.cfg.arch, "lrn": self.cfg.lrn, "dropout": self.cfg.dropout, "crop": self.cfg.crop,
                "classes": self.data.classes, "names": self.data.names, "model": self.model.state_dict(),
                "recipe": {"mean": r.mean, "eigval": r.eigval, "eigvec": r.eigvec},
                "optimizer": self.optimizer.state_dict(), "schedule": dataclasses.asdict(self.schedule),
                "epoch": self.epoch, "step": self.step, "total_steps": self.total_steps, "best": self.best,
                "sums": list(self.sums), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "config": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "progress"}}

    def save(self, best: bool = False) -> None:
        """Write last.pt, and best.pt as the same file (on the first process only)."""
        if self.rank == 0:
            checkpoint.save(self.run_path / "last.pt", self.snapshot())
            if best:
                checkpoint.copy(self.run_path / "last.pt", self.run_path / "best.pt")
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
        folder = RunFolder(self.run_path, active=self.rank == 0)
        if self.rank == 0:
            (self.run_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
            print(f"training {cfg.arch!r} on {data.description}: {len(data.train.source.labels)} training and "
                  f"{len(data.val.source.labels)} validation images, {len(data.classes)} classes; "
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
                val = evaluate([(self.model, self.recipe)], data.val.epoch(0), self.device, cfg.crop, 1, self.mixed,
                               _sum)
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
            with self.mixed():
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
    device = choose_device(cfg.device)
    model = checkpoint.model_from(state).to(device).to(memory_format=torch.channels_last)
    member = [(model, checkpoint.recipe_from(state).to(device))]
    val = open_data(cfg).val
    mixed = functools.partial(autocast, device, choose_precision(cfg.precision, device))
    return {crops: evaluate(member, val.epoch(0), device, state["crop"], crops, mixed) for crops in (1, 10)}
