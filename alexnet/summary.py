"""The layer table of a model: output shape, parameters and multiply-adds of every layer (docs/paper.md#the-layers)."""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .lrn import LRN, MODES
from .model import ARCHS
from .options import COUNT, option


@dataclass
class SummaryConfig:
    """`alexnet summary`'s options."""

    arch: str = option("paper", "network variant", choices=ARCHS)
    classes: int = option(1000, "number of classes", accepts=COUNT)
    image_size: int = option(227, "input height and width", accepts=COUNT)
    lrn: str | None = option(None, "LRN formula (default: the architecture's own)", choices=MODES)


class Row(NamedTuple):
    """One layer of the table."""

    name: str
    shape: tuple[int, ...]
    params: int
    macs: int


def layer_table(model: nn.Module, image_size: int = SummaryConfig.image_size) -> list[Row]:
    """Run one image through the model (cheapest on the meta device) and record each layer it passes."""
    names = {module: name for name, module in model.layers().items()}
    rows: list[Row] = []

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        shape = tuple(output.shape[1:])
        if isinstance(module, nn.Conv2d | nn.Linear):
            params = sum(p.numel() for p in module.parameters())
            rows.append(Row(names[module], shape, params, output.numel() * module.weight[0].numel()))
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            rows.append(Row("avgpool", shape, 0, 0))
        elif not (isinstance(module, LRN) and module.mode == "none"):  # named after the layer it follows
            kind = "lrn" if isinstance(module, LRN) else "pool"
            rows.append(Row(kind + rows[-1].name[-1], shape, 0, 0))

    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d, LRN)
    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, kinds)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def format_table(rows: list[Row], image_size: int) -> str:
    """The table as text, with totals."""
    lines = [f"{'layer':<8}{'output':>16}{'params':>14}{'mult-adds':>16}",
             f"{'input':<8}{'3×' + str(image_size) + '×' + str(image_size):>16}{'':>14}{'':>16}"]
    for row in rows:
        shape = "×".join(map(str, row.shape))
        lines.append(f"{row.name:<8}{shape:>16}{row.params:>14,}{row.macs:>16,}")
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    lines.append(f"{'total':<8}{'':>16}{params:>14,}{macs:>16,}")
    return "\n".join(lines)
