"""Write a spec back as TOML: ``emit_toml`` for a ``ParsedSpec`` or a ``Graph``, ``dumps`` for any
document of the value types a spec uses.

A small writer of our own (the standard library reads TOML but does not write it): basic strings
with escapes, integers, floats whose ``repr`` round-trips (``inf``, ``-inf``, ``nan``), booleans,
dates, arrays and inline tables; a top-level table becomes a ``[table]`` header and an array of
tables ``[[array]]``.  ``tomllib.loads(dumps(d)) == d`` for such documents.
"""

from __future__ import annotations

import datetime
import math
import numbers
import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:  # TOML forbids raw control characters
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _is_table_array(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(table: dict, lines: list[str]) -> None:
    """``key = value`` lines of one table; nested tables inline, since a layer's are small."""
    for key, value in table.items():
        if value is not None:  # TOML has no null: a missing key takes the layer's default
            lines.append(f"{_key(key)} = {_value(value)}")


def dumps(document: dict) -> str:
    """A document (top-level tables, arrays of tables, values) as TOML text."""
    lines: list[str] = []
    tables = []
    for key, value in document.items():
        if isinstance(value, dict) or _is_table_array(value):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables:
        if isinstance(value, dict):
            scalars = {k: v for k, v in value.items() if not isinstance(v, dict)}
            if lines:
                lines.append("")
            lines.append(f"[{_key(key)}]")
            _table(scalars, lines)
            for sub, table in value.items():
                if isinstance(table, dict):
                    lines.append("")
                    lines.append(f"[{_key(key)}.{_key(sub)}]")
                    _table(table, lines)
        else:
            for table in value:
                if lines:
                    lines.append("")
                lines.append(f"[[{_key(key)}]]")
                _table(table, lines)
    return "\n".join(lines) + "\n"


INFERRED_KEYS = ("in_channels", "in_features", "num_features")
"""Config keys a graph fills in from the incoming shape; a spec does not write them."""


def _layers(items) -> list[dict]:
    """(name, type, inputs, keys) in order → ``[[layers]]`` tables, naming inputs only where a
    layer does not simply read the one before it."""
    tables = []
    previous = "input"
    for name, layer_type, inputs, keys in items:
        table = {"name": name, "type": layer_type}
        if len(inputs) > 1:
            table["inputs"] = list(inputs)
        elif list(inputs) != [previous]:
            table["input"] = inputs[0]
        table.update(keys)
        tables.append(table)
        previous = name
    return tables


def emit_toml(spec) -> str:
    """A ``ParsedSpec`` or a ``Graph`` as a spec file, blocks expanded.

    A graph's layers are written with their normalised ``config`` (pairs as arrays, conv padding
    as ``[[top, bottom], [left, right]]``, without the ``INFERRED_KEYS``); a parsed spec's with
    the keys as written.  Only the
    ``[training]`` keys that differ from their defaults are written.
    """
    from .training import DEFAULTS

    if hasattr(spec, "nodes"):  # a Graph; spec/ does not import graph/
        items = [(n.name, n.type, n.inputs,
                  {k: v for k, v in n.config.items() if k not in INFERRED_KEYS})
                 for n in spec.nodes]
        shape = spec.input_shape
    else:
        items = [(e.name, e.type, e.inputs, e.keys) for e in spec.layers]
        shape = spec.input_shape
    document = {"network": {"name": spec.name, "input": list(shape)}, "layers": _layers(items)}
    training = {k: v for k, v in (spec.training or {}).items() if DEFAULTS.get(k) != v}
    if training:
        document["training"] = training
    return dumps(document)
