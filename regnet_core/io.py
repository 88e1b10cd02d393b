"""Writes that never leave half a file behind: write beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.replace(temporary_path, target)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write text to ``target`` atomically."""
    with atomic_path(target) as temporary:
        temporary.write_text(text)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(temporary_path)`` and move the result onto ``target`` only if it succeeds."""
    with atomic_path(target, suffix) as temporary:
        write(temporary)
