"""Weights in and out: declcnn → safetensors → PyTorch (the hand-built LeNet and ResNet-18 give
declcnn's output) → safetensors → declcnn (the same bits); strict imports that list every
mismatch; pickles refused; ``declcnn export`` and ``declcnn import-weights`` as a user runs them.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from oracle import assert_close, torch_or_skip
from test_specs_torch import SPECS, _lenet, _resnet18

from declcnn.cli import main
from declcnn.errors import CheckpointError, DeclcnnError
from declcnn.graph import load_graph
from declcnn.runtime import Network
from declcnn.train import load_checkpoint

safetensors = pytest.importorskip("safetensors")

from declcnn.interchange import export_safetensors, import_weights, read_tensors  # noqa: E402

LENET = SPECS / "lenet.toml"
RESNET = SPECS / "resnet18.toml"

# declcnn's ResNet-18 names → torchvision's, as --rename rules (the reverse maps them back).
TORCHVISION = [(f"layer{s}{letter}.", f"layer{s}.{i}.") for s in "234"
               for letter, i in (("a", 0), ("b", 1))]
TORCHVISION += [("shortcut_bn.", "downsample.1."), ("shortcut.", "downsample.0.")]
FROM_TORCHVISION = [(new, old) for old, new in TORCHVISION]


def _trained_looking(net: Network, seed: int) -> Network:
    """Running statistics away from their initial 0 and 1, so that eval mode shows them."""
    rng = np.random.default_rng(seed)
    for value in net.buffers.values():
        value += rng.uniform(0.2, 0.9, value.shape).astype(value.dtype)
    return net.eval()


@pytest.mark.parametrize("spec, build, renames, input_shape", [
    (LENET, _lenet, [], None),
    (RESNET, _resnet18, TORCHVISION, (3, 64, 64)),
], ids=["lenet", "resnet18"])
def test_round_trip_through_pytorch(spec, build, renames, input_shape, tmp_path):
    torch = torch_or_skip()
    from safetensors.torch import load_file, save_file

    graph = load_graph(spec, input_shape)
    net = _trained_looking(Network(graph, seed=4), 5)
    out = export_safetensors(net, tmp_path / "out.safetensors", rename=renames)
    module = build(torch).eval()
    module.load_state_dict(load_file(out))  # strict: every name and shape of the module
    x = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert_close(net.forward(x), expected, f"{spec.stem}: declcnn against PyTorch",
                 atol=1e-4 * float(np.abs(expected).max()))

    state = module.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state) == (spec == RESNET)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "back.safetensors")
    checkpoint, report = import_weights(
        spec, tmp_path / "back.safetensors", tmp_path / "back.npz",
        rename=[(new, old) for old, new in renames])
    assert len(report["dropped"]) == (20 if spec == RESNET else 0)
    original = net.state_dict()
    stored = load_checkpoint(tmp_path / "back.npz")
    assert {**stored.params, **stored.buffers}.keys() == original.keys()
    for name, value in original.items():
        restored = {**stored.params, **stored.buffers}[name]
        assert restored.dtype == np.float32 and np.array_equal(restored.view(np.uint32),
                                                               value.view(np.uint32)), name
    again = Network(load_graph(spec, input_shape))
    stored.restore(again)
    assert np.array_equal(again.eval().forward(x), net.forward(x))


def test_strict_import_lists_every_mismatch(tmp_path):
    net = Network(load_graph(LENET))
    tensors = net.state_dict()
    del tensors["fc3.bias"], tensors["conv1.weight"]
    tensors["conv2.weight"] = np.zeros((16, 3, 5, 5), np.float32)
    tensors["fc1.bias"] = np.zeros(7, np.float32)
    tensors["head.weight"] = np.zeros((2, 3), np.float32)
    tensors["conv1.num_batches_tracked"] = np.array(3)  # conv1 is no batch norm: unexpected
    np.savez(tmp_path / "w.npz", **tensors)
    with pytest.raises(CheckpointError) as err:
        import_weights(LENET, tmp_path / "w.npz", tmp_path / "out.npz")
    assert str(err.value) == (
        f"{tmp_path / 'w.npz'}: the tensors do not fit network 'lenet' ({LENET}): 2 missing "
        f"(the network's 'conv1.weight' (6, 1, 5, 5), 'fc3.bias' (10)); 2 unexpected (the "
        f"file's 'head.weight' (2, 3), 'conv1.num_batches_tracked' ()); 2 of another shape "
        f"('conv2.weight' stored (16, 3, 5, 5), the network expects (16, 6, 5, 5), 'fc1.bias' "
        f"stored (7), the network expects (120)). Map the file's names onto the spec's with "
        f"--rename OLD=NEW (repeatable) and --prefix P (keep only names starting with P, "
        f"without it), or use the spec the weights were trained with; --no-strict loads only "
        f"the tensors that fit.")
    assert not (tmp_path / "out.npz").exists()


def test_prefix_rename_and_not_strict(tmp_path):
    net = Network(load_graph(LENET), seed=2)
    tensors = {f"module.{k.replace('fc', 'classifier.')}": v for k, v in net.state_dict().items()}
    tensors["other.weight"] = np.ones(3, np.float32)
    np.savez(tmp_path / "w.npz", **tensors)
    checkpoint, report = import_weights(LENET, tmp_path / "w.npz", prefix="module.",
                                        rename=["classifier.=fc"])
    assert all(np.array_equal(checkpoint.params[k], v) for k, v in net.params.items())
    assert report == {"dropped": []}

    tensors = {k: v for k, v in net.state_dict().items() if not k.startswith("fc3")}
    tensors["fc2.weight"] = np.zeros((84, 7), np.float32)
    np.savez(tmp_path / "partial.npz", **tensors)
    checkpoint, report = import_weights(LENET, tmp_path / "partial.npz", strict=False, seed=9)
    assert report["skipped"] == ["fc2.weight"]
    assert report["initial"] == ["fc2.weight", "fc3.weight", "fc3.bias"]
    assert np.array_equal(checkpoint.params["conv1.weight"], net.params["conv1.weight"])
    initial = Network(load_graph(LENET), seed=9)
    assert np.array_equal(checkpoint.params["fc3.weight"], initial.params["fc3.weight"])

    with pytest.raises(CheckpointError, match=re.escape(
            "no tensor name starts with the prefix 'backbone.' (the file's names begin "
            "'conv1.weight', 'conv1.bias', 'conv2.weight'); check --prefix.")):
        import_weights(LENET, tmp_path / "partial.npz", prefix="backbone.")
    with pytest.raises(CheckpointError, match=re.escape(
            "'fc1.weight' and 'fc2.weight' both become 'fc.weight' after the renames")):
        import_weights(LENET, tmp_path / "partial.npz", rename=["fc1=fc", "fc2=fc"])
    with pytest.raises(DeclcnnError, match=re.escape(
            "--rename 'fc1': must be OLD=NEW, OLD not empty")):
        import_weights(LENET, tmp_path / "partial.npz", rename=["fc1"])


def test_a_checkpoint_is_read_as_its_tensors(tmp_path):
    """An .npz that declcnn train wrote is read as its parameters and buffers."""
    net = Network(load_graph(LENET), seed=1)
    from declcnn.train import Checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "c.npz", Checkpoint(dict(net.params), {}, spec="x", meta={}))
    assert read_tensors(tmp_path / "c.npz").keys() == net.params.keys()


def test_pickles_and_unknown_files_are_refused(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"\x80\x04not opened")
    with pytest.raises(CheckpointError) as err:
        read_tensors(tmp_path / "model.pth")
    assert str(err.value) == (
        f"{tmp_path / 'model.pth'}: a .pth file is a Python pickle, and loading one runs "
        f"whatever code it holds, so declcnn never opens one. Convert it to safetensors first. "
        f"In PyTorch: import torch; from safetensors.torch import save_file; state = "
        f"torch.load('model.pth', map_location='cpu', weights_only=True); save_file({{k: "
        f"v.contiguous() for k, v in state.items()}}, 'model.safetensors') (for a whole saved "
        f"model, save model.state_dict() instead), then import 'model.safetensors'.")
    for name in ("w.pt", "W.PT", "pytorch_model.bin"):
        with pytest.raises(CheckpointError, match="is a Python pickle"):
            read_tensors(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"cannot tell the format from the extension "
                                              r"'\.h5'"):
        read_tensors(tmp_path / "w.h5")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "objects.npy").rename(tmp_path / "objects.npz")
    with pytest.raises(CheckpointError, match="not a readable .npz of numeric arrays"):
        read_tensors(tmp_path / "objects.npz")
    with open(tmp_path / "objects2.npz", "wb") as handle:  # an archive with an object array
        np.savez(handle, a=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="Object arrays cannot be loaded when "
                                              "allow_pickle=False"):
        read_tensors(tmp_path / "objects2.npz")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_tensors(tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match="no such file; check the path."):
        read_tensors(tmp_path / "absent.safetensors")


# -- the commands ----------------------------------------------------------------------------

def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_cli_round_trip(tmp_path):
    pytest.importorskip("onnx")
    torch = torch_or_skip()
    from safetensors.torch import load_file, save_file

    module = _lenet(torch)
    save_file(module.state_dict(), tmp_path / "lenet.safetensors")
    result = _run("import-weights", LENET, tmp_path / "lenet.safetensors", "-o",
                  tmp_path / "lenet.npz")
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {tmp_path / 'lenet.npz'}: 10 tensors from " \
                            f"{tmp_path / 'lenet.safetensors'}\n"
    result = _run("export", LENET, "--weights", tmp_path / "lenet.npz", "-o",
                  tmp_path / "back.safetensors", "--prefix", "net.")
    assert result.exit_code == 0, result.output
    back = load_file(tmp_path / "back.safetensors")
    assert all(torch.equal(back[f"net.{k}"], v) for k, v in module.state_dict().items())
    result = _run("export", LENET, "--weights", tmp_path / "lenet.npz", "-o",
                  tmp_path / "lenet.onnx", "--dynamic-batch", "--opset", "18")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(rf"wrote {re.escape(str(tmp_path / 'lenet.onnx'))} \(ONNX opset 18, "
                        r"\d+\.\d MB\)\n", result.output)


def test_cli_errors(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    result = _run("import-weights", LENET, tmp_path / "m.pt", "-o", tmp_path / "x.npz")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {tmp_path / 'm.pt'}: a .pt file is a Python "
                                    f"pickle")
    result = _run("export", LENET, "-o", tmp_path / "m.onnx", "--rename", "a=b")
    assert result.exit_code == 1
    assert result.output == (
        "error: --rename and --prefix name the tensors of a safetensors file; an ONNX "
        "model's initializers keep the spec's names. Drop them, or add --format safetensors.\n")
    result = _run("export", LENET, "-o", tmp_path / "m.safetensors", "--dynamic-batch")
    assert result.exit_code == 1
    assert result.output.startswith("error: --opset, --input and --dynamic-batch shape an "
                                    "ONNX model")
    result = _run("export", LENET, "-o", tmp_path / "m.onnx", "--weights", tmp_path / "no.npz")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {tmp_path / 'no.npz'}: no such checkpoint file")
    result = _run("export", LENET, "-o", tmp_path / "m.onnx", "--input", "0x3")
    assert result.exit_code == 2
    assert "must be HxW" in result.output
