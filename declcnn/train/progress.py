"""One progress bar per epoch: loss, accuracy, images/s and time left.

On a terminal the bar redraws one line in place; otherwise (a log file, a pipe) it prints a plain
line about every tenth of the epoch, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """``75`` → ``"1:15"``, ``3725`` → ``"1:02:05"``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Progress through the ``total`` steps of one epoch, from step ``start`` (after a resume)."""

    WIDTH = 24

    def __init__(self, label: str, total: int, start: int = 0, stream=None, enabled=True):
        self.label, self.total, self.done = label, total, start
        self.first = start
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.terminal = self.stream.isatty()
        self.started = time.perf_counter()
        self.images = 0
        self.next_plain = start + max(1, total // 10)

    def update(self, images: int, loss: float, accuracy: float) -> None:
        self.done += 1
        self.images += images
        if not self.enabled:
            return
        if not self.terminal and self.done < min(self.next_plain, self.total):
            return
        self.next_plain = self.done + max(1, self.total // 10)
        elapsed = time.perf_counter() - self.started
        rate = self.images / elapsed if elapsed > 0 else 0.0
        per_step = elapsed / (self.done - self.first)
        left = duration(per_step * (self.total - self.done))
        stats = (f"{self.done}/{self.total} loss {loss:.4f} acc {accuracy:.4f} "
                 f"{rate:,.0f} img/s {left} left")
        if self.terminal:
            filled = self.WIDTH * self.done // self.total
            bar = "█" * filled + "·" * (self.WIDTH - filled)
            self.stream.write(f"\r{self.label} {bar} {stats}\033[K")
        else:
            self.stream.write(f"{self.label} {stats}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.terminal:
            self.stream.write("\r\033[K")
            self.stream.flush()
