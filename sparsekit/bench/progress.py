"""A one-line progress bar on stderr for long sweeps, with no dependency.

It draws only when its stream is a terminal (so logs, pipes and CI stay clean) and never
inside a timed region: callers advance it between configurations.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """``Progress(total, enabled)``; ``step(label)`` after each finished item; ``close()`` at the end."""

    def __init__(self, total: int, enabled: bool = True, stream: Optional[TextIO] = None, width: int = 24):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.width, self.done = max(int(total), 1), width, 0
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()

    def step(self, label: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * min(self.done, self.total) // self.total
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (self.width + 60) + "\r")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
