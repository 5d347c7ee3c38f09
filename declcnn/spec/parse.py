"""Read a spec: TOML with line numbers, structure, names, references, then blocks expanded.

``parse_spec`` never raises on a bad spec: it returns a ``ParsedSpec`` whose ``problems`` list
every structural mistake in file order, and whose ``layers`` are the layers that could be read, so
that ``graph/`` can add its own problems in the same run.  A file that is not valid TOML yields
its one syntax problem and no layers.
"""

from __future__ import annotations

import os
import re

from ..errors import Problem, SpecError
from ._values import bad_name_character, described, did_you_mean, is_int, show
from .blocks import Block, expand, read_blocks
from .layers import LayerDef, Report, Scope, read_layer_list
from .locate import locate
from .model import ParsedSpec
from .training import check_training

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TOP_LEVEL = ("network", "layers", "blocks", "training")
NETWORK_KEYS = ("name", "input")
MAX_INPUT_SIZE = 2**20
# Tables and arrays nested deeper than this are refused before anything recurses over them
# (a real spec nests about 6 deep: [blocks.B] layers, a layer, an args table, an array).
MAX_NESTING = 32
MAX_NAME_LENGTH = 100  # a run folder's name: well inside every file system's 255 bytes

_SYNTAX_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _syntax_problem(err: Exception, text: str, file: str | None) -> Problem:
    message = str(err)
    match = _SYNTAX_POSITION.search(message)
    line, where = None, ""
    if match:
        message = message[:match.start()]
        if match.group(1):
            line, where = int(match.group(1)), f" at column {match.group(2)}"
        else:
            line, where = text.count("\n") + 1, " at the end of the file"
    return Problem(f"invalid TOML: {message}{where}. Fix the syntax (docs/SPEC.md shows the "
                   f"format).", file, line)


def read_spec(path) -> ParsedSpec:
    """Read and check the spec file at ``path``; an unreadable path raises ``SpecError``."""
    name = os.fspath(path)
    if os.path.isdir(name):
        raise SpecError([Problem("is a directory, not a spec file; give the path of a .toml "
                                 "file.", name)])
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise SpecError([Problem("no such file; check the path (e.g. specs/lenet.toml).",
                                 name)]) from None
    except UnicodeDecodeError as err:
        raise SpecError([Problem(f"is not UTF-8 text (byte {err.start} cannot be decoded); save "
                                 f"the spec as UTF-8.", name)]) from None
    except OSError as err:
        raise SpecError([Problem(f"cannot be read ({err.strerror}); check that it exists and "
                                 f"is readable.", name)]) from None
    return parse_spec(text, file=name)


def parse_spec(text, file: str | None = None) -> ParsedSpec:
    """Check a spec's text (or the dict a TOML reader would make of it: written out as TOML
    first, so problems have lines) and expand its blocks; the problems are in ``.problems``."""
    if isinstance(text, dict):
        from .emit import dumps

        text = dumps(text)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return ParsedSpec(file, "", (), [], problems=[_syntax_problem(err, text, file)])
    except RecursionError:  # tomllib recurses once per nested array or inline table
        document = None
    if document is None or _nesting(document) > MAX_NESTING:
        return ParsedSpec(file, "", (), [], problems=[Problem(
            f"arrays or tables are nested more than {MAX_NESTING} deep; no spec needs that, "
            f"so flatten the nesting (docs/SPEC.md shows the format).", file)])
    report = Report(file, locate(text))

    for key in document:
        if key not in TOP_LEVEL:
            report.add(f"unknown top-level key. {did_you_mean(key, TOP_LEVEL)}A spec "
                       f"has [network], [[layers]], [blocks.NAME] and [training].", (key,),
                       key=key)
    name, input_shape = _check_network(document.get("network"), file, report)
    blocks = read_blocks(document.get("blocks"), report)
    layers = _check_layers(document.get("layers"), blocks, report)
    entries = expand(layers, blocks, report) if layers is not None else []
    training_table = document.get("training")
    training = check_training(
        training_table, file,
        lambda message, key: report.add(message, ("training",) + ((key,) if key else ()),
                                        key=key, section="training"))
    training_lines = ({k: report.line(("training", k)) for k in training_table}
                      if isinstance(training_table, dict) else {})
    problems = sorted(report.problems, key=lambda p: p.line or 0)
    return ParsedSpec(file, name, input_shape, entries, training, problems, document,
                      training_lines)


def _check_network(network, file: str | None, report: Report) -> tuple[str, tuple[int, ...]]:
    default_name = _default_name(file)
    if network is None:
        report.add("missing; add a [network] table with input = [channels, height, width].",
                   section="network")
        return default_name, ()
    if not isinstance(network, dict):
        report.add(f"must be a table ([network]); got {described(network)}.",
                   ("network",), section="network")
        return default_name, ()
    for key in network:
        if key not in NETWORK_KEYS:
            report.add(f"unknown key. {did_you_mean(key, NETWORK_KEYS)}[network] takes "
                       f"name and input.", ("network", key), key=key, section="network")
    name = network.get("name", default_name)
    if not isinstance(name, str):
        report.add(f"must be a string; got {described(name)}.", ("network", "name"),
                   key="name", section="network")
        name = default_name
    else:
        message = _name_problem(name)
        if message:
            report.add(message, ("network", "name"), key="name", section="network")
            name = default_name
    if "input" not in network:
        report.add("missing; give input = [channels, height, width] (e.g. [1, 28, 28]), or "
                   "[features] for flat input.", ("network",), key="input", section="network")
        return name, ()
    dims = network["input"]
    if not (isinstance(dims, list) and len(dims) in (1, 3) and all(map(is_int, dims))
            and all(d >= 1 for d in dims)):
        report.add(f"must be [channels, height, width] or [features], each an integer ≥ 1; got "
                   f"{show(dims)}.", ("network", "input"), key="input", section="network")
        return name, ()
    if max(dims) > MAX_INPUT_SIZE:
        report.add(f"each size must be at most {MAX_INPUT_SIZE} (2**20); got {show(dims)}. Use "
                   f"a smaller input.", ("network", "input"), key="input", section="network")
        return name, ()
    return name, tuple(dims)


def _nesting(document: dict) -> int:
    """How deep arrays and tables nest in ``document`` (itself 1), without recursing."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            break
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return deepest


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a network: it becomes the run folder ``runs/NAME``, so it must be
    one plain path component (no '/', '..', NUL), checked like a layer name."""
    rule = ("a network name is the name of its run folder (runs/NAME), so it may contain only "
            "letters, digits, '_' and '-' (e.g. name = \"lenet5\")")
    if not name:
        return f"must not be empty; {rule}."
    bad = bad_name_character(name)
    if bad is not None:
        return f"{show(name)} contains {bad!r}; {rule}."
    if len(name) > MAX_NAME_LENGTH:
        return (f"is {len(name)} characters long, more than {MAX_NAME_LENGTH}; give a shorter "
                f"name.")
    return None


def _default_name(file: str | None) -> str:
    """The spec file's stem as a network name, its other characters replaced by '_'."""
    stem = os.path.splitext(os.path.basename(file))[0] if file else ""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:MAX_NAME_LENGTH]
    return stem or "network"


def _check_layers(layers, blocks: dict[str, Block], report: Report) -> list[LayerDef] | None:
    if layers is None or layers == []:
        report.add("no layers; add at least one [[layers]] table with a type.",
                   section="layers")
        return None
    if not isinstance(layers, list):
        report.add(f"must be an array of tables ([[layers]]); got {described(layers)}.",
                   ("layers",), section="layers")
        return None
    return read_layer_list(layers, Scope(report, ("layers",), None, set()), blocks)


