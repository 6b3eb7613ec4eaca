"""The paper's two-GPU training (§3.2): each pair of processes holds one `paper` network, one tower each.

Every layer is split by its outputs (the rows of its weight and bias): conv1, conv2, conv4 and conv5 hold the
tower's own kernels and see only its own maps; conv3, fc6, fc7 and fc8 hold half of the layer's outputs, computed
from the maps of both towers. The two processes exchange activations, and their gradients going back, only where
the paper's GPUs communicate: the inputs of conv3, fc6, fc7 and fc8, and the logits, which both then hold whole and
take the same loss of. Under data parallelism ranks 2p and 2p + 1 are pair p, which reads slice p of every global
batch, and each tower's gradients are averaged over the pairs among its twins (the processes that hold that tower).
A checkpoint holds the whole network, as a one-process run's does.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .lrn import LRN
from .model import LAYERS, AlexNet, paper_input

EXCHANGED = ("conv3", "fc6", "fc7", "fc8")  # §3.2: the layers whose input comes from both towers


@dataclass(frozen=True)
class Pair:
    """Where a process sits in a model-parallel run: tower `tower` (0 or 1) of pair `index` of `pairs`, the pair's
    process group, and its twins' (this tower in every pair), over which this tower's gradients are averaged."""

    tower: int
    index: int
    pairs: int
    group: dist.ProcessGroup
    twins: dist.ProcessGroup

    def sum(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
        """Sum (or another reduction) over the twins, which between them see every image of a batch once."""
        dist.all_reduce(tensor, op, group=self.twins)
        return tensor

    def first(self, tensor: torch.Tensor) -> torch.Tensor:
        """Tower 0's `tensor`, on both processes of the pair: for a decision that the two must take together."""
        dist.broadcast(tensor, 2 * self.index, group=self.group)
        return tensor


def place(arch: str, rank: int, world: int) -> Pair:
    """The pair and tower of process `rank` of `world` (ranks 2p and 2p + 1 are pair p) and their process groups;
    every process makes every group, as torch.distributed requires."""
    if arch != "paper":
        raise InputError(f"--parallel towers splits the two-tower network (--arch paper), not {arch!r}")
    if world % 2:
        raise InputError(f"--parallel towers needs an even number of processes, a pair for each network "
                         f"(torchrun --nproc_per_node 2 or more), got {world}; --parallel data: a network on each")
    pairs = [dist.new_group([2 * p, 2 * p + 1]) for p in range(world // 2)]
    twins = [dist.new_group(list(range(tower, world, 2))) for tower in (0, 1)]
    return Pair(rank % 2, rank // 2, world // 2, pairs[rank // 2], twins[rank % 2])


def halves(n: int) -> tuple[int, int]:
    """How many of a layer's n outputs each tower holds (tower 0 one more where n is odd, as tensor_split has it)."""
    return n - n // 2, n // 2


def _gather(x: torch.Tensor, group: dist.ProcessGroup, sizes: tuple[int, int], dim: int) -> list[torch.Tensor]:
    """Both processes' parts of a tensor split along `dim` into `sizes`, in tower order: each sends its own part
    once, the shorter one padded to the longer one's size."""
    x = x.contiguous()
    if x.shape[dim] < max(sizes):
        pad = list(x.shape)
        pad[dim] = max(sizes) - x.shape[dim]
        x = torch.cat([x, x.new_zeros(pad)], dim)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x, group=group)
    return [part.narrow(dim, 0, size) for part, size in zip(parts, sizes, strict=True)]


class _Gather(torch.autograd.Function):
    """Both towers' parts of a layer's output side by side (along dim 1), with the gradient going back.

    `summed`: each process computes its own half of the next layer from the whole, so the gradient of this
    tower's part is the sum of the two processes' (each sends the other the part of its gradient that belongs to
    it). Otherwise (the logits) both processes compute the same thing from the whole and have the same gradient."""

    @staticmethod
    def forward(ctx, x, pair: Pair, sizes: tuple[int, int], summed: bool):
        ctx.pair, ctx.sizes, ctx.summed = pair, sizes, summed
        return torch.cat(_gather(x, pair.group, sizes, 1), 1)

    @staticmethod
    def backward(ctx, grad):
        tower, other = ctx.pair.tower, 1 - ctx.pair.tower
        parts = grad.split(ctx.sizes, 1)
        mine = parts[tower]
        if ctx.summed:
            mine = mine + _gather(parts[other], ctx.pair.group, ctx.sizes[::-1], 1)[other]
        return mine, None, None, None


def _rows(layer: nn.Module, tower: int) -> nn.Module:
    """The tower's share of a layer (§3.2): its rows of the weight and bias, over the same inputs (for conv2, conv4
    and conv5 its own tower's maps, as groups=2 has it; for the others all the maps or features), copied in the
    whole layer's memory format."""
    weight, bias = (p.detach().tensor_split(2)[tower] for p in (layer.weight, layer.bias))
    if isinstance(layer, nn.Conv2d):
        part = nn.Conv2d(weight.shape[1], len(weight), layer.kernel_size, layer.stride, layer.padding, device="meta")
    else:
        part = nn.Linear(weight.shape[1], len(weight), device="meta")
    part.weight, part.bias = (nn.Parameter(p.clone(), requires_grad=whole.requires_grad)  # frozen stays frozen
                              for p, whole in ((weight, layer.weight), (bias, layer.bias)))
    return part


class Tower(nn.Module):
    """One tower of the `paper` network, on this process: its share of every layer (§3.2, Figure 2). Its forward
    pass runs in step with the other tower's process and returns the whole logits."""

    def __init__(self, network: AlexNet, pair: Pair):
        super().__init__()
        if network.removed:
            raise InputError(f"--parallel towers splits the whole network, not one without {network.removed}")
        self.pair, self.dropout_p, self.input_side = pair, network.dropout.p, network.input_side
        self.widths = {name: layer.weight.shape[0] for name, layer in network.layers().items()}  # the whole layers'
        for name, layer in network.layers().items():
            setattr(self, name, _rows(layer, pair.tower))
        # §3.3: each tower normalizes its own maps, so the window never leaves them
        self.lrn1, self.lrn2 = (LRN(lrn.mode, relu=lrn.relu) for lrn in (network.lrn1, network.lrn2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def _both(self, x: torch.Tensor) -> torch.Tensor:
        """Both towers' maps or features, the input of conv3, fc6, fc7 or fc8 (§3.2: where the GPUs communicate)."""
        return _Gather.apply(x, self.pair, (x.shape[1], x.shape[1]), True)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """§4.2's dropout on this tower's half of fc6's or fc7's outputs: its part of a mask drawn for the whole
        layer from the random stream both towers share, so that the halves' masks are independent. The mask is
        drawn by the call that one process's dropout makes, on a tensor of the whole layer's shape and type, since
        each device lays its draws out in its own way (CUDA's fused dropout kernel unlike its bernoulli_): on any
        device it is then the mask of one process running the whole network."""
        if not self.training or self.dropout_p == 0:
            return x
        n, half = x.shape
        noise = F.dropout(x.new_ones(n, 2 * half), self.dropout_p)
        return x * noise[:, self.pair.tower * half:(self.pair.tower + 1) * half]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) of a batch, the whole of them on both processes of the pair."""
        x = self.pool(self.lrn1(self.conv1(paper_input(x, self.input_side))))
        x = self.pool(self.lrn2(self.conv2(x)))
        x = F.relu(self.conv3(self._both(x)), inplace=True)
        x = F.relu(self.conv4(x), inplace=True)
        x = self.pool(F.relu(self.conv5(x), inplace=True))
        x = self._dropout(F.relu(self.fc6(torch.flatten(self._both(x), 1)), inplace=True))
        x = self._dropout(F.relu(self.fc7(self._both(x)), inplace=True))
        logits = self.fc8(self._both(x))
        return _Gather.apply(logits, self.pair, halves(self.widths["fc8"]), False)

    def layers(self) -> dict[str, nn.Module]:
        """This tower's shares of the eight learned layers, by their paper names."""
        return {name: getattr(self, name) for name in LAYERS}

    def _whole(self, name: str, part: torch.Tensor) -> torch.Tensor:
        """A whole tensor of layer `name` (a parameter, or an optimizer's state of one) from both towers' rows."""
        return torch.cat(_gather(part, self.pair.group, halves(self.widths[name.split(".")[0]]), 0))

    def whole_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """The whole network's state dict and its optimizer's, as one process would have them, from both towers'
        (a collective: both processes of the pair call it)."""
        by_id = {id(p): name for name, p in self.named_parameters()}  # the optimizer's indices count its own
        names = [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]
        model = {name: self._whole(name, tensor) for name, tensor in self.state_dict().items()}
        state = optimizer.state_dict()
        per_param = {i: {key: self._whole(names[i], value) if torch.is_tensor(value) and value.dim() else value
                         for key, value in entry.items()} for i, entry in state["state"].items()}
        return model, {**state, "state": per_param}

    def load_whole_state(self, optimizer: torch.optim.Optimizer, model: dict, state: dict) -> None:
        """Take this tower's rows of a whole network's state dict and of its optimizer's (a one-process run's
        checkpoint, or a model-parallel one's)."""
        def rows(value: object) -> object:
            return value.tensor_split(2)[self.pair.tower].clone() if torch.is_tensor(value) and value.dim() else value

        self.load_state_dict({name: rows(tensor) for name, tensor in model.items()})
        optimizer.load_state_dict({**state, "state": {i: {key: rows(value) for key, value in entry.items()}
                                                      for i, entry in state["state"].items()}})
