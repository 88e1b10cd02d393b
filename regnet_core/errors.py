"""Error types shared across the core; every one is a ValueError that says what was expected and what came."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: says what was expected and what was found."""


class FormatError(CheckpointError):
    """A checkpoint whose format cannot be told, or is not the one asked for: lists what was seen."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint refused because reading it could run code or reach outside its directory; nothing was run."""


class OutputError(ValueError):
    """An output that cannot be written where it was asked for."""


class OutputExistsError(OutputError):
    """The destination exists and replacing it was not asked for (--overwrite / overwrite=True)."""
