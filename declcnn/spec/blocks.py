"""Blocks: parametrised groups of layers, defined once and used by name, possibly repeated.

A definition ``[blocks.NAME]`` declares ``params = {ch = 64}`` (defaults; a default fixes the
argument's TOML type, an integer is accepted for a float), ``required = {ch = "int"}`` (no
default; types "int", "float", "bool", "string", "array", "table" or "any") and its layers
``[[blocks.NAME.layers]]``.  A value ``"$ch"`` anywhere in those layers is replaced by the
argument, keeping its type; ``"$input"`` is the block's input.

Expansion names a block's layers ``USE.LAYER`` (``USE.K.LAYER`` with ``repeat``); repetition
``K + 1`` reads repetition ``K``; the use's name stands for its last layer.  A layer name given
as an argument (``args = {skip = "enc4"}``) is resolved where the use is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ._values import (
    bad_name_character,
    described,
    did_you_mean,
    is_int,
    is_number,
    kind,
    parameter_name,
    show,
    suggestion,
)
from .layers import (
    INPUT,
    LAYER_KEYS,
    LayerDef,
    Report,
    Scope,
    check_repeat,
    read_layer_list,
)
from .locate import Path
from .model import LayerEntry

BLOCK_KEYS = ("params", "required", "layers")
MAX_LAYERS = 100_000
# Layer tables visited while expanding, made into layers or not: nested repeats over blocks
# that expand to nothing (or to little) never reach MAX_LAYERS, so they are capped here.
MAX_EXPANSIONS = 3 * MAX_LAYERS
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_TYPE_TESTS = {
    "int": is_int,
    "float": is_number,
    "bool": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "table": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}
_TYPE_OF_DEFAULT = {"boolean": "bool", "integer": "int", "float": "float", "string": "string",
                    "array": "array", "table": "table"}


@dataclass
class Block:
    name: str
    path: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    required: dict[str, str] = field(default_factory=dict)
    layers: list[LayerDef] = field(default_factory=list)
    ok: bool = True

    @property
    def params(self) -> list[str]:
        return list(self.defaults) + list(self.required)

    def param_type(self, param: str) -> str:
        if param in self.required:
            return self.required[param]
        return _TYPE_OF_DEFAULT.get(kind(self.defaults[param]), "any")

    def check_arg(self, param: str, value) -> str | None:
        expected = self.param_type(param)
        if _TYPE_TESTS[expected](value):
            return None
        like = f" (like its default {show(self.defaults[param])})" if param in self.defaults \
            else ""
        return (f"argument '{param}' of block '{self.name}' must be of type {expected}{like}; got "
                f"{described(value)}.")

    def check_args(self, args: dict, in_block: bool) -> list[str]:
        """Missing, unknown and wrongly typed arguments of one use (``$x`` values wait)."""
        messages = []
        for param in self.required:
            if param not in args:
                messages.append(f"block '{self.name}' needs argument '{param}' "
                                f"({self.required[param]}); add it, e.g. args = {{{param} = ...}}.")
        for param, value in args.items():
            if param not in self.defaults and param not in self.required:
                hint = suggestion(param, self.params, "parameters")
                messages.append(f"block '{self.name}' has no parameter '{param}'; {hint}")
            elif not (in_block and parameter_name(value)):
                message = self.check_arg(param, value)
                if message:
                    messages.append(message)
        return messages


def read_blocks(table, report: Report) -> dict[str, Block]:
    """Every ``[blocks.NAME]``: its parameters, then its layers (which may use other blocks)."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        report.add(f"must be tables [blocks.NAME]; got {described(table)}.",
                   ("blocks",), section="blocks")
        return {}
    blocks: dict[str, Block] = {}
    definitions = {}
    for name, definition in table.items():
        block = Block(name, ("blocks", name))
        section = f"blocks.{name}"
        if not isinstance(definition, dict):
            report.add(f"must be a table with params and [[blocks.{name}.layers]]; got "
                       f"{show(definition)}.", block.path, section=section)
            continue
        blocks[name] = block
        definitions[name] = definition
        bad = bad_name_character(name) if name else "''"
        if bad or name == INPUT:
            why = "is reserved" if name == INPUT else f"contains {bad!r}"
            report.add(f"the block name '{name}' {why}; block names may contain only letters, "
                       f"digits, '_' and '-'.", block.path, section=section)
            block.ok = False
        for key in definition:
            if key not in BLOCK_KEYS:
                report.add(f"unknown key. {did_you_mean(key, BLOCK_KEYS)}A block has "
                           f"params, required and layers.", block.path + (key,), key=key,
                           section=section)
        _read_params(block, definition, report)
    for name, definition in definitions.items():
        block = blocks[name]
        layers = definition.get("layers")
        if not isinstance(layers, list) or not layers:
            report.add(f"block '{name}' has no layers; add [[blocks.{name}.layers]] tables "
                       f"(got {show(layers) if layers is not None else 'none'}).", block.path,
                       key="layers", section=f"blocks.{name}")
            block.ok = False
            continue
        scope = Scope(report, block.path + ("layers",), name, set(block.params))
        block.layers = read_layer_list(layers, scope, blocks)
        if not all(layer.ok for layer in block.layers):
            block.ok = False  # its problems are reported once here, not at every use
    _check_recursion(blocks, report)
    return blocks


def _read_params(block: Block, definition: dict, report: Report) -> None:
    section = f"blocks.{block.name}"
    for key, store in (("params", block.defaults), ("required", block.required)):
        given = definition.get(key, {})
        if not isinstance(given, dict):
            example = "{ch = 64}" if key == "params" else '{ch = "int"}'
            report.add(f"must be a table, e.g. {key} = {example}; got {show(given)}.",
                       block.path + (key,), key=key, section=section)
            block.ok = False
            continue
        for param, value in given.items():
            where = block.path + (key, param)
            if not _PARAM_NAME.fullmatch(param) or param == INPUT:
                why = "is reserved for the block's input ($input)" if param == INPUT else \
                    "is not a valid parameter name (letters, digits and '_', not first a digit)"
                report.add(f"'{param}' {why}.", where, key=key, section=section)
                block.ok = False
            elif key == "required" and (not isinstance(value, str) or value not in _TYPE_TESTS):
                types = ", ".join(f'"{t}"' for t in _TYPE_TESTS)
                report.add(f"the type of required parameter '{param}' must be one of {types}; "
                           f"got {show(value)}.", where, key=key, section=section)
                block.ok = False
            elif param in block.defaults:
                report.add(f"'{param}' is both in params and in required; keep one.", where,
                           key=key, section=section)
                block.ok = False
            else:
                store[param] = value


def _check_recursion(blocks: dict[str, Block], report: Report) -> None:
    uses = {name: [layer.block for layer in block.layers if layer.block in blocks]
            for name, block in blocks.items()}
    reported: set[frozenset] = set()
    for start in blocks:
        stack = [(start, [start])]
        seen = set()
        while stack:
            name, chain = stack.pop()
            for used in uses[name]:
                if used == start:
                    blocks[start].ok = False
                    cycle = frozenset(chain)
                    if cycle not in reported:
                        reported.add(cycle)
                        loop = " → ".join(chain + [start])
                        report.add(f"block '{start}' uses itself ({loop}); blocks cannot be "
                                   f"recursive. Use repeat = N to stack a block.",
                                   blocks[start].path, key="layers", section=f"blocks.{start}")
                elif used not in seen:
                    seen.add(used)
                    stack.append((used, chain + [used]))


class _Name(str):
    """A layer name that came through an argument: it is resolved in ``context`` (the scope
    where it was written), or is already a global name when ``context`` is None."""

    context: _Context | None

    def __new__(cls, value: str, context: _Context | None):
        name = super().__new__(cls, value)
        name.context = context
        return name


@dataclass
class _Arg:
    value: Any
    line: int | None


@dataclass
class _Context:
    """One list of layers being expanded: the file's, or one repetition of one block use."""

    prefix: str
    block_input: str | None
    args: dict[str, _Arg]
    names: set[str]
    origin: str | None = None
    top: LayerDef | None = None  # the file's [[layers]] table being expanded
    resolved: dict[str, str] = field(default_factory=dict)


def _substitute(value, context: _Context):
    if isinstance(value, str):
        param = parameter_name(value)
        if param == INPUT and context.block_input is not None:
            return _Name(context.block_input, None)
        if param in context.args:
            return context.args[param].value
        return value
    if isinstance(value, list):
        return [_substitute(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, context) for k, v in value.items()}
    return value


def _tag(value, context: _Context):
    """Mark the strings of an argument written in ``context`` so names resolve there."""
    if isinstance(value, _Name):
        return value
    if isinstance(value, str):
        return _Name(value, context)
    if isinstance(value, list):
        return [_tag(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _tag(v, context) for k, v in value.items()}
    return value


def _plain(value):
    if isinstance(value, str):
        return str.__str__(value)  # a plain str, without the _Name tag
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Expansion:
    def __init__(self, blocks: dict[str, Block], report: Report):
        self.blocks = blocks
        self.report = report
        self.entries: list[LayerEntry] = []
        self.full = False
        self.visits = 0

    def problem(self, context: _Context, message: str, line: int | None, key: str) -> None:
        """A mistake found while expanding: blamed on the file's layer whose use led here."""
        top = context.top
        self.report.add(message, line=line, layer=(top.position, top.name), key=key)

    def run(self, layers: list[LayerDef], context: _Context) -> str:
        """Expand one list of layers; return the global name of its last layer."""
        previous = context.block_input or INPUT
        for layer in layers:
            if context.block_input is None:
                context.top = layer
            self.visits += 1
            if self.visits > MAX_EXPANSIONS and not self.full:
                self.full = True
                top = context.top
                self.problem(context, f"expanding the blocks visits more than "
                                      f"{MAX_EXPANSIONS:,} layer tables (nested repeats); lower "
                                      f"repeat.", self.report.line(top.path + ("repeat",)),
                             "repeat")
            if self.full:
                break
            inputs = self.inputs(layer, context, previous) if layer.ok else None
            if inputs is not None and not self.full:
                if layer.block is not None:
                    previous = self.use(layer, context, inputs[0])
                else:
                    previous = self.plain(layer, context, inputs)
            # A layer that could not be read passes its input on, so later layers still resolve.
            context.resolved[layer.name] = previous
        return previous

    def inputs(self, layer: LayerDef, context: _Context, previous: str) -> list[str] | None:
        if layer.refs is None:
            return [previous]
        key = "inputs" if "inputs" in layer.table else "input"
        names: list[str] = []
        for ref in layer.refs:
            param = parameter_name(ref)
            if param is None:
                names.append(INPUT if ref == INPUT else context.resolved[ref])
                continue
            if param == INPUT:
                names.append(context.block_input)
                continue
            arg = context.args[param]
            values = arg.value if key == "inputs" and isinstance(arg.value, list) else [arg.value]
            for value in values:
                name = self.resolve(value, context, arg, param, key)
                if name is None:
                    return None
                names.append(name)
        return names

    def resolve(self, value, context: _Context, arg: _Arg, param: str, key: str) -> str | None:
        """A layer name given through argument ``param``, resolved where it was written."""
        if not isinstance(value, str):
            self.problem(context, f"argument '{param}' is read as {key} by a layer of the block, "
                                  f"so it must be a layer name; got {show(_plain(value))}.",
                         arg.line, "args")
            return None
        where = value.context if isinstance(value, _Name) else None
        if where is None:
            return str.__str__(value)
        if value == INPUT:
            return INPUT
        if value in where.resolved:
            return where.resolved[value]
        if value in where.names:
            self.problem(context, f"argument '{param}' = '{value}' names a layer that is defined "
                                  f"after this use; a block can read only layers above it, so "
                                  f"move '{value}' up.", arg.line, "args")
        else:
            hint = suggestion(value, [INPUT, *where.resolved], "names")
            self.problem(context, f"argument '{param}' = '{value}' names no layer; {hint}",
                         arg.line, "args")
        return None

    def use(self, layer: LayerDef, context: _Context, source: str) -> str:
        block = self.blocks[layer.block]
        if not block.ok:
            return source
        line = self.report.line(layer.path)
        args = {p: _Arg(_tag(v, context), self.report.line(block.path + ("params", p)))
                for p, v in block.defaults.items()}
        for param, value in layer.table.get("args", {}).items():
            whole = parameter_name(value)
            if whole is not None and whole != INPUT:
                args[param] = context.args[whole]
                message = block.check_arg(param, _plain(args[param].value))
                if message:
                    self.problem(context, message, args[param].line, "args")
                    return source
            else:
                arg_line = self.report.line(layer.path + ("args", param))
                args[param] = _Arg(_tag(_substitute(value, context), context), arg_line)
        repeat = _plain(_substitute(layer.table.get("repeat", 1), context))
        message = check_repeat(repeat, in_block=False)
        if message:
            self.problem(context, message, line, "repeat")
            return source
        use_name = context.prefix + layer.name
        origin = f"block '{block.name}' used as '{use_name}' (line {line})"
        names = {b.name for b in block.layers}
        for k in range(repeat):
            if self.full:
                break
            prefix = f"{use_name}.{k}." if "repeat" in layer.table else f"{use_name}."
            child = _Context(prefix, source, args, names, origin, context.top)
            source = self.run(block.layers, child)
        return source

    def plain(self, layer: LayerDef, context: _Context, inputs: list[str]) -> str:
        if len(self.entries) >= MAX_LAYERS:
            self.full = True
            top = context.top
            self.problem(context, f"the network expands to more than {MAX_LAYERS} layers; lower "
                                  f"repeat.", self.report.line(top.path + ("repeat",)), "repeat")
            return inputs[0]
        keys, key_lines = {}, {}
        for key, value in layer.table.items():
            whole = parameter_name(value)
            if whole in context.args:  # the value was written where the argument was
                key_lines[key] = context.args[whole].line
            else:
                key_lines[key] = self.report.line(layer.path + (key,))
            if key not in LAYER_KEYS:
                keys[key] = _plain(_substitute(value, context))
        layer_type = _plain(_substitute(layer.table["type"], context))
        if not isinstance(layer_type, str) or not layer_type:
            param = parameter_name(layer.table["type"])
            self.problem(context, f"argument '{param}' is used as the type of layer "
                                  f"'{layer.name}', so it must name a layer type (a string); "
                                  f"got {show(layer_type)}.", context.args[param].line, "args")
            return inputs[0]
        name = context.prefix + layer.name
        self.entries.append(LayerEntry(context.top.position, name, layer_type, keys, inputs,
                                       self.report.line(layer.path), key_lines, context.origin))
        return name


def expand(layers: list[LayerDef], blocks: dict[str, Block], report: Report) -> list[LayerEntry]:
    """The file's layers with every block use replaced by its layers, inputs resolved."""
    top = _Context("", None, {}, {layer.name for layer in layers})
    expansion = _Expansion(blocks, report)
    expansion.run(layers, top)
    seen: dict[str, LayerEntry] = {}
    for entry in expansion.entries:
        if entry.name in seen:
            other = seen[entry.name]
            report.add(f"'{entry.name}' is also the name of a layer made earlier (line "
                       f"{other.line}); layer names must be unique, so rename one.",
                       line=entry.line, layer=(entry.index, entry.name), key="name")
        seen[entry.name] = entry
    return expansion.entries
