"""The top-level API: what ``import declcnn`` offers, and that it stays light."""

import subprocess
import sys

import numpy as np

import declcnn
import declcnn.functional as F


def test_import_declcnn_loads_no_compiled_kernels():
    code = ("import sys, declcnn; declcnn.SpecError; "
            "print(any(m.startswith('declcnn._kernels') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_exported_name_resolves():
    for name in declcnn.__all__:
        assert getattr(declcnn, name) is not None, name
    assert declcnn.Trainer is declcnn.train.Trainer
    assert declcnn.train.train is not None


def test_functional_pairs_each_forward_with_its_backward():
    forwards = [n for n in F.__all__ if not n.endswith("_backward")]
    for name in forwards:
        assert callable(getattr(F, name))
        if name != "softmax_cross_entropy":  # fused: returns the loss and its gradient
            assert f"{name}_backward" in F.__all__, name


def test_load_runs_a_spec_end_to_end():
    net = declcnn.loads('[network]\ninput = [1, 4, 4]\n[[layers]]\ntype = "flatten"\n'
                        '[[layers]]\ntype = "linear"\nout_features = 3\n')
    y = net.forward(np.ones((2, 1, 4, 4), np.float32))
    assert y.shape == (2, 3)
    assert [f.name for f in declcnn.receptive_field(net)] == [n.name for n in net.graph.nodes]
