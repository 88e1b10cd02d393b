"""Writes that never leave half a file behind: write beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
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


class OutputExistsError(ValueError):
    """The destination exists and replacing it was not asked for."""


_TEMPORARY_MARK = ".tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(target: Path) -> list[Path]:
    """Remove temporaries that an interrupted write to ``target`` left beside it (their process is gone)."""
    removed = []
    for candidate in target.parent.glob(f".{target.name}{_TEMPORARY_MARK}*"):
        try:
            pid = int(candidate.name[len(f".{target.name}{_TEMPORARY_MARK}") :].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path for a file or directory; move it onto ``target`` as a whole on success.

    An existing ``target`` raises OutputExistsError unless ``overwrite``; then it is replaced
    only after the new one is complete. Temporaries of earlier interrupted runs are cleaned.
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target)
    temporary = target.parent / f".{target.name}{_TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written for {target}")
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}{_TEMPORARY_MARK}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(temporary, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()
