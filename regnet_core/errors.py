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


class ConfigError(ValueError):
    """A config (or a keyword meant as a config field) that describes no RegNet: names the field, what was expected and what came."""

    # Exception's own constructor: TensorFlow's autograph then re-raises the error with its type from
    # inside tf.function (it keeps only exception types it knows to take a single message).
    __init__ = Exception.__init__


class ModelTooLargeError(ConfigError):
    """A model whose weights would not fit in the available memory; refused before anything is allocated."""


class PixelValuesError(ValueError):
    """Pixel values a model cannot take (rank, layout, channels, dtype, empty): says what was expected and what came."""

    __init__ = Exception.__init__  # kept by tf.function's autograph, as ConfigError's


class LabelsError(ValueError):
    """Labels a loss cannot take (shape, class index out of range, no classifier): says what was expected and what came."""

    __init__ = Exception.__init__  # kept by tf.function's autograph, as ConfigError's


class ConfigTypeError(ConfigError, TypeError):
    """Something other than a RegNetConfig where a model needs one (a TypeError too, as Python's convention has it)."""
