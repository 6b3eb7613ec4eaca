"""What an experiment reports, for both kinds (experiments.py: a four-layer CNN on CIFAR-10; ablations.py: AlexNet):
its results as a few lines of text, and its variants' error curves as a figure."""

from collections.abc import Sequence
from pathlib import Path

from .errors import count
from .files import atomic_write
from .spread import paired_in_words

EXPERIMENTS = "runs/experiments"  # the folder of every experiment's folder, by default


def out_folder(out: str | None, name: str) -> Path:
    """An experiment's folder: `out`, or by default its name under EXPERIMENTS."""
    return Path(out or f"{EXPERIMENTS}/{name}").expanduser()


def results_text(table: dict[str, dict[str, str]], differences: list[dict], notes: list[str], paper: str,
                 seeds: int) -> str:
    """A row per variant and a column per measure (`table`: the values as text, right-aligned under the measure's
    name), each paired difference in words (spread.paired, with its "what"), `notes`, and the paper's claim."""
    columns = list(next(iter(table.values())))
    widths = {c: max(len(c), *(len(row[c]) for row in table.values())) for c in columns}
    rows = ["  ".join([f"{'variant':<24}", *(f"{c:>{widths[c]}}" for c in columns)])]
    rows += ["  ".join([f"{label:<24}", *(f"{row[c]:>{widths[c]}}" for c in columns)]) for label, row in table.items()]
    rows += [f"{d['what']}: {paired_in_words(d)}" for d in differences]
    return "\n".join([*rows, *notes, f"over {count(seeds, 'seed')}; paper: {paper}"])


def error_curves(path: Path, title: str, ylabel: str, lines: list[tuple[str, str, str, list[list[float]]]],
                 points: Sequence[tuple[str, str, list[float]]] = (), target: tuple[str, float] | None = None,
                 top: float | None = None) -> None:
    """Error rates against epochs as a 640×480 PNG. Each of `lines` (label, colour, line style, one list of
    errors per seed, from epoch 1) is drawn as its mean over seeds, shaded from the lowest to the highest; each
    of `points` (label, colour, one error per seed) as its mean and range just after the last epoch; `target`
    (label, error) as a dotted line. The error axis runs from 0 to at least `top` where given, else to fit."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    last = 0
    for label, colour, style, runs in lines:
        errors = np.array(runs)
        epochs = np.arange(1, errors.shape[1] + 1)
        last = max(last, len(epochs))
        ax.plot(epochs, errors.mean(0), style, color=colour, marker="o", markersize=3, label=label)
        ax.fill_between(epochs, errors.min(0), errors.max(0), color=colour, alpha=0.15, linewidth=0)
    for label, colour, values in points:
        v = np.array(values)
        ax.errorbar([last + 0.3], [v.mean()], yerr=[[v.mean() - v.min()], [v.max() - v.mean()]], fmt="D",
                    color=colour, capsize=3, label=label)
    if target is not None:
        ax.axhline(target[1], color="gray", linestyle=":", linewidth=1, label=target[0])
    if top is not None:
        ax.set_ylim(0, max(top, *(max(max(run) for run in runs) for *_, runs in lines)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
