"""Spec files: TOML read with line numbers, checked, blocks expanded; and written back."""

from .emit import dumps, emit_toml
from .model import LayerEntry, ParsedSpec
from .parse import parse_spec, read_spec

__all__ = ["LayerEntry", "ParsedSpec", "dumps", "emit_toml", "parse_spec", "read_spec"]
