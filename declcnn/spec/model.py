"""What ``spec/`` hands to ``graph/``: the file's layers, blocks expanded, names resolved.

``spec/`` knows TOML, the file's structure, blocks, names and references; it does not know what a
``conv2d`` is.  ``graph/`` checks each layer's keys against its type and infers shapes, adding
its problems to ``ParsedSpec.problems`` so one run reports every mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LayerEntry:
    """One layer after block expansion.

    ``keys`` are the layer's own keys as written (TOML values), without ``name``, ``type``,
    ``input`` and ``inputs``; ``inputs`` are resolved to layer names or ``"input"`` (the previous
    layer when the file names none).  ``line`` is the line of its ``[[layers]]`` header (for a
    layer made by a block, the line of the block's layer; ``origin`` then says which use made
    it), ``key_lines`` the line of each key.
    """

    index: int
    name: str
    type: str
    keys: dict[str, Any]
    inputs: list[str]
    line: int | None = None
    key_lines: dict[str, int] = field(default_factory=dict)
    origin: str | None = None


@dataclass
class ParsedSpec:
    """A spec file read and structurally checked.

    ``problems`` holds every structural mistake found; the layers that could be read are still
    listed so that ``graph/`` can report its own problems in the same run.  ``document`` is the
    TOML as read (for the round trip spec → graph → TOML → spec).
    """

    file: str | None
    name: str
    input_shape: tuple[int, ...]
    layers: list[LayerEntry]
    training: dict[str, Any] = field(default_factory=dict)
    problems: list = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)
    training_lines: dict[str, int] = field(default_factory=dict)
