"""AlexNet as the paper specifies it (§3, Figure 2), its well-known variants, and its initialization (§5).

    paper         two towers (conv2, conv4, conv5 see only their own tower), LRN per tower, 60,965,224 params
    paper-1tower  the same network without towers                                          62,378,344 params
    owt           torchvision's one-tower "one weird trick" layout and state-dict keys     61,100,840 params
    caffenet      Caffe's reference CaffeNet: pooling before LRN, Caffe's LRN across all channels
    half          §3.2's one-tower net: half the kernels of conv1-conv4; conv5, fc as paper 59,798,312 params

The paper and paper-1tower layouts also come scaled, for the ablations on a CPU (ablations.py): `width`
times the kernels and units of every hidden layer, on smaller inputs (any side whose maps keep conv5's
pooling, from 64 on), and with one middle convolutional layer removed (§7, `remove_layer`).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .lrn import LRN

ARCHS = ("paper", "paper-1tower", "owt", "caffenet", "half")
INITS = ("paper", "caffe", "torchvision", "centered")
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
KERNELS = (96, 256, 384, 384, 256)  # §3.5: conv1-conv5
FC = 4096  # §3.5: the units of fc6 and fc7
# §3.2's one-GPU net: half the kernels in each convolutional layer but the last, which keeps its size, as do the
# fully connected layers after it (the paper's footnote: most parameters are in fc6, which takes conv5 as input)
HALF_KERNELS = (48, 128, 192, 192, 256)
MIDDLE = ("conv3", "conv4", "conv5")  # §7: "removing any of the middle convolutional layers"
WIDTHS = (1.0, 0.5, 0.25, 0.125)  # kernels per layer as a fraction of the paper's (every count stays even)


class AlexNet(nn.Module):
    """The paper's network: five convolutional and three fully connected layers (§3.5)."""

    def __init__(self, num_classes: int = 1000, towers: int = 2, lrn: str = "paper", lrn_towers: int | None = None,
                 pool_before_lrn: bool = False, dropout: float = 0.5, kernels: tuple[int, ...] = KERNELS,
                 width: float = 1.0, side: int = 227):
        super().__init__()
        if width not in WIDTHS:
            raise InputError(f"width {width:g}: expected one of {', '.join(f'{w:g}' for w in WIDTHS)}")
        maps = conv5_maps(side)
        if maps < 1 or (side - 11) % 4:
            raise InputError(f"an input of {side}×{side}: AlexNet takes sides from 67 on that are 3 more than a "
                             "multiple of 4, or 3 less than one (224, 64), padded by 3")
        self.towers, self.input_side, self.removed = towers, side, ""
        self.pool_before_lrn = pool_before_lrn
        lrn_towers = towers if lrn_towers is None else lrn_towers
        # §3.5: conv2, conv4 and conv5 are connected only to the kernel maps of their own tower (GPU);
        # conv3 and the fully connected layers see both.
        # lrn1 and lrn2 apply conv1's and conv2's ReLU themselves (fused), except when pooling comes first.
        k1, k2, k3, k4, k5 = (round(n * width) for n in kernels)
        fc = round(FC * width)
        self.conv1 = nn.Conv2d(3, k1, 11, stride=4)
        self.lrn1 = LRN(lrn, lrn_towers, relu=not pool_before_lrn)
        self.conv2 = nn.Conv2d(k1, k2, 5, padding=2, groups=towers)
        self.lrn2 = LRN(lrn, lrn_towers, relu=not pool_before_lrn)
        self.conv3 = nn.Conv2d(k2, k3, 3, padding=1)
        self.conv4 = nn.Conv2d(k3, k4, 3, padding=1, groups=towers)
        self.conv5 = nn.Conv2d(k4, k5, 3, padding=1, groups=towers)
        self.pool = nn.MaxPool2d(3, stride=2)  # §3.4: overlapping pooling, z = 3, s = 2
        self.fc6 = nn.Linear(k5 * maps * maps, fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, num_classes)
        self.dropout = nn.Dropout(dropout)  # §4.2: on the outputs of fc6 and fc7

    def _relu_norm_pool(self, lrn: LRN, x: torch.Tensor) -> torch.Tensor:
        # §3.3: ReLU, then LRN, then pooling (the first two fused in `lrn`); CaffeNet pools before LRN.
        if self.pool_before_lrn:
            return lrn(self.pool(F.relu(x, inplace=True)))
        return self.pool(lrn(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional part: 256×6×6 maps after conv5 and its pooling."""
        x = self._relu_norm_pool(self.lrn1, self.conv1(paper_input(x, self.input_side)))
        x = self._relu_norm_pool(self.lrn2, self.conv2(x))
        for name in MIDDLE:
            if name != self.removed:
                x = F.relu(getattr(self, name)(x), inplace=True)
        return self.pool(x)

    def forward_fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d fc7 activations after ReLU, the image descriptor of §6.1."""
        x = self.dropout(F.relu(self.fc6(torch.flatten(self.features(x), 1)), inplace=True))
        return F.relu(self.fc7(x), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) for a batch of 3×227×227 or 3×224×224 images."""
        return self.fc8(self.dropout(self.forward_fc7(x)))

    def layers(self) -> dict[str, nn.Module]:
        """The eight learned layers by their paper names."""
        return {name: getattr(self, name) for name in LAYERS if name != self.removed}

    def remove_layer(self, name: str) -> None:
        """§7: take out one middle convolutional layer; its neighbors keep their initial weights, cut to fit.

        Without conv3, conv4 sees conv2's maps (the first of its input weights per tower); without conv5,
        conv4 makes as many maps as conv5 did (the first of its kernels per tower), so fc6 is unchanged;
        conv4 goes without a change elsewhere. Every remaining weight is one of the full network's."""
        if name not in MIDDLE:
            raise InputError(f"cannot remove {name!r}; a middle convolutional layer is one of {', '.join(MIDDLE)}")
        conv4, groups = self.conv4, self.conv4.groups
        if name == "conv3":
            inputs = self.conv2.out_channels // groups
            kept = torch.arange(conv4.out_channels)
            weight = conv4.weight[:, :inputs]
        elif name == "conv5":
            per, keep = conv4.out_channels // groups, self.conv5.out_channels // groups
            if keep > per:  # `half`: conv5 keeps the paper's 256 kernels, conv4 has 192
                raise InputError(f"cannot remove conv5: conv4 has fewer kernels ({conv4.out_channels}) than the "
                                 f"{self.conv5.out_channels} maps fc6 takes; remove conv3 or conv4")
            kept = torch.cat([torch.arange(g * per, g * per + keep) for g in range(groups)])
            weight = conv4.weight[kept]
        if name != "conv4":
            self.conv4 = nn.Conv2d(weight.shape[1] * groups, len(kept), 3, padding=1, groups=groups)
            with torch.no_grad():
                self.conv4.weight.copy_(weight)
                self.conv4.bias.copy_(conv4.bias[kept])
        delattr(self, name)
        self.removed = name

    def conv1_towers(self) -> list[torch.Tensor]:
        """conv1's kernels, one (kernels, 3, 11, 11) block per tower (Figure 3)."""
        return list(self.conv1.weight.detach().chunk(self.towers))


def conv5_maps(side: int) -> int:
    """The side of conv5's pooled maps for a side×side input: 6 for 227 (Figure 2), 1 for 67."""
    for stride, size in ((4, 11), (2, 3), (2, 3), (2, 3)):  # conv1, then the three pooling layers
        side = (side - size) // stride + 1
    return side


def input_side(crop: int) -> int:
    """The side a crop is padded to: 227 for 224 (docs/paper.md#input-size), 67 for 64, others as they are."""
    return crop + 3 if (crop - 8) % 4 == 0 else crop


def paper_input(x: torch.Tensor, side: int = 227) -> torch.Tensor:
    """Check the input; pad 224×224 right and bottom by 3, as cuda-convnet rounds (docs/paper.md#input-size)."""
    if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) not in ((side - 3, side - 3), (side, side)):
        raise InputError(f"AlexNet expects images of shape (N, 3, {side}, {side}) or (N, 3, {side - 3}, {side - 3}), "
                         f"got {tuple(x.shape)}")
    return F.pad(x, (0, 3, 0, 3)) if x.shape[2] == side - 3 else x


class OWTAlexNet(nn.Module):
    """torchvision's AlexNet ("one weird trick", Krizhevsky 2014): same module layout and state-dict keys."""

    towers = 1

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        # Dropout before fc6 and fc7, where the paper puts it after (docs/paper.md#dropout).
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward_fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d fc7 activations after ReLU."""
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 63:
            raise InputError(f"AlexNet (owt) expects images of shape (N, 3, H, W) with H, W >= 63, "
                             f"got {tuple(x.shape)}")
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits)."""
        return self.classifier[6](self.forward_fc7(x))

    def layers(self) -> dict[str, nn.Module]:
        """The eight learned layers by their paper names."""
        f, c = self.features, self.classifier
        return dict(zip(LAYERS, (f[0], f[3], f[6], f[8], f[10], c[1], c[4], c[6]), strict=True))

    def conv1_towers(self) -> list[torch.Tensor]:
        """conv1's 64 kernels as one block."""
        return [self.features[0].weight.detach()]


def init_weights(model: nn.Module, scheme: str = "paper") -> None:
    """§5: weights from N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7, 0 in the others.

    "caffe" is Caffe's bvlc_alexnet: biases 0.1 where the paper has 1, fc6 and fc7 weights with std
    0.005. "torchvision" keeps PyTorch's default initialization. "centered" keeps PyTorch's in the
    convolutions, draws fc6 and fc7 from He's normal with each unit's weights then summing to 0 and biases 0,
    and starts fc8 at 0: fc7's outputs then tell the classes apart by a larger part of their energy, and fc8
    moves them from the first step (docs/reproduction.md#stratified-batches-and-a-centered-initialization).
    """
    if scheme not in INITS:
        raise InputError(f"unknown initialization {scheme!r}; expected one of {', '.join(INITS)}")
    if scheme == "torchvision":
        return
    layers = model.layers()
    if scheme == "centered":
        for name in ("fc6", "fc7"):
            weight = layers[name].weight
            nn.init.kaiming_normal_(weight, nonlinearity="relu")
            with torch.no_grad():  # a unit answers to how its inputs differ, not to the level they share
                weight -= weight.mean(1, keepdim=True)
            nn.init.zeros_(layers[name].bias)
        nn.init.zeros_(layers["fc8"].weight)
        nn.init.zeros_(layers["fc8"].bias)
        return
    one = 1.0 if scheme == "paper" else 0.1
    for name, layer in layers.items():
        std = 0.005 if scheme == "caffe" and name in ("fc6", "fc7") else 0.01
        nn.init.normal_(layer.weight, 0.0, std)
        nn.init.constant_(layer.bias, one if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)


def architecture_lrn(arch: str) -> str:
    """The LRN formula an architecture has when none is named: §3.3's, Caffe's for CaffeNet, none for owt."""
    return {"owt": "none", "caffenet": "caffe"}.get(arch, "paper")
