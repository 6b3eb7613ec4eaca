"""A run folder of `alexnet train`, every file in it named here:

    config.json     the resolved configuration, written when the run starts
    metrics.jsonl   one row per epoch (JSON lines), and metrics.csv, the same as a table
    tb/             TensorBoard events: the same numbers, the loss and learning rate every few steps, the
                    hyperparameters, and conv1's kernels each epoch
    curves.png      loss and top-1/top-5 error against epochs
    last.pt         the checkpoint of every epoch, and of every `save_every` minutes within one
    best.pt         the checkpoint of the lowest validation top-1 error (the same file as a last.pt)
"""

import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path

from .files import atomic_write, write_json, write_text

CONFIG = "config.json"
METRICS = "metrics.jsonl"
METRICS_TABLE = "metrics.csv"
EVENTS = "tb"
CURVES = "curves.png"
LAST = "last.pt"
BEST = "best.pt"


def new_path(out: str, name: str | None, arch: str) -> Path:
    """Where a new run's folder goes: OUT/NAME, by default OUT/<date>-<time>-<arch>."""
    return Path(out) / (name or time.strftime("%Y%m%d-%H%M%S") + f"-{arch}")


def taken(path: Path) -> bool:
    """Whether a file, or a folder with anything in it, is at `path`: a new run never writes over it."""
    return path.is_file() or path.is_dir() and any(path.iterdir())


def unsaved(path: Path) -> bool:
    """Whether `path` is the folder of a run that stopped before its first checkpoint (a full disk, say): its
    configuration and no checkpoint."""
    return (path / CONFIG).is_file() and not (path / LAST).exists() and not (path / BEST).exists()


class RunFolder:
    """The files of a run that grow as it trains: configuration, metrics (JSON lines, CSV, TensorBoard), plot.
    Only the `active` process writes."""

    def __init__(self, path: Path, active: bool):
        self.path, self.active = path, active
        self.tb = None
        if active:
            from torch.utils.tensorboard import SummaryWriter

            path.mkdir(parents=True, exist_ok=True)
            self.tb = SummaryWriter(str(path / EVENTS))

    def write_config(self, config: dict) -> None:
        """Write config.json, once, as the run starts, and give TensorBoard the configuration as hyperparameters
        (against the validation errors of every epoch) and as text."""
        if not self.active:
            return
        from torch.utils.tensorboard.summary import hparams

        write_json(self.path / CONFIG, config)
        values = {k: v if isinstance(v, int | float | str) else json.dumps(v) for k, v in config.items()}
        for summary in hparams(values, {"val_top1": math.nan, "val_top5": math.nan}):
            self.tb.file_writer.add_summary(summary)
        self.tb.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))  # as code
        self.tb.flush()

    def log_step(self, step: int, loss: float, lr: float) -> None:
        """The training loss (the mean since the last call) and learning rate at a step, counted over the run."""
        if self.active:
            self.tb.add_scalar("step/train_loss", loss, step)
            self.tb.add_scalar("step/lr", lr, step)

    def log_epoch(self, row: dict, conv1: list | None = None) -> None:
        """Append one epoch's metrics everywhere and redraw the plot; `conv1`'s kernels (one block per tower, see
        figures.filters_canvas) to TensorBoard as an image."""
        if not self.active:
            return
        rows = [*read_metrics(self.path / METRICS), row]
        write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path / METRICS_TABLE, table.getvalue())
        for key, value in row.items():
            if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                self.tb.add_scalar(key, value, row["epoch"])
        if conv1 is not None:
            from .figures import filters_canvas

            self.tb.add_image("conv1", filters_canvas(conv1).pixels, row["epoch"], dataformats="HWC")
        self.tb.flush()
        plot_curves(rows, self.path / CURVES)

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl, in order; none where there is no file. A line that is not a whole row (a
    run killed while it wrote one leaves a torn last line) is passed over."""
    rows = []
    for line in path.read_text(errors="replace").splitlines(keepends=True) if path.is_file() else []:
        if line.endswith("\n"):
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss and top-1/top-5 error against epochs, training and validation, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
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
