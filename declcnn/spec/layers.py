"""Check one list of layer tables (the file's ``[[layers]]`` or a block's) on its own terms.

Each table's keys, its name, its ``input``/``inputs`` form, ``$param`` references, then the names
and references between the tables: duplicates, dangling names (with the closest existing one),
forward references and cycles.  Per-type keys (``out_channels``...) are ``graph/``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import Problem
from ._values import (
    INT64_MAX,
    bad_name_character,
    described,
    did_you_mean,
    is_int,
    parameter_name,
    show,
    suggestion,
)
from .locate import Path

if TYPE_CHECKING:
    from .blocks import Block

LAYER_KEYS = ("name", "type", "input", "inputs")
USE_KEYS = ("name", "block", "args", "repeat", "input")
MAX_REPEAT = 10_000
INPUT = "input"
_READABLE = {
    True: 'A layer reads a layer above it, or "input" (the network input).',
    False: 'A block\'s layer reads a layer above it in the block, "$input" (the block\'s input) '
           'or "input" (the network input).',
}


class Report:
    """Collects problems; finds a line for a document path (its own, or its nearest parent's)."""

    def __init__(self, file: str | None, lines: dict[Path, int]):
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []
        self._seen: set[tuple] = set()

    def line(self, path: Path) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def add(self, message: str, path: Path = (), *, line: int | None = None,
            layer: tuple[int, str] | None = None, key: str | None = None,
            section: str | None = None) -> None:
        problem = Problem(message, self.file, line if line is not None else self.line(path),
                          layer, key, section)
        # A block used many times must report a mistake in one of its arguments once.
        if (problem.line, problem.layer, problem.key, message) not in self._seen:
            self._seen.add((problem.line, problem.layer, problem.key, message))
            self.problems.append(problem)


@dataclass
class LayerDef:
    """One ``[[layers]]`` table (of the file or of a block) as written, after its own checks."""

    position: int
    name: str
    table: dict
    path: Path
    block: str | None = None      # set for a block use
    refs: list[str] | None = None  # input/inputs as written; None reads the previous layer
    ok: bool = True


class Scope:
    """Where a list of layer tables lives: the file's ``[[layers]]`` or a block's."""

    def __init__(self, report: Report, path: Path, block: str | None, params: set[str]):
        self.report = report
        self.path = path
        self.block = block
        self.params = params

    def problem(self, layer: LayerDef, message: str, key: str | None = None) -> None:
        layer.ok = False
        path = layer.path + ((key,) if key else ())
        if self.block is None:
            self.report.add(message, path, layer=(layer.position, layer.name), key=key)
        else:
            self.report.add(f"layer {layer.position} '{layer.name}': {message}", path, key=key,
                            section=f"blocks.{self.block}")


def _default_name(table: dict, position: int) -> str:
    stem = table.get("block", table.get("type"))
    stem = parameter_name(stem) or stem
    if not isinstance(stem, str) or bad_name_character(stem) or not stem:
        stem = "layer"
    return f"{stem}{position}"


def read_layer_list(items: list, scope: Scope, blocks: dict[str, Block]) -> list[LayerDef]:
    """Check each table of a layer list, then the names and references between them."""
    layers = []
    for position, table in enumerate(items):
        path = scope.path + (position,)
        if not isinstance(table, dict):
            layer = LayerDef(position, f"layer{position}", {}, path)
            scope.problem(layer, f"must be a table ([[layers]]); got {described(table)}.")
            layers.append(layer)
            continue
        layer = LayerDef(position, _default_name(table, position), table, path)
        _check_name(layer, scope)
        if "block" in table:
            _check_use(layer, scope, blocks)
        else:
            _check_plain(layer, scope)
        _check_inputs(layer, scope)
        _check_values(layer, scope)
        layers.append(layer)
    _check_duplicates(layers, scope)
    _check_references(layers, scope)
    return layers


def _check_name(layer: LayerDef, scope: Scope) -> None:
    if "name" not in layer.table:
        return
    name = layer.table["name"]
    if not isinstance(name, str):
        scope.problem(layer, f"must be a string; got {described(name)}.", "name")
        return
    # Names written back from a graph (emit_toml) carry their block prefix: 'down1.conv1'.
    segments = name.split(".") if scope.block is None else [name]
    if not name:
        scope.problem(layer, "must not be empty; give the layer a name such as 'conv1'.", "name")
    elif name == INPUT:
        scope.problem(layer, "'input' is reserved for the network's input; choose another name.",
                      "name")
    elif any(not s for s in segments):
        scope.problem(layer, f"'{name}' has an empty part between dots; name layers like "
                             f"'conv1'.", "name")
    elif any(bad_name_character(s) for s in segments):
        bad = next(bad_name_character(s) for s in segments if bad_name_character(s))
        scope.problem(layer, f"'{name}' contains {bad!r}; names may contain only letters, digits, "
                             f"'_' and '-' (e.g. 'conv_1').", "name")
    else:
        layer.name = name


def _check_plain(layer: LayerDef, scope: Scope) -> None:
    table = layer.table
    if "type" not in table:
        scope.problem(layer, 'missing; every layer needs type = "..." (e.g. "conv2d" or "relu"), '
                             'or block = "NAME" to use a block.', "type")
    elif not isinstance(table["type"], str) or not table["type"]:
        scope.problem(layer, f"must be the name of a layer type (a string such as \"conv2d\"); "
                             f"got {show(table['type'])}.", "type")
    for key in ("args", "repeat"):
        if key in table:
            scope.problem(layer, f"{key} belongs to a block use (a layer with block = \"NAME\"); "
                                 f"a plain layer cannot take it.", key)


def _check_use(layer: LayerDef, scope: Scope, blocks: dict[str, Block]) -> None:
    table = layer.table
    for key in table:
        if key not in USE_KEYS:
            hint = did_you_mean(key, USE_KEYS)
            if key == "type":
                hint = "Use type for a layer or block for a block use, not both. "
            scope.problem(layer, f"not allowed in a block use. {hint}A block use takes name, "
                                 f"block, args, repeat and input.", key)
    name = table["block"]
    if not isinstance(name, str):
        scope.problem(layer, f"must be the name of a block (a string); got {show(name)}.",
                      "block")
        return
    layer.block = name
    if name not in blocks:
        scope.problem(layer, f"'{name}' is not a block; {suggestion(name, blocks, 'blocks')} "
                             f"Define it as [blocks.{name}].", "block")
        return
    if "repeat" in table:
        message = check_repeat(table["repeat"], scope.block is not None)
        if message:
            scope.problem(layer, message, "repeat")
    args = table.get("args", {})
    if not isinstance(args, dict):
        scope.problem(layer, f"must be a table of arguments, e.g. args = {{ch = 64}}; got "
                             f"{show(args)}.", "args")
        return
    for message in blocks[name].check_args(args, in_block=scope.block is not None):
        scope.problem(layer, message, "args")


def check_repeat(value, in_block: bool) -> str | None:
    if in_block and parameter_name(value):
        return None
    if not is_int(value) or not 1 <= value <= MAX_REPEAT:
        return f"must be an integer from 1 to {MAX_REPEAT}; got {show(value)}."
    return None


def _check_inputs(layer: LayerDef, scope: Scope) -> None:
    table = layer.table
    if "input" in table and "inputs" in table:
        scope.problem(layer, 'both input and inputs are given; use input = "NAME" for one input '
                             'or inputs = ["A", "B"] for a merge.', "inputs")
        return
    if "input" in table:
        if not isinstance(table["input"], str):
            scope.problem(layer, f'must be the name of a layer (a string, or "input" for the '
                                 f'network input); got {show(table["input"])}.', "input")
            return
        layer.refs = [table["input"]]
    elif "inputs" in table:
        refs = table["inputs"]
        if isinstance(refs, str) and scope.block is not None and parameter_name(refs):
            layer.refs = [refs]
            return
        if not (isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)):
            scope.problem(layer, f'must be a non-empty array of layer names, e.g. inputs = '
                                 f'["up1", "enc4"]; got {show(refs)}.', "inputs")
            return
        layer.refs = list(refs)


def _check_values(layer: LayerDef, scope: Scope) -> None:
    """Integers beyond int64 anywhere; ``$param`` that the block does not declare."""
    for key, value in layer.table.items():
        for found in _walk(value):
            if is_int(found) and abs(found) > INT64_MAX:
                scope.problem(layer, f"{found} is beyond the 64-bit integer range "
                                     f"(±{INT64_MAX}); use a smaller number.", key)
                continue
            param = parameter_name(found)
            if param is None:
                continue
            if key == "name":
                continue  # already reported: a name cannot contain '$'
            if scope.block is None:
                scope.problem(layer, f"'{found}' refers to a block parameter, but this layer is "
                                     f"not inside a block.", key)
            elif param == INPUT:
                if key not in ("input", "inputs") and not (key == "args" and "block" in
                                                           layer.table):
                    scope.problem(layer, "'$input' (the block's input) can be used only in "
                                         "input, inputs or a nested block's args.", key)
            elif param not in scope.params:
                known = [f"${p}" for p in sorted(scope.params)] + ["$input"]
                hint = suggestion(found, known, "parameters")
                scope.problem(layer, f"'{found}' names no parameter of block '{scope.block}'; "
                                     f"{hint} Declare it in params (with a default) or required.",
                              key)


def _walk(value):
    if isinstance(value, list):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    else:
        yield value


def _check_duplicates(layers: list[LayerDef], scope: Scope) -> None:
    first: dict[str, LayerDef] = {}
    for layer in layers:
        if layer.name in first:
            other = first[layer.name]
            line = scope.report.line(other.path)
            default = "" if "name" in layer.table else "the default name "
            scope.problem(layer, f"{default}'{layer.name}' is already the name of layer "
                                 f"{other.position} (line {line}); layer names must be unique, "
                                 f"so rename one.", "name")
        else:
            first[layer.name] = layer


def _check_references(layers: list[LayerDef], scope: Scope) -> None:
    """Every literal reference must name a layer above it (or the input); say why not."""
    position = {layer.name: layer.position for layer in layers}
    reads = [_reads(layer, position) for layer in layers]
    for layer in layers:
        key = "inputs" if "inputs" in layer.table else "input"
        for ref in layer.refs or []:
            if ref == INPUT or parameter_name(ref):
                continue
            target = position.get(ref)
            if target is None:
                above = [other.name for other in layers[:layer.position]]
                known = dict.fromkeys(([INPUT] if scope.block is None else ["$input", INPUT])
                                      + above)
                scope.problem(layer, f"'{ref}' names no layer; {suggestion(ref, known, 'names')} "
                                     f"{_READABLE[scope.block is None]}", key)
            elif target == layer.position:
                scope.problem(layer, f"the layer reads itself ('{ref}'); name a layer above it.",
                              key)
            elif target > layer.position:
                cycle = _path_back(reads, target, layer.position)
                line = scope.report.line(layers[target].path)
                if cycle:
                    names = " → ".join(f"'{layers[i].name}'" for i in [layer.position] + cycle)
                    scope.problem(layer, f"'{ref}' (layer {target}, line {line}) reads this "
                                         f"layer back: the cycle {names} can never run. Layers "
                                         f"run in file order; break the cycle.", key)
                else:
                    scope.problem(layer, f"'{ref}' is defined later (layer {target}, line "
                                         f"{line}); layers run in file order, so a layer can "
                                         f"read only layers above it. Move '{ref}' above this "
                                         f"layer.", key)


def _reads(layer: LayerDef, position: dict[str, int]) -> list[int]:
    if layer.refs is None:
        return [layer.position - 1] if layer.position else []
    return [position[r] for r in layer.refs if r in position]


def _path_back(reads: list[list[int]], start: int, goal: int) -> list[int] | None:
    """The layers from ``start`` that lead back to ``goal`` through what each reads, if any."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((n, path + [n]) for n in reads[node])
    return None


