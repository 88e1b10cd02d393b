"""Native Keras export: a ``.weights.h5`` file (Keras save_weights) that also carries the RegNet config.

The interchange format is the transformers checkpoint directory (``save_pretrained``); this
file is for Keras users who want ``load_weights``. Loading is strict: a file of another
model raises ValueError naming what differs, never a partial load.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import h5py

from regnet_core.backends import config_has_head
from regnet_core.config import RegNetConfig
from regnet_core.io import atomic_write
from regnet_core.specs import build_model_spec

from .modeling import RegNetForImageClassification, RegNetModel, RegNetPreTrainedModel

CONFIG_ATTRIBUTE = "regnet_config"
SUFFIX = ".weights.h5"  # Keras refuses other names for save_weights / load_weights


def save_native(model: RegNetPreTrainedModel, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights with Keras save_weights, plus its config as the root attribute ``regnet_config``."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise ValueError(f"a Keras weights file must end with {SUFFIX}, got {path}")
    config = model.config.copy(architectures=[type(model).__name__])

    def write(temporary: Path) -> None:
        model.save_weights(temporary, overwrite=True)
        with h5py.File(temporary, "r+") as handle:
            handle.attrs[CONFIG_ATTRIBUTE] = config.to_json_string()

    atomic_write(path, write, suffix=SUFFIX)
    return path


def read_native_config(path: str | os.PathLike) -> RegNetConfig | None:
    """The config stored in a ``.weights.h5`` file, or None when it carries none."""
    with _open(path) as handle:
        text = handle.attrs.get(CONFIG_ATTRIBUTE)
    if text is None:
        return None
    return RegNetConfig.from_dict(json.loads(text if isinstance(text, str) else text.decode()))


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"expected a Keras {SUFFIX} file, got {path} ({'a directory' if path.exists() else 'no such path'})"
        )
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not an HDF5 (Keras {SUFFIX}) file: {error}") from None


def _file_shapes(path: str | os.PathLike) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    with _open(path) as handle:
        handle.visititems(lambda _, item: shapes.append(tuple(item.shape)) if isinstance(item, h5py.Dataset) else None)
    return shapes


def _config_differences(expected: RegNetConfig, found: RegNetConfig) -> list[str]:
    """Fields that change the network between two configs (labels' names and architectures do not)."""
    ignored = {"id2label", "label2id", "architectures"}
    a, b = expected.to_dict(), found.to_dict()
    fields = sorted((set(a) | set(b)) - ignored)
    differences = [
        f"{field}: expected {a.get(field)!r}, file has {b.get(field)!r}"
        for field in fields
        if a.get(field) != b.get(field)
    ]
    if expected.num_labels != found.num_labels:
        differences.append(f"num_labels: expected {expected.num_labels}, file has {found.num_labels}")
    return differences


def load_native(
    config: RegNetConfig | None, path: str | os.PathLike, with_head: bool | None = None
) -> RegNetPreTrainedModel:
    """A model holding the weights of a ``.weights.h5`` file, checked strictly against ``config``.

    ``config`` may be None when the file carries one (files written by ``save_native`` do);
    ``with_head=None`` follows the architecture the file's (or the given) config names.
    """
    stored = read_native_config(path)
    if with_head is None:
        known = stored if stored is not None else config
        with_head = config_has_head(known) if known is not None else True
    if config is None:
        if stored is None:
            raise ValueError(f"{path} carries no {CONFIG_ATTRIBUTE!r} attribute; pass the model's config")
        config = stored
    elif stored is not None:
        differences = _config_differences(config, stored)
        if differences and build_model_spec(config) != build_model_spec(stored):
            raise ValueError(f"{path} holds another RegNet: " + "; ".join(differences))
    if stored is not None and stored.architectures and config_has_head(stored) != with_head:
        raise ValueError(
            f"{path} holds a {stored.architectures[0]}, expected "
            f"{'RegNetForImageClassification' if with_head else 'RegNetModel'} (with_head={with_head})"
        )
    model = (RegNetForImageClassification if with_head else RegNetModel)(config, _skip_init=True)
    # Keras' load_weights fails on missing or mis-shaped variables but ignores extra entries,
    # so a deeper model's file would load partially: compare the whole inventory first.
    expected = Counter(tuple(int(d) for d in v.shape) for v in model.weights)
    found = Counter(_file_shapes(path))
    if expected != found:
        missing = sorted((expected - found).elements())
        extra = sorted((found - expected).elements())
        raise ValueError(
            f"{path} does not hold the weights of this {type(model).__name__}: it has {sum(found.values())} arrays, "
            f"the model {sum(expected.values())} variables; shapes the file lacks: {missing[:12]}"
            f"{' ...' if len(missing) > 12 else ''}; shapes the model lacks: {extra[:12]}{' ...' if len(extra) > 12 else ''}"
        )
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path} does not fit this {type(model).__name__}: {error}") from None
    return model
