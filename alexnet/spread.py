"""The spread of a measurement over seeds, and whether a difference between two variants is more than noise.

The variants of an experiment share each seed's initial weights and mini-batches, so their difference is
measured seed by seed (a paired comparison): its mean, its range, a 95% t interval for the mean, and the
number of seeds at which that interval, for the measured mean and seed-to-seed spread, would leave out 0.
"""

import math
from collections.abc import Sequence

from scipy import stats

CONFIDENCE = 0.95
MOST_SEEDS = 1000  # beyond this many seeds an effect is called indistinguishable from noise


def spread(values: Sequence[float]) -> dict:
    """Mean, smallest and largest of one measurement over seeds, and the values themselves."""
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "values": list(values)}


def _half_width(sd: float, n: int) -> float:
    return stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n)


def seeds_needed(mean: float, sd: float) -> int | None:
    """The fewest seeds (from 2) whose 95% t interval around `mean` leaves out 0 when the differences spread by
    `sd` from seed to seed; None when no number up to MOST_SEEDS does (no effect to tell from noise)."""
    if mean == 0:
        return None
    return next((n for n in range(2, MOST_SEEDS + 1) if _half_width(sd, n) < abs(mean)), None)


def paired(base: Sequence[float], other: Sequence[float]) -> dict:
    """`other` − `base`, seed by seed: spread, 95% interval of the mean (from 2 seeds), seeds needed to resolve it."""
    if len(base) != len(other):
        raise ValueError(f"{len(base)} and {len(other)} values: a paired difference needs one of each per seed")
    d = [b - a for a, b in zip(base, other, strict=True)]
    out = spread(d)
    if len(d) < 2:
        return {**out, "interval": None, "seeds_needed": None, "resolved": False}
    sd = float(stats.tstd(d)) if len(set(d)) > 1 else 0.0
    half = float(_half_width(sd, len(d)))
    low, high = out["mean"] - half, out["mean"] + half
    return {**out, "sd": sd, "interval": [low, high], "seeds_needed": seeds_needed(out["mean"], sd),
            "resolved": bool(low > 0 or high < 0)}


def paired_in_words(d: dict, scale: float = 100, unit: str = " points") -> str:
    """A paired difference in words: mean, range, interval, seeds (errors as percentage points by default)."""
    text = f"{scale * d['mean']:+.2f}{unit} (range {scale * d['min']:+.2f} to {scale * d['max']:+.2f}"
    if d["interval"] is not None:
        low, high = d["interval"]
        needed = d["seeds_needed"]
        text += (f"; 95% interval {scale * low:+.2f} to {scale * high:+.2f} over {len(d['values'])} seeds; "
                 + (f"{needed} seeds tell it from noise" if needed else "not distinguishable from noise"))
    return text + ")"
