"""Every shipped spec against PyTorch: output, input gradient, every parameter gradient and the
batch-norm running statistics after one training-mode step, within 1e-4.

Each spec runs through ``TorchGraph`` (``test_runtime.py``: the graph executed by
``torch.nn.functional`` with the network's weights copied by name).  LeNet and ResNet-18 are
also written out by hand as ``torch.nn.Module``s in torchvision's layout, so that the specs are
shown to be those networks and not just run consistently.

Sizes: the full-size ImageNet networks run at a reduced input through ``input_shape`` (their
linear layers take the flattened size the graph builder infers, and global pooling makes
ResNet-18 and MobileNet size-independent), so that this file runs in seconds on two shared
cores; every layer and block of the spec still runs.  The original U-Net runs at 188×188, the
smallest tile its unpadded convolutions and crops accept (output 4×4).  Batch size 2 keeps batch
normalisation's statistics meaningful where a map shrinks to 2×2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from oracle import assert_close, torch_or_skip
from test_runtime import compare_with_torch

from declcnn.graph import load_graph
from declcnn.runtime import Network

SPECS = Path(__file__).resolve().parent.parent / "specs"

# spec → (input shape to run at, or None for the spec's own; batch size; run float32 too).  The
# original U-Net's 6·10⁹ multiply-adds per pass run in float64 only, to keep this file fast.
RUNS = {
    "lenet": (None, 2, True),
    "unet_small": ((1, 32, 32), 2, True),
    "unet": ((1, 188, 188), 1, False),
    "alexnet": ((3, 67, 67), 2, True),
    "vgg16": ((3, 32, 32), 2, True),
    "resnet18": ((3, 64, 64), 2, True),
    "mobilenet_v1": ((3, 64, 64), 2, True),
    "resnext": (None, 2, True),
    "rcnn": (None, 1, True),
    "spp": (None, 2, True),
    "spp@48": ((3, 48, 48), 2, True),  # SPP's point: another input size, the same classifier
}


def test_every_shipped_spec_is_covered():
    shipped = {path.stem for path in SPECS.glob("*.toml")}
    covered = {name.split("@")[0] for name in RUNS}
    assert shipped == covered, f"add {sorted(shipped - covered)} to RUNS (or remove "\
                               f"{sorted(covered - shipped)})"


@pytest.mark.parametrize("run", list(RUNS))
def test_spec_matches_torch(run):
    """float32 (the product): the output.  float64: the output, the input gradient, every
    parameter gradient and the running statistics.  Gradients are compared in float64 because
    in float32 a pre-activation within rounding of 0 sends a ReLU's gradient one way in declcnn
    and the other in PyTorch (MobileNet at 64×64 has such flips), which says nothing about
    either."""
    torch_or_skip()
    input_shape, batch, float32 = RUNS[run]
    graph = load_graph(SPECS / f"{run.split('@')[0]}.toml", input_shape)
    x = np.random.default_rng(1).standard_normal((batch, *graph.input_shape))
    if float32:
        compare_with_torch(Network(graph), x.astype(np.float32), what=f"{run} float32",
                           deep=True, gradients=False)
    compare_with_torch(Network(graph, dtype=np.float64), x, what=f"{run} float64")


# -- networks written by hand in PyTorch ---------------------------------------------------------

def _lenet(torch):
    nn, F = torch.nn, torch.nn.functional

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = torch.flatten(F.max_pool2d(F.relu(self.conv2(x)), 2), 1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    return LeNet()


def _resnet18(torch):
    """torchvision's resnet18 (BasicBlock, [2, 2, 2, 2]), written out."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            identity = x if self.downsample is None else self.downsample(x)
            return torch.relu(out + identity)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages, inplanes = [], 64
            for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                stages.append(nn.Sequential(Block(inplanes, planes, stride),
                                            Block(planes, planes, 1)))
                inplanes = planes
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return ResNet18()


def _torchvision_name(name: str) -> str:
    """The spec's ResNet-18 names in torchvision's: ``layer2a.shortcut_bn.bias`` →
    ``layer2.0.downsample.1.bias``, ``layer3b.conv1`` → ``layer3.1.conv1``."""
    for stage in "234":
        for letter, index in (("a", 0), ("b", 1)):
            name = name.replace(f"layer{stage}{letter}.", f"layer{stage}.{index}.")
    return name.replace("shortcut_bn.", "downsample.1.").replace("shortcut.", "downsample.0.")


@pytest.mark.parametrize("spec, build, rename, input_shape", [
    ("lenet", _lenet, str, None),
    ("resnet18", _resnet18, _torchvision_name, (3, 64, 64)),
])
def test_spec_is_the_published_network(spec, build, rename, input_shape):
    """The spec's state dict has the module's names (after ``rename``) and shapes; with the
    weights copied by name both give the same output and gradients (in float64, as above)."""
    torch = torch_or_skip()
    graph = load_graph(SPECS / f"{spec}.toml", input_shape)
    net = Network(graph, seed=0, dtype=np.float64)
    module = build(torch).double()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert {rename(k): v.shape for k, v in net.state_dict().items()} == expected
    module.load_state_dict({rename(k): torch.from_numpy(v) for k, v in net.state_dict().items()},
                           strict=False)
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape))
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    y = net.forward(x)
    assert_close(y, ty.detach().numpy(), f"{spec} output")
    grad = np.random.default_rng(1).standard_normal(y.shape)
    ty.backward(torch.from_numpy(grad))
    assert_close(net.backward(grad), tx.grad.numpy(), f"{spec} input gradient")
    torch_params = dict(module.named_parameters())
    for name, value in net.grads.items():
        assert_close(value, torch_params[rename(name)].grad.numpy(), f"{spec} {name} gradient")
