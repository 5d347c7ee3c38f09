"""One exception family for everything a user can get wrong.

Every message says where (file, line, layer, key), what is wrong with the numbers, and how to fix
it, in one paragraph.  The CLI prints ``str(error)`` and exits non-zero; it never shows a
traceback for a ``DeclcnnError``.
"""

from __future__ import annotations

from dataclasses import dataclass


class DeclcnnError(Exception):
    """Base of every error declcnn raises on bad input."""


class ShapeError(DeclcnnError, ValueError):
    """An array or argument does not fit an op: the configuration, the expectation, the fact."""


class DataError(DeclcnnError):
    """A data set cannot be found or read."""


class CheckpointError(DeclcnnError):
    """A checkpoint is corrupt, truncated, foreign, or does not fit the spec."""


class DeclcnnWarning(UserWarning):
    """Something is probably not what the user meant, but work can go on (the CLI prints it
    as one ``warning:`` paragraph)."""


class TrainingError(DeclcnnError):
    """Training had to stop (a NaN or infinite loss, say)."""


@dataclass(frozen=True)
class Problem:
    """One mistake in a spec.

    ``layer`` is ``(index, name)`` of the layer (index from 0, as in the file's ``[[layers]]``), or
    None for a problem outside the layers.  ``section`` names a table such as ``training`` or
    ``blocks.down`` where ``layer`` does not apply.
    """

    message: str
    file: str | None = None
    line: int | None = None
    layer: tuple[int, str] | None = None
    key: str | None = None
    section: str | None = None

    def __str__(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.layer is not None:
            parts.append(f"layer {self.layer[0]} '{self.layer[1]}'")
        elif self.section is not None:
            parts.append(f"[{self.section}]")
        if self.key is not None:
            parts.append(f"key '{self.key}'")
        return " ".join(parts) + ": " + self.message


class SpecError(DeclcnnError):
    """A spec has one or more problems; ``problems`` lists them all, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)
