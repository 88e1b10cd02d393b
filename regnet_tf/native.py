"""Native Keras export: a ``.weights.h5`` file (Keras save_weights) that also carries the RegNet config.

The interchange format is the transformers checkpoint directory (``save_pretrained``); this
file is for Keras users who want ``load_weights``. Saving goes through Keras itself;
loading reads the file with the core reader (regnet_core.formats.keras_native, h5py only)
and is strict: a file of another model raises ValueError naming every missing,
unexpected and mis-shaped variable at once, never a partial load.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from regnet_core.backends import config_has_head
from regnet_core.config import RegNetConfig
from regnet_core.formats.keras_native import CLASSIFIER, CONFIG_ATTRIBUTE, SUFFIX, TRUNK, read_native
from regnet_core.formats.keras_native import read_native_config as _read_native_config
from regnet_core.io import atomic_write
from regnet_core.specs import build_model_spec
from regnet_core.tensors import check_finite
from regnet_core.weights import CheckpointMismatchError

from .modeling import RegNetForImageClassification, RegNetModel, RegNetPreTrainedModel
from .weights import check_native, model_variables

__all__ = ["CONFIG_ATTRIBUTE", "SUFFIX", "load_native", "read_native_config", "save_native"]


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
    return _read_native_config(path)


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
    tensors, stored, _ = read_native(path)
    if with_head is None:
        known = stored if stored is not None else config
        # Without a config naming the class, the file's own paths tell (a trunk's have no "regnet/" layer).
        in_file = any(name.startswith((f"{TRUNK}/", f"{CLASSIFIER}/")) for name in tensors)
        with_head = config_has_head(known) if known is not None else in_file
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
    name = type(model).__name__
    try:
        check_native(tensors, model.spec, with_head)
    except CheckpointMismatchError as error:
        what = "hold the weights of" if error.missing or error.unexpected else "fit"
        error.args = (f"{path} does not {what} this {name}: {str(error).split(': ', 1)[1]}",)
        raise error from None
    variables = model_variables(model)
    for native_path, tensor in tensors.items():  # one tensor in memory at a time
        variable = variables[native_path]
        values = np.asarray(tensor.load(), dtype=variable.dtype)
        check_finite(f"{native_path} in {path}", values)
        variable.assign(values)
    return model
