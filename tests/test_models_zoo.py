"""The model zoo: exact parameter counts of the original projects' models, well-formed specs."""

from __future__ import annotations

import pytest

from cifarbench.errors import UsageError
from cifarbench.models import create_spec, list_models, model_names
from cifarbench.models.shapes import SpecShapeError, capture_shapes, flat_features, output_shape
from cifarbench.models.spec import Conv, Dropout, Flatten, Linear, ModelSpec, ReLU, iter_layers

# (model, in_channels, image_size, classes) -> parameters. Sources: ANALYSIS.md (verified by
# instantiating the originals) and torchvision's published counts adjusted for the CIFAR stem/head.
EXPECTED = {
    ("cnn", 3, 32, 10): 573_194,
    ("cnn", 3, 32, 100): 584_804,
    ("cnn-leaky", 3, 32, 10): 573_194,
    ("lenet", 3, 32, 10): 62_006,
    ("lenet-large", 3, 32, 10): 1_982_602,
    ("cvet-cnn", 1, 28, 10): 659_855,
    ("cvet-cnn", 3, 32, 10): 1_756_880,
    ("cvet-cnn", 3, 32, 100): 1_792_970,
    ("cvet-cnn-fixed", 1, 28, 10): 659_855,
    ("cvet-cnn-fixed", 3, 32, 100): 1_792_970,
    ("simplecnn", 3, 32, 10): 334_442,
    ("resnet18", 3, 32, 10): 11_173_962,
    ("resnet18", 3, 32, 100): 11_220_132,
    ("resnet32-definfo", 3, 32, 10): 468_138,
    ("resnet34", 3, 32, 10): 21_282_122,
    ("resnet50", 3, 32, 10): 23_520_842,
}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: "-".join(map(str, k)))
def test_parameter_counts(key):
    name, c, size, k = key
    assert create_spec(name, c, size, k).num_params() == EXPECTED[key]


def _torchvision_count(blocks, bottleneck, classes):
    """Closed-form count of torchvision's ResNet with a 3x3 stem: an independent check on the builders."""
    total = 3 * 64 * 9 + 2 * 64  # stem conv (no bias) + BN
    cin = 64
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for b in range(n):
            stride = 2 if stage and not b else 1
            if bottleneck:
                cout = 4 * width
                total += cin * width + 2 * width + width * width * 9 + 2 * width + width * cout + 2 * cout
            else:
                cout = width
                total += cin * cout * 9 + 2 * cout + cout * cout * 9 + 2 * cout
            if stride != 1 or cin != cout:
                total += cin * cout + 2 * cout
            cin = cout
    return total + cin * classes + classes


@pytest.mark.parametrize("name,blocks,bottleneck", [("resnet18", (2, 2, 2, 2), False), ("resnet34", (3, 4, 6, 3), False),
                                                     ("resnet50", (3, 4, 6, 3), True)])
@pytest.mark.parametrize("classes", [10, 100])
def test_imagenet_resnets_match_closed_form(name, blocks, bottleneck, classes):
    assert create_spec(name, 3, 32, classes).num_params() == _torchvision_count(blocks, bottleneck, classes)
    # torchvision's ImageNet counts minus the 7x7 -> 3x3 stem and the 1000-class head
    imagenet = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}[name]
    feat = 2048 if bottleneck else 512
    expected = imagenet - 3 * 64 * (49 - 9) - (feat * 1000 + 1000) + feat * classes + classes
    assert create_spec(name, 3, 32, classes).num_params() == expected


def _he_count(n, classes, bias=False):
    """Closed form for the 6n+2 CIFAR ResNets with 1x1 projection shortcuts."""
    b = 1 if bias else 0
    total = 3 * 16 * 9 + 16 * b + 32
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            total += cin * width * 9 + width * width * 9 + 2 * width * b + 4 * width
            if stage and not i:
                total += cin * width + width * b + 2 * width
            cin = width
    return total + 64 * classes + classes


@pytest.mark.parametrize("name,n", [("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet56", 9), ("resnet110", 18)])
def test_cifar_resnets(name, n):
    assert create_spec(name, 3, 32, 10).num_params() == _he_count(n, 10)
    assert create_spec(name, 3, 32, 100).num_params() == _he_count(n, 100)
    assert create_spec("resnet32-definfo", 3, 32, 10).num_params() == _he_count(5, 10, bias=True)
    # the standard nets are known as ~0.27 M / 0.46 M / 0.85 M parameters
    assert create_spec("resnet20").num_params() == 272_474


def test_deep_cifar_resnets_exact_counts():
    """resnet44/110 (the 0.66 M / 1.7 M nets of He et al. and mlx-examples' CIFAR ResNets).

    Option A (identity + zero padding) has no shortcut parameters; ours has two 1x1 conv + BN
    projections (16->32: 512 + 64, 32->64: 2,048 + 128 = 2,752). Removing them gives the
    published option-A counts 658,586 and 1,727,962.
    """
    counts = {"resnet44": 661_338, "resnet110": 1_730_714}
    for name, want in counts.items():
        spec = create_spec(name, 3, 32, 10)
        assert spec.num_params() == want
        proj = sum(n for k, n in ((k, _numel(s)) for k, s in spec.param_shapes().items()) if ".downsample." in k)
        assert proj == 2_752
    assert counts["resnet44"] - 2_752 == 658_586 and counts["resnet110"] - 2_752 == 1_727_962
    assert sum(isinstance(l, Conv) and l.k == 3 for l in iter_layers(create_spec("resnet110").layers)) == 109


@pytest.mark.parametrize("n,want", [(7, 661_338), (18, 1_730_714)])
def test_deep_cifar_resnet_counts_from_an_independent_torch_model(n, want):
    """He et al.'s 6n+2 net written directly in torch (option B shortcuts), counted by torch."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def block(cin, cout, stride):
        body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()
        return nn.ModuleList([body, short])

    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            layers.append(block(cin, width, 2 if stage and not i else 1))
            cin = width
    layers.append(nn.Linear(64, 10))
    net = nn.ModuleList(layers)
    assert sum(p.numel() for p in net.parameters()) == want == create_spec(f"resnet{6 * n + 2}").num_params()


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_flatten_sizes_follow_image_size():
    fc_in = {
        ("lenet", 32): 400, ("lenet", 28): 256, ("lenet-large", 32): 3200, ("simplecnn", 32): 1152,
        ("simplecnn", 28): 800, ("cvet-cnn", 28): 900, ("cvet-cnn", 32): 1600,
    }
    for (name, size), expected in fc_in.items():
        spec = create_spec(name, 1 if size == 28 else 3, size, 10)
        first_linear = next(l for l in spec.param_layers() if isinstance(l, Linear))
        assert first_linear.fin == expected, (name, size)


VARIANTS = [(3, 32, 10), (3, 32, 100), (1, 28, 10), (1, 32, 10), (3, 28, 100)]


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "x".join(map(str, v)))
def test_every_spec_is_well_formed(name, variant):
    c, size, k = variant
    spec = create_spec(name, c, size, k)
    assert isinstance(spec, ModelSpec)
    assert output_shape(spec, batch=4) == (4, k)
    assert spec.num_params() > 0
    names = [l.name for l in spec.param_layers()]
    assert len(names) == len(set(names)), "a parameter layer name is used twice"
    caps = capture_shapes(spec)
    for point in spec.capture_points:
        assert point in caps and len(caps[point]) == 3, f"capture point {point} is not a feature map"
    if size == 32 and k == 10 and c == 3:
        assert spec.name == name


def test_every_model_has_description_and_origin():
    for entry in list_models():
        assert entry.description and entry.origin


def test_cvet_faithful_and_fixed_heads_differ_as_documented():
    faithful = create_spec("cvet-cnn")
    fixed = create_spec("cvet-cnn-fixed")
    assert faithful.param_shapes() == fixed.param_shapes()
    assert isinstance(faithful.layers[-1], Dropout)  # dropout on the logits, as the original
    assert isinstance(fixed.layers[-1], Linear)
    after_linear2 = lambda s: type(s.layers[s.layers.index(next(l for l in s.layers if getattr(l, "name", "") == "linear2")) + 1])
    assert after_linear2(faithful) is Dropout and after_linear2(fixed) is ReLU


def test_cnn_leaky_is_leaky_everywhere():
    relus = [l for l in iter_layers(create_spec("cnn-leaky").layers) if isinstance(l, ReLU)]
    assert relus and all(r.slope == 0.01 for r in relus)
    assert create_spec("cnn-leaky").param_shapes() == create_spec("cnn").param_shapes()


def test_definfo_resnet_has_biases_and_dropout():
    spec = create_spec("resnet32-definfo")
    shapes = spec.param_shapes()
    assert "layer2.0.downsample.0.bias" in shapes and "layer1.0.conv1.bias" in shapes
    assert "layer1.0.downsample.0.weight" not in shapes  # identity where shapes match
    assert any(isinstance(l, Dropout) and l.p == 0.3 for l in spec.layers)
    std = create_spec("resnet32").param_shapes()
    assert "layer3.0.downsample.0.weight" in std and "layer3.0.downsample.0.bias" not in std


def test_resnet50_torchvision_names():
    shapes = create_spec("resnet50").param_shapes()
    assert shapes["layer1.0.conv3.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["fc.weight"] == (10, 2048)
    assert "layer1.1.downsample.0.weight" not in shapes


def test_shape_walker_rejects_broken_specs():
    bad = ModelSpec("bad", (Conv("c", 3, 8, 3), Flatten(), Linear("fc", 999, 10)), 3, 32, 10)
    with pytest.raises(SpecShapeError, match="fc"):
        output_shape(bad)
    wrong_channels = ModelSpec("bad2", (Conv("c", 1, 8, 3),), 3, 32, 10)
    with pytest.raises(SpecShapeError, match="input channels"):
        output_shape(wrong_channels)
    with pytest.raises(SpecShapeError, match="too small"):
        flat_features((Conv("c", 3, 8, 5),), 3, 4)


def test_create_spec_rejects_bad_input():
    with pytest.raises(UsageError, match="unknown model"):
        create_spec("resnet9000")
    with pytest.raises(UsageError):
        create_spec("lenet", in_channels=2)
