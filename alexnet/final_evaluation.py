"""A run's final evaluation (§4.1): a checkpoint's errors on its run's validation images, with the centre crop
and with the ten patches, at the run's batch size, workers, device and precision."""

from pathlib import Path

from . import checkpoint
from .config import saved_config
from .data.loader import Loader
from .data.sources import open_split, prepared_root
from .evaluate import Errors, evaluate
from .inference import network


def final_evaluation(path: Path) -> dict[int, Errors]:
    """Centre-crop and ten-crop validation errors of a checkpoint (of a run folder: its best.pt, else last.pt)."""
    state = checkpoint.load(path)
    cfg = saved_config(state)
    net = network(state, cfg.device, cfg.precision)
    val = Loader(open_split(prepared_root(cfg.data), "val", cfg.val_fraction), cfg.batch_size, shuffle=False,
                 workers=cfg.workers, pin_memory=net.device.type == "cuda")
    return {crops: evaluate([net], val.epoch(0), crops) for crops in (1, 10)}
