"""A one-line progress bar on stderr: bytes and tensors done, throughput; silent when stderr is no terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _gigabytes(value: int) -> str:
    return f"{value / 1e9:.2f}" if value >= 1e7 else f"{value / 1e9:.4f}"


class ProgressBar:
    """Call it with (tensor name, bytes) per tensor; ``close()`` ends the line."""

    def __init__(
        self,
        total_bytes: int,
        total_tensors: int,
        label: str = "writing",
        enabled: bool | None = None,
        stream: TextIO | None = None,
        interval: float = 0.1,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.total_bytes, self.total_tensors, self.label = total_bytes, total_tensors, label
        self.done_bytes = self.done_tensors = 0
        self.started = time.perf_counter()
        self._last = 0.0
        self.interval = interval

    def __call__(self, name: str, nbytes: int) -> None:
        self.done_bytes += nbytes
        self.done_tensors += 1
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.done_tensors == self.total_tensors):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = self.done_bytes / self.total_bytes if self.total_bytes else 1.0
        filled = int(24 * fraction)
        elapsed = max(now - self.started, 1e-9)
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (24 - filled)}] {fraction:6.1%} "
            f"{_gigabytes(self.done_bytes)}/{_gigabytes(self.total_bytes)} GB  "
            f"{self.done_tensors}/{self.total_tensors} tensors  {self.done_bytes / elapsed / 1e9:.2f} GB/s"
        )
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        """Finish the line (only when something was drawn)."""
        if self.enabled and self.done_tensors:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
