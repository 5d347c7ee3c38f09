"""Every spec in specs/ loads, builds, and has its published output shape and parameter count.

Each expected number says where it comes from.  Where torch can express a network, an equivalent
torch model is built here and its parameter shapes are compared with the graph's (parameter
counts only: the runtime's tests compare outputs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from oracle import torch_or_skip

from declcnn.graph import load_graph
from declcnn.graph.summary import parameter_count

SPECS = Path(__file__).resolve().parent.parent / "specs"

# name: (output shape, parameters, source of the number)
EXPECTED = {
    "lenet": ((10,), 61_706, "the LeNet-5 of the brief: 156 + 2,416 + 48,120 + 10,164 + 850"),
    "alexnet": ((1000,), 60_965_224,
                "Caffe's bvlc_alexnet (the 2012 paper's network with grouped conv2/4/5)"),
    "vgg16": ((1000,), 138_357_544, "torchvision's vgg16, Simonyan & Zisserman's configuration D"),
    "resnet18": ((1000,), 11_689_512, "torchvision's resnet18"),
    "mobilenet_v1": ((1000,), 4_231_976,
                     "Keras's MobileNet (alpha 1, 224), the paper's 4.2 million"),
    "unet": ((2, 388, 388), 31_030_658,
             "derived from Ronneberger et al. 2015 fig. 1 (the paper gives no count): 18,842,048 "
             "in the contracting path + 12,188,480 in the expanding one + 130 for the 1×1 "
             "classifier; checked against torch below"),
    "unet_small": ((4, 64, 64), 482_500,
                   "derived: the U-Net template at 16-32-64-128 channels with batch norm; "
                   "checked against torch below"),
    "resnext": ((10,), 539_210,
                "derived: stem 1,856 + stages 25,856 + 101,888 + 404,480 + classifier 5,130 "
                "(bottleneck in·w + 2w + w·(w/8)·9 + 2w + w·out + 2out + in·out + 2out); "
                "checked against torch below"),
    "rcnn": ((10,), 672_202,
             "Liang & Hu 2015 table 1, RCNN-96: 0.67 M; exactly 7,296 + 4 · 165,984 + 970"),
    "spp": ((10,), 370_474,
            "derived: convs 448 + 4,640 + 18,496, fc 1,344·256 + 256 and 256·10 + 10; checked "
            "against torch below"),
}


def graph_of(name, input_shape=None):
    return load_graph(SPECS / f"{name}.toml", input_shape)


def test_every_shipped_spec_has_expected_numbers():
    assert sorted(p.stem for p in SPECS.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_builds_with_published_shape_and_parameters(name):
    shape, parameters, source = EXPECTED[name]
    graph = graph_of(name)
    assert graph.output.output_shape == shape, source
    assert parameter_count(graph) == parameters, source


def test_lenet_and_unet_small_carry_their_training_tables():
    lenet = graph_of("lenet").training
    assert (lenet["dataset"], lenet["optimizer"], lenet["lr"], lenet["momentum"],
            lenet["schedule"], lenet["batch_size"], lenet["epochs"], lenet["weight_decay"],
            lenet["augment"]) == ("fashion-mnist", "sgd", 0.02, 0.9, "cosine", 64, 20, 0.0005,
                                  ["flip"])
    assert graph_of("unet_small").training["dataset"] == "shapes"


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (100, 80), (37, 129)])
def test_spp_gives_the_same_features_at_any_input_size(size):
    graph = graph_of("spp", (3, *size))
    assert graph.node("spp").output_shape == (64 * (1 + 4 + 16),)
    assert graph.output.output_shape == (10,)
    assert parameter_count(graph) == EXPECTED["spp"][1]
    torch = torch_or_skip()
    features = torch.zeros(1, 64, *graph.node("relu3").output_shape[1:])
    pooled = torch.cat([torch.nn.AdaptiveMaxPool2d(level)(features).flatten(1)
                        for level in (1, 2, 4)], 1)
    assert tuple(pooled.shape[1:]) == graph.node("spp").output_shape


# -- torch equivalents, parameters only ------------------------------------------------------

def _conv_relu_stack(nn, layout, in_channels, kernel, bias=True):
    modules = []
    for out in layout:
        modules.append(nn.Conv2d(in_channels, out, kernel, bias=bias))
        in_channels = out
    return modules


def lenet(nn):
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5),
                         nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10))


def alexnet(nn):
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.Conv2d(256, 384, 3, padding=1), nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.Linear(9216, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000))


def vgg16(nn):
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    return nn.Sequential(*_conv_relu_stack(nn, channels, 3, 3), nn.Linear(512 * 7 * 7, 4096),
                         nn.Linear(4096, 4096), nn.Linear(4096, 1000))


def resnet18(nn):
    modules = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)]
    in_channels = 64
    for out, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                        (512, 1)]:
        modules += [nn.Conv2d(in_channels, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out),
                    nn.Conv2d(out, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out)]
        if stride != 1:
            modules += [nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out)]
        in_channels = out
    return nn.Sequential(*modules, nn.Linear(512, 1000))


def mobilenet_v1(nn):
    modules = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32)]
    in_channels = 32
    for out in [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]:
        modules += [nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                              bias=False), nn.BatchNorm2d(in_channels),
                    nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out)]
        in_channels = out
    return nn.Sequential(*modules, nn.Linear(1024, 1000))


def _unet(nn, in_channels, widths, classes, norm):
    """Parameters of a U-Net: double 3×3 convs down, 2×2 up-convs, double convs up, 1×1."""

    def double(cin, cout):
        if norm:
            return [nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout),
                    nn.Conv2d(cout, cout, 3, bias=False), nn.BatchNorm2d(cout)]
        return [nn.Conv2d(cin, cout, 3), nn.Conv2d(cout, cout, 3)]

    modules, cin = [], in_channels
    for width in widths:
        modules += double(cin, width)
        cin = width
    for width in reversed(widths[:-1]):
        modules += [nn.ConvTranspose2d(cin, width, 2, 2)] + double(2 * width, width)
        cin = width
    return nn.Sequential(*modules, nn.Conv2d(cin, classes, 1))


def unet(nn):
    return _unet(nn, 1, [64, 128, 256, 512, 1024], 2, norm=False)


def unet_small(nn):
    return _unet(nn, 1, [16, 32, 64, 128], 4, norm=True)


def resnext(nn):
    modules = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)]
    cin = 64
    for width, out, stride in [(64, 128, 1), (128, 256, 2), (256, 512, 2)]:
        modules += [nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width),
                    nn.Conv2d(width, width, 3, stride, 1, groups=8, bias=False),
                    nn.BatchNorm2d(width), nn.Conv2d(width, out, 1, bias=False),
                    nn.BatchNorm2d(out), nn.Conv2d(cin, out, 1, stride, bias=False),
                    nn.BatchNorm2d(out)]
        cin = out
    return nn.Sequential(*modules, nn.Linear(512, 10))


def rcnn(nn):
    # An RCL is a feed-forward "same" conv (with bias) and a recurrent one (without).
    rcl = [m for _ in range(4) for m in (nn.Conv2d(96, 96, 3, padding=1),
                                         nn.Conv2d(96, 96, 3, padding=1, bias=False))]
    return nn.Sequential(nn.Conv2d(3, 96, 5, padding=2), *rcl, nn.Linear(96, 10))


def spp(nn):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1),
                         nn.Conv2d(32, 64, 3, padding=1), nn.Linear(64 * 21, 256),
                         nn.Linear(256, 10))


TORCH_MODELS = {f.__name__: f for f in (lenet, alexnet, vgg16, resnet18, mobilenet_v1, unet,
                                        unet_small, resnext, rcnn, spp)}


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_parameter_shapes_match_an_equivalent_torch_model(name):
    torch = torch_or_skip()
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = TORCH_MODELS[name](torch.nn)
    expected = sorted(tuple(p.shape) for p in model.parameters())
    graph = graph_of(name)
    got = sorted(shape for node in graph.nodes for shape in node.params.values())
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name][1]


def test_torch_equivalents_cover_every_spec():
    assert sorted(TORCH_MODELS) == sorted(EXPECTED)
