"""The paper's claims about its own network, tested on it and on real photos: dropout (§4.2), depth (§7),
data augmentation (§4.1) and the ten test patches (§4.1).

Each experiment trains its variants of AlexNet with `train.train` (the same Trainer as `alexnet train`),
one seed after another, every variant of a seed from the same initial weights through the same
mini-batches and the same random crops (the Trainer seeds both from --seed): a variant differs from the
others only in what the experiment is about. It writes into its output folder:

    config.json     the settings of the experiment
    curves.csv      one row per variant, seed and epoch: training and validation error and loss, seconds
    results.json    per variant and seed the final errors; their mean and range over seeds; each claim's
                    difference seed by seed with a 95% interval and the seeds needed to tell it from noise
                    (spread.py); the machine, this run's wall time, and the seconds its variants took
                    to train (run_seconds, also where they were trained before)
    <name>.png      validation (solid) and training (dashed) top-1 error against epochs, mean and range

The trained variants are run folders under --runs, named by their settings: a variant that another
experiment has trained with the same settings (the full network is in all four) is read, not trained again.

The default scale fits a 2-core CPU: the paper's eight layers with a quarter of its kernels and units
(24-64-96-96-64 kernels, 1024 units in fc6 and fc7), on 67×67 crops of 76×76 images (`alexnet prepare
--size 76`: the paper's 227 of 256 scaled by 0.3), for which conv5's pooled maps are 1×1 where the
paper's are 6×6. `--full` is the paper's scale: all kernels, 224 crops of the 256×256 images, 90 epochs.
All variants follow one learning-rate schedule fixed in advance (cosine), where the paper divided the
rate when the validation error stopped improving (§5), which would differ between the variants.
"""

import csv
import dataclasses
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .errors import InputError, count
from .experiments import epochs_to_reach
from .files import write_json, write_text
from .final_evaluation import final_evaluation
from .options import COUNT, RATE, SEED, check, option
from .report import error_curves, out_folder, results_text
from .run_folder import LAST, METRICS
from .runtime import PRECISIONS, machine
from .spread import paired, spread
from .training import train

SCALES = {  # the settings that --full changes: the default CPU scale, and the paper's
    "cpu": {"width": 0.25, "crop": 67, "epochs": 12},
    "full": {"width": 1.0, "crop": 224, "epochs": 90},
}
RECORDED = ("train_top1", "val_top1", "val_top5", "train_loss", "val_loss", "lr", "seconds")  # of metrics.jsonl


@dataclass(frozen=True)
class Variant:
    """One network of an experiment: its label and the training options it changes."""

    label: str
    changes: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Claim:
    """A statement of the paper as a difference: `measure` of variant `other` minus that of variant `base`."""

    what: str
    base: str
    other: str
    measure: str = "val_top1"  # or "gap" (validation minus training error), "ten_top1" (ten patches)
    other_measure: str | None = None  # the other side's measure, where it is not `measure`


@dataclass(frozen=True)
class Study:
    """An experiment: its variants, the paper's claims about them and the numbers the paper gives."""

    title: str
    paper: str
    variants: tuple[Variant, ...]
    claims: tuple[Claim, ...]
    ten_crops: bool = False  # evaluate every variant's final weights on the ten patches too


FULL = Variant("all eight layers")
STUDIES = {
    "dropout": Study(
        "dropout (§4.2)",
        "without dropout the network overfits substantially; dropout roughly doubles the iterations to converge",
        (Variant("dropout 0.5", ()), Variant("no dropout", (("dropout", 0.0),))),
        (Claim("no dropout: validation top-1 error", "dropout 0.5", "no dropout"),
         Claim("no dropout: validation minus training error", "dropout 0.5", "no dropout", "gap"))),
    "depth": Study(
        "depth (§7)",
        "removing any middle convolutional layer costs about 2 points of top-1",
        (FULL, *(Variant(f"without {name}", (("remove", name),)) for name in ("conv3", "conv4", "conv5"))),
        tuple(Claim(f"without {name}: validation top-1 error", FULL.label, f"without {name}")
              for name in ("conv3", "conv4", "conv5"))),
    "augmentation": Study(
        "data augmentation (§4.1)",
        "without crops and mirrors the network overfits substantially; PCA colour noise lowers top-1 by over 1 point",
        (Variant("crops, mirrors, colour", ()), Variant("crops and mirrors", (("augment", "crops"),)),
         Variant("none (centre crop)", (("augment", "none"),))),
        (Claim("no augmentation: validation top-1 error", "crops and mirrors", "none (centre crop)"),
         Claim("no augmentation: validation minus training error", "crops and mirrors", "none (centre crop)",
               "gap"),
         Claim("no colour noise: validation top-1 error", "crops, mirrors, colour", "crops and mirrors"))),
    "tencrop": Study(
        "ten patches at test time (§4.1)",
        "averaging the ten patches lowers top-1 / top-5 error from 39.0 / 18.3 to 37.5 / 17.0 (ILSVRC-2010)",
        (FULL,),
        (Claim("ten patches: validation top-1 error", FULL.label, FULL.label, "val_top1", "ten_top1"),
         Claim("ten patches: validation top-5 error", FULL.label, FULL.label, "val_top5", "ten_top5")),
        ten_crops=True),
}


@dataclass
class StudyConfig:
    """The settings of one experiment on AlexNet, each option declared once; written to its output folder."""

    study: str
    data: str = option(None, "a store from `alexnet prepare` with train and val splits (Imagenette: `alexnet "
                             "prepare IMAGENETTE STORE --size 76` for the default scale, without --size for "
                             "--full); required", required=True)
    out: str | None = option(None, "folder for the figure, curves and results")  # None: report.out_folder
    runs: str = option("runs/experiments/variants", "folder of the variants' run folders, shared by the "
                                                    "experiments: a variant trained before is reused")
    full: bool = option(False, "the paper's scale (a GPU's work): all kernels, 224 crops, 90 epochs")
    seed: int = option(0, "the first seed (seeds of one experiment can run side by side, sharing --runs)",
                       accepts=SEED)
    seeds: int = option(3, "seeds SEED, SEED+1, ...: every variant trained once for each", accepts=COUNT)
    epochs: int | None = option(None, f"epochs per variant (default: {SCALES['cpu']['epochs']}, with --full "
                                      f"{SCALES['full']['epochs']})", accepts=COUNT)
    width: float | None = option(None, f"kernels and units per layer as a fraction of the paper's (default: "
                                       f"{SCALES['cpu']['width']:g}, with --full 1)")
    crop: int | None = option(None, f"crop side (default: {SCALES['cpu']['crop']}, with --full 224)")
    batch_size: int = option(128, "images per step", section="§5", accepts=COUNT)
    lr: float = option(0.01, "initial learning rate", section="§5", accepts=RATE)
    device: str = option("auto", "auto, cpu, cuda, ...")
    precision: str = option("fp32", "one precision for every variant (auto would time each run on its own, and "
                                    "could choose differently for two variants)", choices=PRECISIONS)
    progress: bool = option(True, "no progress bars")

    def __post_init__(self):
        check(self)

    def training(self, variant: Variant, seed: int) -> TrainConfig:
        """The Trainer's configuration of one variant and seed; its run folder is named by its settings."""
        scale = dict(SCALES["full" if self.full else "cpu"])
        scale.update({k: getattr(self, k) for k in scale if getattr(self, k) is not None})
        # the recipe the documented results were measured with (docs/experiments.md), which their comparisons
        # need: PyTorch's initialization at the CPU scale, and at both scales a plain shuffle without clipping
        cfg = TrainConfig(data=self.data, schedule="cosine", batch_size=self.batch_size, lr=self.lr, seed=seed,
                          device=self.device, precision=self.precision, progress=self.progress, save_every=0,
                          out=self.runs, init=None if self.full else "torchvision", order="shuffled", clip=0.0,
                          **scale, **dict(variant.changes))
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "name", "progress")}
        settings["data"] = str(Path(self.data).expanduser().resolve())
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return dataclasses.replace(cfg, name=f"seed{seed}-{digest}")


def trained(cfg: TrainConfig, ten_crops: bool) -> dict:
    """The run of `cfg`, trained now unless a finished one is there: its epochs, and its final weights' errors on
    the centre crop and (`ten_crops`) the ten patches."""
    run = Path(cfg.out) / cfg.name
    done = run / "done.json"
    if not done.is_file():
        shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts over
        started = time.monotonic()
        train(cfg)
        write_json(done, {"wall_seconds": time.monotonic() - started})
    record = json.loads(done.read_text())
    if ten_crops and "ten_top1" not in record:  # §4.1: the same final weights, one patch against ten
        errors = final_evaluation(run / LAST)
        record.update(ten_top1=errors[10].top1, ten_top5=errors[10].top5)
        write_json(done, record)
    rows = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    return {"run": str(run), **record, "epochs": {k: [r[k] for r in rows] for k in RECORDED}}


def measures(record: dict) -> dict:
    """The final numbers of one trained variant: validation and training error, their gap, ten-crop errors."""
    e = record["epochs"]
    out = {"val_top1": e["val_top1"][-1], "val_top5": e["val_top5"][-1], "train_top1": e["train_top1"][-1]}
    out["gap"] = out["val_top1"] - out["train_top1"]
    out.update({k: record[k] for k in ("ten_top1", "ten_top5") if k in record})
    return out


def run_study(config: StudyConfig) -> dict:
    """Run one experiment end to end: every variant for every seed, then curves, results and figure."""
    if config.study not in STUDIES:
        raise InputError(f"unknown experiment {config.study!r}; expected one of {', '.join(STUDIES)}")
    study = STUDIES[config.study]
    out = out_folder(config.out, config.study)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(config))
    where, started = machine(), time.monotonic()
    records = {v.label: [] for v in study.variants}
    for seed in range(config.seed, config.seed + config.seeds):
        for variant in study.variants:
            cfg = config.training(variant, seed)
            print(f"{config.study}: {variant.label}, seed {seed} ({cfg.out}/{cfg.name})", flush=True)
            records[variant.label].append(trained(cfg, study.ten_crops))
    results = summarize(config.study, records)
    results.update(machine=where, wall_seconds=time.monotonic() - started,
                   settings=dataclasses.asdict(config.training(study.variants[0], config.seed)))
    write_curves(out / "curves.csv", records, config.seed)
    write_json(out / "results.json", results)
    plot(out / f"{config.study}.png", study, records, results["settings"])
    print(study_report(results))
    print(f"wrote {out / 'curves.csv'}, {out / 'results.json'} and {out / (config.study + '.png')}")
    return results


def summarize(name: str, records: dict[str, list[dict]]) -> dict:
    """results.json: per variant each measure over seeds, per claim the paired difference (spread.paired)."""
    study = STUDIES[name]
    finals = {label: [measures(r) for r in runs] for label, runs in records.items()}
    variants = {label: {k: spread([m[k] for m in ms]) for k in ms[0]} for label, ms in finals.items()}
    for label, runs in records.items():
        variants[label]["wall_seconds"] = spread([r["wall_seconds"] for r in runs])
    claims = []
    for c in study.claims:
        base = [m[c.measure] for m in finals[c.base]]
        other = [m[c.other_measure or c.measure] for m in finals[c.other]]
        claims.append({"what": c.what, **paired(base, other)})
    results = {"experiment": name, "paper": study.paper, "seeds": len(records[study.variants[0].label]),
               "variants": variants, "claims": claims,
               "run_seconds": sum(r["wall_seconds"] for runs in records.values() for r in runs)}
    if name == "dropout":
        results["converge"] = convergence(records)
    return results


def convergence(records: dict[str, list[dict]]) -> dict:
    """§4.2's "roughly doubles the number of iterations required to converge", seed by seed: the epochs each
    variant takes to reach the training error that the one with dropout ends at, and their ratio (None where
    the one without dropout never reaches it)."""
    ratios, epochs = [], {label: [] for label in records}
    for with_dropout, without in zip(*records.values(), strict=True):
        target = with_dropout["epochs"]["train_top1"][-1]
        reach = [epochs_to_reach(r["epochs"]["train_top1"], target) for r in (with_dropout, without)]
        for label, value in zip(records, reach, strict=True):
            epochs[label].append(value)
        ratios.append(None if None in reach else reach[0] / reach[1])
    return {"epochs": epochs, "ratio": None if None in ratios else spread(ratios)}


def study_report(results: dict) -> str:
    """The results as a few lines of text (report.results_text): each variant's errors, then each claim's
    difference."""
    table = {label: {"val top-1": _range(v["val_top1"]), "train top-1": _range(v["train_top1"])}
             for label, v in results["variants"].items()}
    notes = []
    if results.get("converge", {}).get("ratio"):
        ratio = results["converge"]["ratio"]
        notes.append(f"epochs to the training error that dropout ends at, with / without dropout: "
                     f"{ratio['mean']:.2f} (range {ratio['min']:.2f} to {ratio['max']:.2f})")
    return results_text(table, results["claims"], notes, results["paper"], results["seeds"])


def _range(s: dict) -> str:
    return f"{100 * s['mean']:.1f}% ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def write_curves(path: Path, records: dict[str, list[dict]], first_seed: int = 0) -> None:
    """One CSV row per variant, seed and epoch (the seeds in turn, from `first_seed`)."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["variant", "seed", "epoch", *RECORDED])
    for label, runs in records.items():
        for seed, r in enumerate(runs, start=first_seed):
            for epoch, row in enumerate(zip(*(r["epochs"][k] for k in RECORDED), strict=True), start=1):
                writer.writerow([label, seed, epoch, *(f"{v:.6g}" for v in row)])
    write_text(path, table.getvalue())


def plot(path: Path, study: Study, records: dict[str, list[dict]], settings: dict) -> None:
    """Validation (solid) and training (dashed) top-1 error against epochs over the seeds; the ten patches' final
    error as a point. A 640×480 PNG (report.error_curves)."""
    colours = dict(zip(records, ("C0", "C1", "C2", "C3"), strict=False))
    lines = [(f"{label}, {name}", colours[label], style, [r["epochs"][key] for r in runs])
             for label, runs in records.items()
             for key, name, style in (("val_top1", "validation", "-"), ("train_top1", "training", "--"))]
    points = [(f"{label}, validation, ten patches", "C3", [r["ten_top1"] for r in runs])
              for label, runs in records.items()] if study.ten_crops else []
    scale = "the paper's" if settings["width"] == 1 else f"{settings['width']:g} of the paper's"
    title = (f"{study.title}: AlexNet, {scale} kernels, {settings['crop']}² crops,\n"
             f"mean and range over {count(len(next(iter(records.values()))), 'seed')}")
    error_curves(path, title, "top-1 error rate", lines, points)
