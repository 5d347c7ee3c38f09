"""Line numbers for a spec's tables and keys, which ``tomllib`` does not give.

``locate(text)`` scans TOML that ``tomllib`` has already accepted and maps each table and key to
the line it starts on.  A path is the key path with array-of-tables elements numbered, as the
parsed document is indexed: ``("layers", 2, "kernel")``, ``("blocks", "down", "layers", 0)``,
``("blocks", "down", "params", "ch")`` for a key of an inline table.  It follows the TOML grammar
only as far as finding where a value ends: strings (all four kinds), arrays, inline tables,
comments; it never interprets values.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_ESCAPE = re.compile(r'\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)')
_SIMPLE_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def _unescape(match: re.Match) -> str:
    code = match.group(1)
    return chr(int(code[1:], 16)) if len(code) > 1 else _SIMPLE_ESCAPES.get(code, code)


_BARE_KEY = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.array_counts: dict[Path, int] = {}

    # -- characters -------------------------------------------------------------------------
    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, tabs, comments and (when allowed) line breaks."""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.advance()
            elif ch == "#":
                end = self.text.find("\n", self.pos)
                self.advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    # -- keys and strings -------------------------------------------------------------------
    def string(self) -> str:
        """Read one string of any kind; return its text (a one-line basic string's escapes
        decoded, as a quoted key needs)."""
        quote = self.peek()
        if self.peek(3) == quote * 3:
            end = self.text.find(quote * 3, self.pos + 3)
            if quote == '"':
                while self._escaped(end):
                    end = self.text.find(quote * 3, end + 1)
            # A multi-line string may end in up to two extra quotes: """a"""""
            while self.text[end + 3:end + 4] == quote:
                end += 1
            body = self.text[self.pos + 3:end]
            self.advance(end + 3 - self.pos)
            return body
        end = self.text.find(quote, self.pos + 1)
        if quote == '"':
            while self._escaped(end):
                end = self.text.find(quote, end + 1)
        body = self.text[self.pos + 1:end]
        self.advance(end + 1 - self.pos)
        return _ESCAPE.sub(_unescape, body) if quote == '"' else body

    def _escaped(self, index: int) -> bool:
        backslashes = 0
        while self.text[index - 1 - backslashes] == "\\":
            backslashes += 1
        return backslashes % 2 == 1

    def key(self) -> list[str]:
        """A dotted key: ``a.b``, ``"a b".c``, ``'x'``."""
        parts = []
        while True:
            self.skip_blank(newlines=False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE_KEY:
                    self.pos += 1
                parts.append(self.text[start:self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return parts
            self.advance()

    # -- values -----------------------------------------------------------------------------
    def value(self, path: Path) -> None:
        """Skip one value, recording the lines of the keys and elements inside it."""
        ch = self.peek()
        if ch in ('"', "'"):
            self.string()
        elif ch == "[":
            self.advance()
            index = 0
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "]":
                    self.advance()
                    return
                self.lines[path + (index,)] = self.line
                self.value(path + (index,))
                index += 1
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.advance()
        elif ch == "{":
            self.advance()
            while True:
                self.skip_blank(newlines=False)
                if self.peek() == "}":
                    self.advance()
                    return
                self.key_value(path)
                self.skip_blank(newlines=False)
                if self.peek() == ",":
                    self.advance()
        else:  # number, boolean or date: runs to a delimiter
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}#\n":
                self.pos += 1

    def key_value(self, table: Path) -> None:
        line = self.line
        keys = self.key()
        for depth in range(1, len(keys) + 1):
            self.lines.setdefault(table + tuple(keys[:depth]), line)
        self.advance()  # '='
        self.skip_blank(newlines=False)
        self.value(table + tuple(keys))

    # -- tables -----------------------------------------------------------------------------
    def header(self) -> Path:
        """``[a.b]`` or ``[[a.b]]``: the table's path, arrays of tables numbered."""
        line = self.line
        is_array = self.peek(2) == "[["
        self.advance(2 if is_array else 1)
        keys = self.key()
        self.advance(2 if is_array else 1)
        path: Path = ()
        for depth, key in enumerate(keys, start=1):
            path += (key,)
            self.lines.setdefault(path, line)
            if is_array and depth == len(keys):
                self.array_counts[path] = self.array_counts.get(path, 0) + 1
            if path in self.array_counts:
                path += (self.array_counts[path] - 1,)
            self.lines.setdefault(path, line)
        return path

    def document(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)


def locate(text: str) -> dict[Path, int]:
    """Map every table, key and array element of valid TOML ``text`` to its 1-based line."""
    return _Scanner(text).document()
