"""The configuration of `alexnet train`: every option declared once (TrainConfig), and how a run resolves it before
its run folder exists: the defaults that depend on the data and the budget, the defaults on fewer classes than
ImageNet's (few_classes.py: the initialization, the clip), and a resumed run's configuration. Once resolved, a run's
configuration does not change; what a run decides while it trains (the epochs a budget fits) is its state, kept
in its checkpoints."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import of_run
from .errors import InputError, count
from .few_classes import CLIP, PAPER_CLASSES, default_clip, default_init
from .files import read_json
from .lrn import MODES
from .model import ARCHS, INITS, LAYERS, MIDDLE, WIDTHS
from .optim import SCHEDULES
from .options import AMOUNT, COUNT, FRACTION, RATE, SEED, SIZE, Accepts, check, option, resumed
from .run_folder import CONFIG, LAST
from .runtime import PRECISIONS

# The built-in photos (850 training images of 10 classes) get a budget that keeps the main job under 10 minutes.
BUILT_IN_MINUTES = 8
# Under a budget the schedule is a cosine over the epochs that fit: the plateau rule cannot be fitted to a
# number of epochs, and with few validation images (the built-in photos have 200) it divides the rate on noise.
BUDGET_SCHEDULE = "cosine"
PAPER_EPOCHS = 90  # §5: "roughly 90 cycles through the training set"
PAPER_SCHEDULE = "plateau"  # §5: divide by 10 "when the validation error rate stopped improving"
PARALLEL = ("data", "towers")
AUGMENTATIONS = ("paper", "crops", "none")
ORDERS = ("shuffled", "stratified")
# The values of options that a saved configuration may lack: what the runs that saved none trained with
BEFORE = {"order": "shuffled", "clip": 0.0}
CROP = Accepts("a whole number of at least 64", lambda v: v >= 64)
NAME = Accepts("a folder name, without /", lambda v: v not in ("", ".", "..") and "/" not in v)
FROZEN = LAYERS[:-1]  # the layers --freeze names: fc8 always trains
FREEZE = Accepts(f"one of {', '.join(FROZEN)}", lambda v: v in FROZEN)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on, each option declared once (the command line's options are made from
    these declarations); written to the run folder as config.json."""

    data: str | None = option(None, "a store from `alexnet prepare`, an image folder with train/ and val/, or a "
                                    "CSV list of images (default: the built-in photos)")
    val_fraction: float = option(0.0, "an image folder without val/: the fraction of each class's training images "
                                      "held out for validation (the same images every run)", accepts=FRACTION)
    weights: str | None = option(None, "fine-tune: start from trained weights, a checkpoint (.pt), a run folder, "
                                       "a weights file (.safetensors) or an `import-torchvision` network, keeping "
                                       "their network (architecture, LRN, width, removed layer, crop) and their "
                                       "preprocessing (mean image, input scale); fc8 is replaced, initialized by "
                                       "--init, where the data's classes are not theirs (default: none, a network "
                                       "initialized by --init)")
    freeze: str | None = option(None, "with --weights: this layer and those below it are not trained (default: "
                                      "none)", choices=FROZEN, accepts=FREEZE)
    pretrained_lr: float = option(1.0, "with --weights: a factor on the learning rate of the layers loaded from "
                                       "them (fc8, when replaced, takes the rate itself)", accepts=RATE)
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
    seed: int = option(0, "random seed", accepts=SEED)
    out: str = option("runs", "folder for run folders")
    name: str | None = option(None, "a new run folder's name (default: date-time-arch)", accepts=NAME)
    save_every: float = option(10.0, "minutes between mid-epoch checkpoints (0: only at the end of an epoch)",
                               accepts=AMOUNT, resume=True)
    max_steps: int | None = option(None, "stop after this many steps in all", accepts=COUNT, resume=True)
    resume: str | None = option(None, "a run folder (or checkpoint) to continue exactly")
    progress: bool = option(True, "no progress bar", resume=True)
    weights_digest: str | None = None  # the SHA-256 of the file --weights names, as the run started from it

    def __post_init__(self):
        check(self)
        if not self.weights and not self.resume and (self.freeze or self.pretrained_lr != 1):
            given = f"--freeze {self.freeze}" if self.freeze else f"--pretrained-lr {self.pretrained_lr:g}"
            raise InputError(f"{given}: applies to the layers loaded from --weights, and none is given")


def fill_defaults(cfg: TrainConfig) -> TrainConfig:
    """The configuration with every default that depends on the data filled in: a budget on the built-in photos
    (BUILT_IN_MINUTES), and a cosine under a budget (--minutes), whose `epochs` is then the most the run trains
    (how many fit is decided by the first epoch's time: Trainer.plan); else the paper's plateau rule and 90 epochs."""
    if cfg.data is None and not cfg.epochs:
        cfg = dataclasses.replace(cfg, minutes=cfg.minutes or BUILT_IN_MINUTES)
    schedule = cfg.schedule or (BUDGET_SCHEDULE if cfg.minutes else PAPER_SCHEDULE)
    return dataclasses.replace(cfg, epochs=cfg.epochs or PAPER_EPOCHS, schedule=schedule)


def resolve(cfg: TrainConfig, classes: int) -> tuple[TrainConfig, str, str]:
    """The configuration a run on `classes` classes trains with, every default filled in (fill_defaults, the
    initialization's default_init, default_clip), and why it has its initialization and its clip. A resolved
    configuration resolves to itself."""
    init, init_reason = (cfg.init, "as asked") if cfg.init else default_init(cfg.arch, classes)
    clip, clip_reason = (cfg.clip, "as asked") if cfg.clip is not None else default_clip(classes)
    return (dataclasses.replace(fill_defaults(cfg), data=absolute(cfg.data), init=init, clip=clip), init_reason,
            clip_reason)


def absolute(data: str | None) -> str | None:
    """A data path as a run keeps it: absolute, so that the run resumes, and its checkpoints evaluate, from any
    folder."""
    return None if data is None else str(Path(data).expanduser().resolve())


def weights_file(weights: str | None) -> str | None:
    """The file that --weights names, as a run keeps it: absolute, a run folder's checkpoint (checkpoint.of_run)."""
    if weights is None:
        return None
    path = Path(weights).expanduser().resolve()
    return str(of_run(path) if path.is_dir() else path)


def moved_data(data: str | None, saved: str | None, digest: str | None) -> str | None:
    """The data of a resumed run: its own (`saved`), or `data` where that is the same store at another place (its
    plan's digest the run's `digest`); InputError for other data."""
    if data is None or absolute(data) == absolute(saved):
        return saved
    from .data.sources import is_store
    from .data.store import Store

    if digest is not None and is_store(data) and Store(data).plan["digest"] == digest:
        return absolute(data)
    raise InputError(f"--data {data}: the run to resume trained on {saved or 'the built-in photos'}"
                     + (", and this is another store" if digest and is_store(data) else
                        "; --data takes the same store moved to another place"))


def saved_config(state: dict) -> TrainConfig:
    """The configuration a checkpoint was trained with (BEFORE for an option it predates)."""
    saved = {k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**BEFORE, **saved})


def resume_config(request: TrainConfig, state: dict) -> tuple[TrainConfig, int]:
    """The configuration of a run resumed from the checkpoint `state` (its own, with the changes that `request`
    may make) and the epochs it trains in all: --epochs where given, else the run's own (under a budget, the
    epochs that fitted). InputError where the checkpoint is not a run's, or the run has nothing left to train."""
    if "optimizer" not in state:  # a weights file, an import
        raise InputError(f"{state['path']} holds a network's weights only; --resume takes a run's {LAST}")
    cfg = resumed_from(request, saved_config(state), state.get("data_digest"))
    # a checkpoint without planned_epochs kept a budget's plan in its configuration's epochs
    epochs, steps = request.epochs or state.get("planned_epochs", cfg.epochs), state["total_steps"]
    if epochs <= state["epoch"] and request.epochs is None:
        raise InputError(f"the run has trained all its {count(epochs, 'epoch')}; give --epochs N above "
                         f"{epochs} to train longer")
    if epochs <= state["epoch"]:
        raise InputError(f"--epochs {epochs}: the run has trained {count(state['epoch'], 'epoch')} already; "
                         "give more to train longer")
    if cfg.max_steps and cfg.max_steps <= steps:
        raise InputError(f"--max-steps {cfg.max_steps}: the run has made {count(steps, 'step')} already; "
                         "give more")
    return cfg, epochs


def unsaved_config(request: TrainConfig, folder: Path) -> TrainConfig:
    """The configuration of a run that stopped before its first checkpoint (run_folder.unsaved): its config.json,
    with the changes that `request` may make, to start it again."""
    try:
        saved = saved_config({"config": read_json(folder / CONFIG)})
    except (ValueError, AttributeError, TypeError):
        raise InputError(f"{folder / CONFIG} is not a run's configuration") from None
    return resumed_from(request, saved, None)


def resumed_from(request: TrainConfig, saved: TrainConfig, digest: str | None) -> TrainConfig:
    """The configuration `saved` with the changes that a resume's `request` may make (options.resumed), its
    --weights compared as the run keeps them and its --data as moved_data takes it (`digest`: the run's store's)."""
    kept = dataclasses.replace(request, data=None, weights=weights_file(request.weights))
    return dataclasses.replace(resumed(kept, saved), data=moved_data(request.data, saved.data, digest))
