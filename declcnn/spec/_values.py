"""Small helpers shared by the spec checks: TOML value kinds, closest names, limits."""

from __future__ import annotations

import difflib
import re

INT64_MAX = 2**63 - 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PARAM_REFERENCE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def is_int(value) -> bool:
    """A TOML integer: Python's ``bool`` is an ``int`` but TOML's ``true`` is not a number."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return is_int(value) or isinstance(value, float)


def kind(value) -> str:
    """The TOML type of a value, as a user would call it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def described(value) -> str:
    """``"64" (a string)``: a value and its TOML type, for "got ..." in messages."""
    article = "an" if kind(value)[0] in "aeiou" else "a"
    return f"{show(value)} ({article} {kind(value)})"


def show(value) -> str:
    """A value as it would be written in TOML, cut short when long (for messages)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        text = _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    elif isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(word: str, candidates) -> str | None:
    """The candidate most like ``word`` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return found[0] if found else None


def suggestion(word: str, candidates, what: str = "") -> str:
    """``did you mean 'x'?`` or, when nothing is close, the list of valid choices."""
    candidates = list(candidates)
    best = closest(word, candidates)
    if best is not None:
        return f"did you mean '{best}'?"
    if not candidates:
        return f"there are no {what or 'choices'}."
    listed = ", ".join(f"'{c}'" for c in candidates[:12])
    more = f" and {len(candidates) - 12} more" if len(candidates) > 12 else ""
    return f"valid {what or 'choices'}: {listed}{more}."


def did_you_mean(word: str, candidates) -> str:
    """``"Did you mean 'x'? "`` when a candidate is close, else nothing (for messages that go
    on to list the valid choices themselves)."""
    best = closest(word, candidates)
    return f"Did you mean '{best}'? " if best is not None else ""


def parameter_name(value) -> str | None:
    """``"$ch"`` → ``"ch"``: the block parameter a whole-string value stands for."""
    if isinstance(value, str):
        match = PARAM_REFERENCE.fullmatch(value)
        if match:
            return match.group(1)
    return None


def bad_name_character(name: str) -> str | None:
    """The first character a layer or block name may not contain, or None."""
    for ch in name:
        if not NAME_PATTERN.fullmatch(ch):
            return ch
    return None
