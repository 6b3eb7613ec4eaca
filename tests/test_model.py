import pytest
import torch
import torch.nn.functional as F
import torchvision

from alexnet.cli import main
from alexnet.model import ARCHS, init_weights
from alexnet.record import NetworkRecord, build_model
from alexnet.summary import layer_table

# docs/paper.md#the-layers: (output shape, parameters) of each learned layer of `paper`
PAPER = {
    "conv1": ((96, 55, 55), 34_944),
    "conv2": ((256, 27, 27), 307_456),
    "conv3": ((384, 13, 13), 885_120),
    "conv4": ((384, 13, 13), 663_936),
    "conv5": ((256, 13, 13), 442_624),
    "fc6": ((4096,), 37_752_832),
    "fc7": ((4096,), 16_781_312),
    "fc8": ((1000,), 4_097_000),
}
TOTALS = {"paper": 60_965_224, "paper-1tower": 62_378_344, "owt": 61_100_840, "half": 59_798_312}


def meta_model(arch: str, classes: int = 1000):
    with torch.device("meta"):
        return build_model(NetworkRecord.of(arch, classes))


@pytest.mark.parametrize("size", [227, 224])
def test_paper_layer_shapes_and_parameters_match_spec(size):
    rows = {row.name: row for row in layer_table(meta_model("paper"), size)}
    for name, (shape, params) in PAPER.items():
        assert rows[name].shape == shape and rows[name].params == params, name
    assert rows["lrn1"].shape == (96, 55, 55) and rows["pool1"].shape == (96, 27, 27)
    assert rows["lrn2"].shape == (256, 27, 27) and rows["pool2"].shape == (256, 13, 13)
    assert rows["pool5"].shape == (256, 6, 6)
    assert sum(r.params for r in rows.values()) == 60_965_224
    assert sum(r.macs for r in rows.values()) == pytest.approx(0.724e9, rel=1e-3)


@pytest.mark.parametrize("arch", list(TOTALS))
def test_parameter_totals(arch):
    model = meta_model(arch)
    assert sum(p.numel() for p in model.parameters()) == TOTALS[arch]


def test_half_has_half_the_kernels_but_in_conv5_by_hand(capsys):
    # §3.2's one-tower net: 48, 128, 192 and 192 kernels; conv5 (256) and the fc layers as in `paper` (its footnote)
    convs = {"conv1": (48, 3, 11), "conv2": (128, 48, 5), "conv3": (192, 128, 3), "conv4": (192, 192, 3),
             "conv5": (256, 192, 3)}
    fcs = {"fc6": (4096, 256 * 6 * 6), "fc7": (4096, 4096), "fc8": (1000, 4096)}
    by_hand = {name: k * c * s * s + k for name, (k, c, s) in convs.items()} | {
        name: o * i + o for name, (o, i) in fcs.items()}
    assert sum(by_hand.values()) == 59_798_312
    rows = {row.name: row for row in layer_table(meta_model("half"), 227)}
    assert {name: rows[name].params for name in by_hand} == by_hand
    assert [rows[name].shape[0] for name in convs] == [48, 128, 192, 192, 256]
    assert rows["lrn1"].shape == (48, 55, 55) and rows["pool5"].shape == (256, 6, 6)
    assert by_hand["conv5"] == PAPER["conv5"][1]  # a grouped conv5 has as many weights as one tower of 192 inputs
    main(["summary", "--arch", "half"])
    assert "59,798,312" in capsys.readouterr().out


def test_owt_multiply_adds_match_spec():
    assert sum(r.macs for r in layer_table(meta_model("owt"), 224)) == pytest.approx(0.714e9, rel=1e-3)


def test_towers_see_only_their_own_maps():
    model = build_model(NetworkRecord.of("paper")).eval()
    x = torch.randn(1, 96, 27, 27)
    y = model.conv2(x)
    x[:, :48] += 1.0  # change tower one's input maps only
    y2 = model.conv2(x)
    assert not torch.allclose(y[:, :128], y2[:, :128])
    assert torch.equal(y[:, 128:], y2[:, 128:])


def test_224_input_is_padded_right_and_bottom_by_three():
    torch.manual_seed(0)
    model = build_model(NetworkRecord.of("paper", classes=10)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), model(F.pad(x, (0, 3, 0, 3))), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 200, 200), (2, 1, 227, 227), (3, 227, 227)])
def test_wrong_input_names_what_was_expected(shape):
    with pytest.raises(ValueError, match=r"\(N, 3, 227, 227\) or \(N, 3, 224, 224\)"):
        build_model(NetworkRecord.of("paper", classes=10))(torch.zeros(shape))


@pytest.mark.parametrize("arch", ARCHS)
def test_any_number_of_classes_and_fc7(arch):
    torch.manual_seed(0)
    model = build_model(NetworkRecord.of(arch, classes=7)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, fc7 = model(x), model.forward_fc7(x)
        assert logits.shape == (2, 7) and fc7.shape == (2, 4096) and (fc7 >= 0).all()
        assert torch.allclose(model.layers()["fc8"](fc7), logits, atol=1e-5)


def test_conv1_kernels_per_tower():
    model = build_model(NetworkRecord.of("paper"))
    towers = model.conv1_towers()
    assert [t.shape for t in towers] == [(48, 3, 11, 11)] * 2
    assert torch.equal(torch.cat(towers), model.conv1.weight)
    assert [t.shape for t in build_model(NetworkRecord.of("owt")).conv1_towers()] == [(64, 3, 11, 11)]


def test_paper_initialization_statistics():
    torch.manual_seed(0)
    layers = build_model(NetworkRecord.of("paper")).layers()
    for name, layer in layers.items():
        if layer.weight.numel() > 300_000:
            assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05), name
        assert abs(layer.weight.mean().item()) < 1e-3
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(layer.bias, torch.full_like(layer.bias, expected)), name


def test_caffe_initialization_statistics():
    torch.manual_seed(0)
    model = build_model(NetworkRecord.of("paper"))
    init_weights(model, "caffe")
    layers = model.layers()
    assert layers["fc6"].weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert layers["conv3"].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.equal(layers["conv2"].bias, torch.full_like(layers["conv2"].bias, 0.1))
    assert torch.equal(layers["fc8"].bias, torch.zeros_like(layers["fc8"].bias))


def test_centered_initialization_statistics():
    torch.manual_seed(0)
    pytorch = build_model(NetworkRecord.of("paper", classes=10), "torchvision").layers()
    torch.manual_seed(0)
    layers = build_model(NetworkRecord.of("paper", classes=10), "centered").layers()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):  # PyTorch's default, draw for draw
        assert torch.equal(layers[name].weight, pytorch[name].weight) and torch.equal(layers[name].bias,
                                                                                     pytorch[name].bias), name
    for name in ("fc6", "fc7"):  # He's normal, each unit's weights summing to 0, no bias
        weight = layers[name].weight
        assert weight.std().item() == pytest.approx((2 / weight.shape[1]) ** 0.5, rel=0.02), name
        assert weight.sum(1).abs().max().item() < 1e-4 * weight.abs().sum(1).min().item(), name
        assert not layers[name].bias.any(), name
    assert not layers["fc8"].weight.any() and not layers["fc8"].bias.any()


def test_same_seed_same_weights():
    def weights(seed):
        torch.manual_seed(seed)
        return build_model(NetworkRecord.of("paper", classes=10)).state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_owt_matches_torchvision():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(num_classes=1000).eval()
    ours = build_model(NetworkRecord.of("owt")).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5


def test_caffenet_pools_before_lrn():
    rows = [row.name for row in layer_table(meta_model("caffenet"), 227)]
    assert rows[:3] == ["conv1", "pool1", "lrn1"]
    assert rows[:3] != [row.name for row in layer_table(meta_model("paper"), 227)][:3]


def test_unknown_choices_are_rejected():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(NetworkRecord.of("vgg"))
    with pytest.raises(ValueError, match="unknown LRN"):
        build_model(NetworkRecord.of("paper", lrn="fancy"))
    with pytest.raises(ValueError, match="no LRN"):
        build_model(NetworkRecord.of("owt", lrn="paper"))
