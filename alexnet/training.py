"""`alexnet train`: the paper's training recipe (§5), resumable, on one process or many (torchrun).

train() opens the data and runs a Trainer, which resolves the configuration (config.py) and trains epoch after
epoch into a run folder (run_folder.py). A checkpoint holds the weights, the optimizer, the schedule's state, the
random state, the position in the epoch and the epochs the run trains, so that `--resume RUN` continues exactly
where RUN stopped. A run with --weights starts from trained weights (finetune.py).
"""

import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint, distributed, run_folder
from .config import TrainConfig, resolve, resume_config, unsaved_config
from .data.augment import COLOUR_STD, center_crop, train_batch
from .data.folders import SIDE, BadImageError, preprocess
from .data.loader import Loader
from .data.sources import data_root, describe, is_store, open_split, prepared_root, split_names
from .data.split import Split
from .data.stats import PixelStats, Recipe
from .data.store import Store
from .divergence import DeadGuard, DivergedError
from .errors import InputError, count
from .evaluate import evaluate
from .files import link_or_copy
from .finetune import freeze, load_layers, preprocessing, source, start_line
from .inference import Network
from .optim import Schedule, build_optimizer, parameter_groups, set_rate
from .record import NetworkRecord, build_model
from .runtime import autocast, choose_device, choose_precision
from .towers import Pair, Tower, place

READ_EVERY = 20  # steps between reading the loss back from a GPU
PROBE_BATCH = 64  # images per step in the timing of --precision auto
RECIPE_SAMPLE = 2000  # images that estimate the mean image and RGB PCA when training straight from JPEGs


def train(cfg: TrainConfig) -> Path:
    """Train; returns the run folder. Raises DivergedError on a NaN or infinite loss (last.pt stays good).

    The run seeds torch's random generators and gives them back as they were when it ends."""
    started = time.monotonic()  # a budget counts everything from here: the built-in store, the kernels' build
    rank, world, local_rank = distributed.start()
    try:
        state = epochs = start = run_path = None
        if cfg.resume and run_folder.unsaved(Path(cfg.resume)):  # stopped before its first checkpoint: start again
            cfg, run_path = unsaved_config(cfg, Path(cfg.resume)), Path(cfg.resume)
        elif cfg.resume:
            state = checkpoint.load(Path(cfg.resume) / run_folder.LAST if Path(cfg.resume).is_dir() else cfg.resume)
            (cfg, epochs), run_path = resume_config(cfg, state), Path(state["path"]).parent
        if cfg.weights and state is None:  # a resumed run's checkpoint holds all it took from its weights
            cfg, start = source(cfg)  # their architecture, which the run folder's name and the towers need
        run_path = run_path or _new_run_path(cfg, world, local_rank)
        device = choose_device(cfg.device)
        pair = place(cfg.arch, rank, world) if cfg.parallel == "towers" else None
        with torch.random.fork_rng(devices=[local_rank] if device.type == "cuda" else []):
            trainer = Trainer(cfg, open_data(cfg, rank, world, pair), run_path, rank, world, local_rank, started,
                              pair, start)
            if state is not None:
                trainer.restore(state, epochs)
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


def _new_run_path(cfg: TrainConfig, world: int, local_rank: int) -> Path:
    """A new run's folder, as the first process names it (the processes may have started in different seconds);
    InputError where something is there already."""
    path = run_folder.new_path(cfg.out, cfg.name, cfg.arch)
    taken = run_folder.taken(path)
    if world > 1:
        path, taken = distributed.first([path, taken], local_rank)
    if taken:
        raise InputError(f"{path} exists already: --resume {path} trains it on, or give another --name")
    return path


@dataclass
class Data:
    """The training and validation batches and the statistics of the recipe."""

    train: Loader
    val: Loader
    recipe: Recipe
    description: str
    digest: str | None  # a store's (its plan's SHA-256), which a resumed run checks a moved store by

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
    stats = PixelStats.empty(SIDE, SIDE)
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
    pair (--parallel towers) the same share. It reads only options that no default resolves (config.resolve)."""
    shard, shards = (pair.index, pair.pairs) if pair else (rank, world)
    if cfg.batch_size % shards:  # every process gets an equal share of a step (§5's batch is global)
        unit = "pairs of processes" if pair else "processes"
        raise InputError(f"--batch-size {cfg.batch_size}: does not split evenly over {shards} {unit}")
    if rank == 0:
        prepared_root(cfg.data)
    if world > 1:
        dist.barrier()
    root = data_root(cfg.data)
    if cfg.val_fraction and "val" in split_names(root):
        raise InputError(f"--val-fraction {cfg.val_fraction}: {root} has a validation split of its own")
    if "val" not in split_names(root, cfg.val_fraction):
        raise InputError(f"{root} has no validation split (val/), which the recipe needs: --val-fraction F holds "
                         "out F of each class's training images")
    train, val = open_split(root, "train", cfg.val_fraction), open_split(root, "val", cfg.val_fraction)
    if val.classes != train.classes:
        raise InputError(f"{root}: the validation classes differ from the training classes")
    if cfg.crop > train.side:
        raise InputError(f"--crop {cfg.crop}: larger than the {train.side}×{train.side} images of {root}")
    description, digest = describe(cfg.data), None
    if is_store(root):
        store = Store(root)
        recipe, digest = store.recipe(), store.plan["digest"]
    else:
        recipe = estimate_recipe(train, cfg.seed)
        description += f" (mean and PCA from {min(len(train), RECIPE_SAMPLE)} images)"
    loader = functools.partial(Loader, batch_size=cfg.batch_size, seed=cfg.seed, rank=shard, world=shards,
                               workers=cfg.workers, pin_memory=choose_device(cfg.device).type == "cuda")
    return Data(loader(train, shuffle=True, stratify=cfg.order == "stratified"), loader(val, shuffle=False), recipe,
                description, digest)


class Trainer:
    """The state of a run and the loop over its epochs (§5). Seeds torch's global random generator.

    With `pair` (--parallel towers) the process holds one tower of the network (towers.Tower); its counts are
    summed over its twins, which between them see each image once, and its checkpoints hold the whole network.
    With `start` (--weights, loaded by finetune.source) the network starts from those weights."""

    def __init__(self, cfg: TrainConfig, data: Data, run_path: Path, rank: int = 0, world: int = 1,
                 local_rank: int = 0, started: float | None = None, pair: Pair | None = None,
                 start: dict | None = None):
        cfg, init_reason, self.clip_reason = resolve(cfg, len(data.classes))  # before the run folder exists
        self.cfg = cfg
        self.data, self.run_path, self.rank, self.world, self.pair = data, run_path, rank, world, pair
        self.reduce = pair.sum if pair else distributed.reduce
        self.device = choose_device(cfg.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)
        recipe = data.recipe if start is None else preprocessing(start["network"].recipe, data.recipe, cfg.weights)
        self.record = NetworkRecord.of(cfg.arch, data.classes, data.names, cfg.lrn, dropout=cfg.dropout,
                                       width=cfg.width, remove=cfg.remove, crop=cfg.crop, recipe=recipe)
        self.model = build_model(self.record, cfg.init)
        # the layers loaded from --weights, which take --pretrained-lr's share of the rate
        self.pretrained = () if start is None else load_layers(self.model, start, data.classes)
        self.start_reason = (f"initialization {cfg.init} ({init_reason})" if start is None else
                             start_line(start, data.classes, cfg.init, init_reason))
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.frozen = freeze(self.model, cfg.freeze)
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
        self.optimizer = self._optimizer()
        self.epochs = cfg.epochs  # the epochs the run trains: under a budget, at most these until `plan` fits them
        self.schedule = schedule_of(cfg, self.epochs, len(data.train))
        self.recipe = recipe.to(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch, self.step, self.total_steps, self.best = 0, 0, 0, math.inf
        self.sums = [0, 0.0, 0.0]  # images, summed loss, wrong top-1 so far in this epoch (kept across a resume)
        self.guard = DeadGuard(len(data.classes))
        self.alive = torch.zeros((), dtype=torch.float64, device=self.device)  # fc7 units that fired, last batch
        self.model.layers()["fc7"].register_forward_hook(self._count_alive)
        self.started = time.monotonic() if started is None else started  # the clock of --minutes
        self.planned = cfg.minutes is None  # whether self.epochs is final (see plan)
        self.measured: dict | None = None  # the validation errors of the weights as they are (see snapshot)

    def _optimizer(self) -> torch.optim.Optimizer:
        """The run's optimizer over the parameters that train, the layers loaded from --weights at
        --pretrained-lr's share of the rate (optim.parameter_groups)."""
        cfg = self.cfg
        return build_optimizer(cfg.optimizer, parameter_groups(self.model, self.pretrained, cfg.pretrained_lr),
                               cfg.lr, cfg.momentum, cfg.weight_decay)

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

    def restore(self, state: dict, epochs: int) -> None:
        """Continue from a checkpoint (weights, optimizer, schedule state, random state, position in the epoch) for
        `epochs` epochs in all (config.resume_config)."""
        if state["network"].classes != self.data.classes:
            raise InputError(f"{state['path']} was trained on other classes than {self.data.description}")
        self.clip_reason = "the run's own"  # not a choice of this command's
        self.start_reason = (f"from {self.cfg.weights}" if self.cfg.weights else
                             f"initialization {self.cfg.init}") + " (the run's own)"
        # the run's own record's preprocessing (a fine-tuned run's is its weights'), and its own optimizer's groups
        self.record = dataclasses.replace(self.record, recipe=state["network"].recipe)
        self.recipe = self.record.recipe.to(self.device)
        self.pretrained = tuple(state.get("pretrained", ()))
        self.optimizer = self._optimizer()
        if self.pair:
            self.model.load_whole_state(self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.epochs = epochs
        self.schedule = dataclasses.replace(self.schedule, epochs=epochs)
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step, self.total_steps, self.best = (state[k] for k in ("epoch", "step", "total_steps",
                                                                                    "best"))
        self.sums, self.planned, self.measured = state["sums"], state.get("planned", True), state.get("measured")
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.device.index % len(state["cuda_rng"])])

    def info(self) -> dict:
        """What a checkpoint says beside the network's record and weights (checkpoint.INFO), as the run is now."""
        return {"config": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "progress"},
                "epoch": self.epoch, "best": self.best, "measured": self.measured}

    def snapshot(self) -> dict:
        """Everything `restore` needs, and what eval/predict need (a checkpoint, checkpoint.py): the record, the
        weights of the whole network (which under --parallel towers both processes of a pair assemble together)
        and the run's state."""
        model, optimizer = (self.model.whole_state(self.optimizer) if self.pair else
                            (self.model.state_dict(), self.optimizer.state_dict()))
        return {**self.info(), "network": self.record, "model": model, "optimizer": optimizer,
                "schedule": self.schedule.state_dict(), "step": self.step, "total_steps": self.total_steps,
                "sums": list(self.sums), "planned": self.planned, "planned_epochs": self.epochs,
                "data_digest": self.data.digest, "pretrained": list(self.pretrained),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}

    def save(self, best: bool = False) -> None:
        """Write last.pt, and best.pt as the same file (on the first process only, with the first pair's other
        tower under --parallel towers)."""
        if self.rank == 0 or self.pair and self.pair.index == 0:
            state = self.snapshot()
            if self.rank == 0:
                checkpoint.save(self.run_path / run_folder.LAST, state)
                if best:
                    link_or_copy(self.run_path / run_folder.LAST, self.run_path / run_folder.BEST)
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
        --epochs; the schedule follows them. The number is the run's state (its checkpoints keep it), not its
        configuration."""
        spent, epoch_seconds, validation_seconds = distributed.reduce(torch.tensor(
            [time.monotonic() - self.started, epoch_seconds, validation_seconds], dtype=torch.float64),
            dist.ReduceOp.MAX).tolist()  # every process decides the same
        left = 60 * self.cfg.minutes - spent - 11 * validation_seconds
        self.epochs = min(self.cfg.epochs, self.epoch + max(0, int(left // epoch_seconds)))  # those done, then more
        self.schedule = dataclasses.replace(self.schedule, epochs=self.epochs)
        self.planned = True
        if self.rank == 0:
            print(f"--minutes {self.cfg.minutes:g}: {spent:.0f} s for the first epoch and all before it, "
                  f"{epoch_seconds:.0f} s an epoch; {count(self.epochs, 'epoch')} fit", flush=True)

    def done(self) -> bool:
        """Whether the run has reached its epochs or its step limit."""
        return self.epoch >= self.epochs or bool(self.cfg.max_steps and self.total_steps >= self.cfg.max_steps)

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
        validation = Network(self.model, self.record, self.recipe, self.device, self.precision, self.info())
        folder = run_folder.RunFolder(self.run_path, active=self.rank == 0)
        folder.write_config(dataclasses.asdict(cfg))
        if self.rank == 0:
            layout = f" in {count(self.pair.pairs, 'pair')} of towers" if self.pair else ""
            frozen = "-".join(self.frozen[:1] + self.frozen[1:][-1:])  # conv1, or conv1-conv5
            print(f"training {cfg.arch!r} on {data.description}: {len(data.train.source)} training and "
                  f"{len(data.val.source)} validation images, {len(data.classes)} classes; "
                  f"{self.start_reason}; "
                  + (f"{frozen} frozen; " if frozen else "")
                  + (f"the loaded layers at {cfg.pretrained_lr:g} × --lr; " if cfg.pretrained_lr != 1 else "")
                  + (f"gradients clipped at norm {cfg.clip:g} ({self.clip_reason}); " if cfg.clip else "")
                  + f"{self.device.type}, {self.precision} "
                  f"({self.precision_reason}), {count(self.world, 'process')}{layout}; "
                  f"run folder {self.run_path}", flush=True)
        self.last_save = time.monotonic()
        try:
            while not self.done():
                self.measured = None  # the weights change
                started, first = time.monotonic(), self.sums[0]
                lr = self.train_epoch(net, folder)
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
                # a process of --parallel towers holds half of conv1's kernels: none drawn
                folder.log_epoch(row, None if self.pair else self.model.conv1_towers())
                if not self.planned:  # an epoch's time includes its checkpoints and plots (a second or two)
                    self.plan(time.monotonic() - started, validation_seconds)
                    if self.done():  # last.pt was saved before the plan
                        self.save()
                if self.rank == 0:
                    note = " (learning rate divided by 10)" if dropped else ""
                    print(f"epoch {self.epoch}/{self.epochs}: train loss {row['train_loss']:.3f}, top-1 error "
                          f"{100 * row['train_top1']:.1f}%; val loss {val.loss:.3f}, top-1 {100 * val.top1:.1f}%, "
                          f"top-5 {100 * val.top5:.1f}%; lr {lr:.2g}; {row['images_per_s']:.0f} img/s{note}",
                          flush=True)
        finally:
            folder.close()
        return self.run_path

    def train_epoch(self, net: torch.nn.Module, folder: run_folder.RunFolder) -> float:
        """The steps of the current epoch from the current step on, the loss and learning rate to TensorBoard
        about every READ_EVERY steps; returns the last learning rate."""
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
        logged = self.sums[:2]  # images and summed loss at the last step given to TensorBoard
        bar = tqdm(total=len(data.train), initial=self.step, desc=f"epoch {self.epoch + 1}/"
                   f"{self.epochs if self.planned else '?'}",
                   unit="batch", disable=not cfg.progress or self.rank != 0, leave=False, dynamic_ncols=True)
        for images, labels, indices in data.train.epoch(self.epoch, start=self.step):
            lr = self.schedule.rate(self.epoch + self.step / len(data.train))
            set_rate(self.optimizer, lr)
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
            if self.total_steps // READ_EVERY > (self.total_steps - steps) // READ_EVERY \
                    or self.step == len(data.train):
                folder.log_step(self.total_steps, (self.sums[1] - logged[1]) / (self.sums[0] - logged[0]), lr)
                logged = self.sums[:2]
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
        last = self.run_path / run_folder.LAST
        return f"the last checkpoint is {last}" if last.exists() else "no checkpoint had been saved yet"

    def _read(self, unread: torch.Tensor, steps: int) -> float:
        """Add the last `steps` steps' counts (over all processes) to the epoch's sums; their mean loss.

        Raises DivergedError where their loss is NaN or infinite, or where the network has died (DeadGuard)."""
        images, loss, wrong = self.reduce(unread[:3].clone()).tolist()
        loss_range, alive = distributed.reduce(unread[3:].clone(), dist.ReduceOp.MAX).tolist()
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


def schedule_of(cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> Schedule:
    """The learning-rate schedule of a resolved configuration over `epochs` epochs."""
    return Schedule(cfg.schedule, cfg.lr, epochs, cfg.warmup_epochs, cfg.step_size, cfg.patience, cfg.min_delta,
                    cfg.max_drops, steps_per_epoch)
