"""Every shipped spec trains with the command its header gives: a [training] table for a data
set it fits, at the input size the command names; unpadded segmenters get centre-cropped
masks."""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from declcnn.errors import DataError
from declcnn.graph import load_graph
from declcnn.train import Trainer, evaluate
from declcnn.train.data import crop_masks
from declcnn.train.datasets import load_shapes, make_shapes
from declcnn.train.loop import check_fit

SPECS = sorted(Path(__file__).resolve().parent.parent.joinpath("specs").glob("*.toml"))
COMMAND = re.compile(r"`declcnn train specs/(\w+)\.toml(?: --input (\d+)x(\d+))?`")


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_header_command_fits_the_training_data(path):
    text = path.read_text()
    match = COMMAND.search(text[:text.index("[network]")])
    assert match and match.group(1) == path.stem, "the header says how to train it"
    assert "[training]" in text
    graph = load_graph(str(path))
    if match.group(2):
        graph = load_graph(str(path), (graph.input_shape[0], int(match.group(2)),
                                       int(match.group(3))))
    dataset = graph.training["dataset"]
    channels, height, width = graph.input_shape
    if dataset == "fashion-mnist":
        assert graph.input_shape == (1, 28, 28)
        return
    shapes = make_shapes(4, (height, width), channels, seed=0, max_shapes=1)
    if dataset == "shape-classes":
        shapes.y = shapes.y.reshape(4, -1).max(axis=1) - 1
    elif dataset == "shapes-foreground":
        shapes.y = (shapes.y > 0).astype(np.int64)
    else:
        assert dataset == "shapes"
    check_fit(SimpleNamespace(graph=graph), shapes)


def test_crop_masks_takes_the_centre():
    y = np.arange(2 * 7 * 6).reshape(2, 7, 6)
    np.testing.assert_array_equal(crop_masks(y, (3, 2)), y[:, 2:5, 2:4])
    assert crop_masks(y, (7, 6)) is y


UNPADDED = """
[network]
name = "valid"
input = [1, 20, 20]

[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 8
kernel = 3

[[layers]]
name = "relu"
type = "relu"

[[layers]]
name = "conv2"
type = "conv2d"
out_channels = 8
kernel = 3

[[layers]]
name = "relu2"
type = "relu"

[[layers]]
name = "classifier"
type = "conv2d"
out_channels = {classes}
kernel = 1

[training]
dataset = "shapes-foreground"
optimizer = "adam"
lr = 0.01
batch_size = 50
epochs = 2
augment = ["flip"]
"""


def test_unpadded_segmenter_trains_on_cropped_masks(tmp_path):
    spec = tmp_path / "valid.toml"
    spec.write_text(UNPADDED.format(classes=2))
    result = Trainer(spec, out=tmp_path / "run", threads=1, verbose=False).fit()
    assert result["history"][-1]["val_mean_iou"] > 0.5
    metrics = evaluate(spec, tmp_path / "run" / "best.npz")
    _, test = load_shapes((1, 20, 20))
    assert metrics["samples"] == len(test) * 16 * 16 and metrics["classes"] == ["background",
                                                                                "shape"]


def test_output_larger_than_the_masks_is_refused():
    graph = load_graph(UNPADDED.format(classes=2), (1, 20, 20))
    small = make_shapes(2, (12, 12), 1)
    with pytest.raises(DataError, match=r"masks of size \(12, 12\) per image, so the output "
                                        r"must be \(classes, 12, 12\) or smaller \(an unpadded "
                                        r"network's masks are centre-cropped to its output\); "
                                        r"it is \(2, 16, 16\)"):
        check_fit(SimpleNamespace(graph=graph), small)
