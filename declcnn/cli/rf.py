"""declcnn rf commands (being written)."""

from . import main  # noqa: F401
