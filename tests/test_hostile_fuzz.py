"""Fuzzing the three doors hostile input comes through (issue 12): the spec parser, the checkpoint
loader and the input readers.  Whatever they are given, they return or raise a DeclcnnError:
any other exception is an escape.

Bounded for CI (derandomized, a few seconds each).  For a long run outside CI set
``DECLCNN_FUZZ_EXAMPLES`` (examples per test) and run under a memory limit so that an attempt to
allocate gigabytes shows up as a MemoryError escape, e.g.::

    (ulimit -v 3000000; DECLCNN_FUZZ_EXAMPLES=5000 python -m pytest tests/test_hostile_fuzz.py)
"""

from __future__ import annotations

import gzip
import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declcnn.errors import DeclcnnError
from declcnn.graph import load_graph
from declcnn.spec import parse_spec
from declcnn.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, stored_settings
from declcnn.train.datasets import load_npz, read_idx, read_input, write_idx

EXAMPLES = int(os.environ.get("DECLCNN_FUZZ_EXAMPLES", "0"))


def bounded(ci_examples: int):
    examples = EXAMPLES or ci_examples
    return settings(max_examples=examples, deadline=None if not EXAMPLES else 10_000,
                    derandomize=not EXAMPLES, database=None,
                    suppress_health_check=list(HealthCheck))


def mutated(data: bytes, draw_ops) -> bytes:
    """``data`` with bytes flipped, inserted, deleted, or cut short."""
    out = bytearray(data)
    for op, where, value in draw_ops:
        if not out:
            break
        i = where % len(out)
        if op == 0:
            out[i] ^= value or 1
        elif op == 1:
            out[i:i] = bytes([value])
        elif op == 2:
            del out[i]
        else:
            del out[i:]
    return bytes(out)


ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**31), st.integers(0, 255)),
               min_size=1, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=12)

# -- specs -----------------------------------------------------------------------------------

HOSTILE_NAMES = ["../x", "/tmp/x", "", ".", "..", "a\x00b", "ok", "n" * 120, "a/b", "$input",
                 "input", "☃"]


@st.composite
def hostile_specs(draw) -> str:
    name = draw(st.sampled_from(HOSTILE_NAMES))
    depth = draw(st.integers(0, 400))
    nested = "[" * depth + "]" * depth if draw(st.booleans()) else \
        "{a = " * depth + "1" + "}" * depth
    blocks = draw(st.integers(0, 5))
    repeat = draw(st.sampled_from([1, 2, 1000, 10_000, 0, -1, "$r"]))
    broken = draw(st.booleans())
    lines = ['[network]', f'name = {json.dumps(name)}', 'input = [1, 8, 8]', '']
    for b in range(blocks):
        lines += [f"[blocks.b{b}]", f"[[blocks.b{b}.layers]]"]
        if b == 0:
            lines.append('type = ""' if broken else 'type = "relu"')
        else:
            lines += [f'block = "b{b - 1}"', f"repeat = {json.dumps(repeat)}"]
        lines.append("")
    lines += ["[[layers]]"]
    if blocks:
        lines += [f'block = "b{blocks - 1}"', f"repeat = {json.dumps(repeat)}"]
    else:
        steps = draw(st.sampled_from([1, 3, 1000, 1001, 10**9]))
        lines += ['type = "rcl"', "out_channels = 2", "kernel = 3", f"steps = {steps}"]
    if depth:
        lines.append(f"x = {nested}")
    return "\n".join(lines) + "\n"


@bounded(60)
@given(hostile_specs())
def test_hostile_specs_give_only_spec_errors(text):
    parse_spec(text, file="fuzz.toml")
    try:
        load_graph(text)
    except DeclcnnError:
        pass


# -- checkpoints -------------------------------------------------------------------------------

SPEC = """[network]
name = "tiny"
input = [1, 4, 4]

[[layers]]
type = "flatten"

[[layers]]
name = "fc"
type = "linear"
out_features = 2
"""


def _valid_checkpoint() -> Checkpoint:
    rng = np.random.default_rng(0)
    return Checkpoint(
        params={"fc.weight": rng.standard_normal((2, 16)).astype(np.float32),
                "fc.bias": np.zeros(2, np.float32)},
        buffers={}, optimizer={"steps": np.asarray(3),
                               "momentum_buffer/fc.bias": np.zeros(2, np.float32)},
        spec=SPEC,
        meta={"epoch": 1, "step": 3, "dropout_rng": np.random.default_rng(1).bit_generator.state,
              "history": [], "classes": ["a", "b"], "spec_name": "tiny", "threads": 1,
              "running": {"loss": 0.0, "correct": 0, "counted": 0, "images": 0}, "best": 0.5,
              "settings": {"lr": 0.1, "epochs": 2}},
        mean=np.array([0.5], np.float32), std=np.array([0.25], np.float32))


def _use(path) -> None:
    """What eval, predict and resume do with a checkpoint once it has loaded."""
    from declcnn.runtime import Network
    from declcnn.train.data import Normalizer
    from declcnn.train.optimizers import make_optimizer

    graph = load_graph(SPEC)
    checkpoint = load_checkpoint(path)
    network = Network(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint.restore(network)
    settings_, _ = stored_settings(checkpoint, graph.training, {})
    if checkpoint.mean is not None:
        Normalizer(checkpoint.mean, checkpoint.std)(np.zeros((1, 1, 4, 4), np.float32))
    checkpoint.check_resumable()
    optimizer = make_optimizer(network.params, settings_)
    optimizer.load_state_dict(checkpoint.optimizer)
    network.dropout_rng.bit_generator.state = checkpoint.meta["dropout_rng"]


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "last.npz"
    save_checkpoint(path, _valid_checkpoint())
    return path.read_bytes()


def _expect_ours(call, *args) -> None:
    try:
        call(*args)
    except DeclcnnError:
        pass


@bounded(80)
@given(ops=ops)
def test_mutated_checkpoint_files_give_only_checkpoint_errors(tmp_path_factory, valid_bytes, ops):
    path = tmp_path_factory.mktemp("m") / "last.npz"
    path.write_bytes(mutated(valid_bytes, ops))
    _expect_ours(_use, path)


META_KEYS = ["epoch", "step", "settings", "history", "running", "best", "threads", "dropout_rng",
             "classes", "spec_name", "segmentation", "overrides"]
def _filled(shape, dtype, fill) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):  # nan or 1e39 as an integer is intended
        return np.full(shape, fill).astype(dtype)


arrays = st.one_of(
    st.builds(_filled,
              st.lists(st.integers(0, 3), max_size=3).map(tuple),
              st.sampled_from(["f4", "f8", "i8", "u1", "U3", "b1", "c8"]),
              st.sampled_from([0, 1, -1, 1e39, float("nan"), float("inf")])),
    st.text(max_size=10).map(np.asarray))


@bounded(150)
@given(field=st.sampled_from(["version", "format", "spec", "meta", "param/fc.weight",
                              "param/fc.bias", "optimizer/steps", "data/mean", "data/std",
                              "optimizer/momentum_buffer/fc.bias", "param/extra"]),
       value=arrays, meta_key=st.sampled_from(META_KEYS), meta_value=json_values,
       settings_value=st.dictionaries(st.sampled_from(["lr", "epochs", "dataset", "loss",
                                                       "optimizer", "betas", "x"]),
                                      json_values, max_size=3),
       choice=st.integers(0, 2))
def test_checkpoint_fields_of_any_type_give_only_checkpoint_errors(
        tmp_path_factory, field, value, meta_key, meta_value, settings_value, choice):
    checkpoint = _valid_checkpoint()
    arrays_ = checkpoint.arrays()
    if choice == 0:
        arrays_[field] = value
    elif choice == 1:
        meta = dict(checkpoint.meta, **{meta_key: meta_value})
        arrays_["meta"] = np.asarray(json.dumps(meta))
    else:
        meta = dict(checkpoint.meta, settings=settings_value)
        arrays_["meta"] = np.asarray(json.dumps(meta))
    path = tmp_path_factory.mktemp("f") / "last.npz"
    np.savez(path, **arrays_)
    _expect_ours(_use, path)


# -- input readers -------------------------------------------------------------------------------

def _samples() -> dict[str, bytes]:
    from PIL import Image

    out = {}
    buffer = io.BytesIO()
    np.save(buffer, np.arange(16, dtype=np.float32).reshape(4, 4))
    out["x.npy"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("L", (6, 5), 7).save(buffer, format="PNG")
    out["x.png"] = buffer.getvalue()
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as archive:
        for key, value in (("x", np.zeros((4, 1, 4, 4), np.uint8)), ("y", np.arange(4) % 2)):
            member = io.BytesIO()
            np.save(member, value)
            archive.writestr(f"{key}.npy", member.getvalue())
    out["d.npz"] = raw.getvalue()
    out["i-idx3-ubyte.gz"] = gzip.compress(
        bytes([0, 0, 8, 2]) + np.asarray([3, 4], ">u4").tobytes() + bytes(12), mtime=0)
    return out


SAMPLES = _samples()


def _read(path) -> None:
    name = path.name
    if name.endswith(".npz"):
        load_npz(path, (1, 4, 4))
    elif "idx" in name:
        read_idx(path)
    else:
        read_input(path, (1, 4, 4))


@bounded(200)
@given(name=st.sampled_from(sorted(SAMPLES)), ops=ops, garbage=st.booleans(),
       noise=st.binary(max_size=64))
def test_mutated_inputs_give_only_data_errors(tmp_path_factory, name, ops, garbage, noise):
    path = tmp_path_factory.mktemp("i") / name
    path.write_bytes(noise if garbage else mutated(SAMPLES[name], ops))
    _expect_ours(_read, path)


def test_the_samples_themselves_read(tmp_path):
    for name, data in SAMPLES.items():
        (tmp_path / name).write_bytes(data)
        _read(tmp_path / name)
    write_idx(tmp_path / "w-idx1-ubyte", np.arange(3, dtype=np.uint8))
    read_idx(tmp_path / "w-idx1-ubyte")
