"""Every public RegNet checkpoint format: the registry and format detection.

Each format lives in its own module as a ``FORMAT`` object (see ``base.Format``): a name
table to the neutral names, a layout, and the container its tensors come in.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import FormatError, UnsafeCheckpointError
from .base import ForeignCheckpoint, Format, WriteRequest

# --from / --to name -> module; the order is the order `regnet convert --help` lists them.
_MODULES = {
    "hf": "hf",
    "hf-tf": "hf_tf",
    "hf-flax": "hf_flax",
    "keras": "keras_native",
    "flax": "flax_native",
    "timm": "timm",
    "torchvision": "torchvision",
    "pycls": "pycls",
    "vissl": "vissl",
    "keras-applications": "keras_applications",
}
FORMAT_NAMES = tuple(_MODULES)
_ALIASES = {"dir": "hf", "transformers": "hf", "canonical": "hf", "tf": "hf-tf", "keras-apps": "keras-applications"}
# A directory that holds one transformers model in several frameworks' files is read from
# the first of these it has (they hold the same weights).
_TRANSFORMERS_PREFERENCE = ("hf", "hf-tf", "hf-flax")

__all__ = ["FORMAT_NAMES", "ForeignCheckpoint", "Format", "WriteRequest", "detect_format", "get_format"]


def get_format(name: str) -> Format:
    """The format called ``name`` (``--from`` / ``--to`` spelling); unknown names raise FormatError."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _MODULES:
        raise FormatError(f"unknown checkpoint format {name!r}; expected one of {', '.join(FORMAT_NAMES)}")
    module = importlib.import_module(f".{_MODULES[key]}", __name__)
    return module.FORMAT


def all_formats() -> list[Format]:
    """Every format, in FORMAT_NAMES order."""
    return [get_format(name) for name in FORMAT_NAMES]


def _seen(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        return (
            f"a directory holding {', '.join(names[:12]) + (' ...' if len(names) > 12 else '') if names else 'nothing'}"
        )
    return f"a file named {path.name}"


def detect_format(path: str | Path) -> tuple[Format, list[str]]:
    """(the format of a checkpoint path, notes on how it was told) from file names, then tensor names.

    Raises FormatError listing what was seen when no format, or more than one, fits.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"no checkpoint at {path}: no such file or directory")
    candidates = [fmt for fmt in all_formats() if fmt.can_read and fmt.claims(path)]
    if not candidates:
        raise FormatError(
            f"cannot tell the format of {path}: saw {_seen(path)}; expected a checkpoint directory or a weights file "
            f"of one of {', '.join(FORMAT_NAMES)} (name it with --from FORMAT)"
        )
    if path.is_dir() and len(candidates) > 1 and all(f.name in _TRANSFORMERS_PREFERENCE for f in candidates):
        chosen = next(f for name in _TRANSFORMERS_PREFERENCE for f in candidates if f.name == name)
        others = ", ".join(f.name for f in candidates if f is not chosen)
        return chosen, [
            f"{path} holds the model for several frameworks; reading the {chosen.name} files ({others} also there)"
        ]
    if len(candidates) == 1 and candidates[0].name in _TRANSFORMERS_PREFERENCE and path.is_dir():
        return candidates[0], []
    scores: dict[str, float] = {}
    samples: list[str] = []
    errors: dict[str, str] = {}
    raised: list[Exception] = []
    names_cache: dict[str, list[str]] = {}
    for fmt in candidates:
        try:
            names = fmt.peek_names(path)
        except (ValueError, NotImplementedError) as error:
            errors[fmt.name] = " ".join(str(error).split())
            raised.append(error)
            continue
        names_cache[fmt.name] = names
        samples = samples or names[:6]
        scores[fmt.name] = fmt.recognises(names)
    full = [name for name, score in scores.items() if score >= 0.999]
    if len(full) == 1:
        return get_format(full[0]), []
    seen = f"tensor names such as {', '.join(samples)}" if samples else _seen(path)
    if len(full) > 1:
        raise FormatError(
            f"{path} is ambiguous: its tensor names fit {', '.join(full)} equally; saw {seen}; name one with --from"
        )
    partial = ", ".join(
        f"{name} {score:.0%}" for name, score in sorted(scores.items(), key=lambda kv: -kv[1]) if score > 0
    )
    detail = f" (share of names each format knows: {partial})" if partial else ""
    unsafe = [error for error in raised if isinstance(error, UnsafeCheckpointError)]
    if unsafe and not scores:
        raise unsafe[0]  # refused for safety (a pickle asking for code, a link out): say that, not "cannot tell"
    by_message: dict[str, list[str]] = {}
    for name, message in errors.items():
        by_message.setdefault(message, []).append(name)
    failures = "; ".join(f"{', '.join(names)}: {message}" for message, names in by_message.items())
    raise FormatError(
        f"cannot tell the format of {path}: saw {seen}{detail}"
        + (f"; could not read it as {failures}" if failures else "")
        + f"; expected one of {', '.join(FORMAT_NAMES)} (name it with --from FORMAT)"
    )
