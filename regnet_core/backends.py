"""The three backends behind one small interface, imported only when a command needs one.

Each backend package has a ``backend`` module with:

- ``FRAMEWORK`` ("pt", "tf", "flax") and ``LAYOUT`` ("NCHW" or "NHWC");
- ``build(config, with_head=True, seed=0)``: a freshly initialised model (framework RNG seeded);
- ``from_canonical(config, state, with_head=True)``: a model holding canonical numpy weights;
- ``to_canonical(model)``: its weights as canonical numpy arrays;
- ``run(model, pixel_values_nchw, output_hidden_states=True)``: a dict of numpy outputs
  (logits, last_hidden_state, pooler_output, hidden_states as a list), all in NCHW;
- ``gradients(model, pixel_values_nchw, labels)``: {"loss": float, "input": NCHW gradient,
  "params": {canonical name: gradient in canonical layout}} of the single-label
  cross-entropy with inference-mode BatchNorm;
- ``train_forward(model, pixel_values_nchw)``: the canonical state after one training-mode
  forward (BN running statistics updated as PyTorch does, unbiased variance);
- TF and Flax also: ``NATIVE_FORMAT`` ("keras" / "flax"), ``save_native(model, path)`` and
  ``load_native(config, path, with_head)`` for Keras ``.weights.h5`` and Flax msgpack files.

"model" is whatever the framework's users hold: an nn.Module, a keras.Model, or for Flax a
(module, variables) pair.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from .config import RegNetConfig
from .hub import looks_like_hub_id
from .specs import build_model_spec
from .weights import random_state, state_has_head  # noqa: F401 (state_has_head: part of this interface)
from .zoo import get_entry

FRAMEWORKS = ("pt", "tf", "flax")
_MODULES = {"pt": "regnet_pt.backend", "tf": "regnet_tf.backend", "flax": "regnet_flax.backend"}
_EXTRAS = {"pt": "torch", "tf": "tf", "flax": "flax"}
_ALIASES = {"torch": "pt", "pytorch": "pt", "tensorflow": "tf", "keras": "tf", "jax": "flax"}


class BackendUnavailableError(ImportError):
    """A framework that is not installed; the message names the extra to install."""


def framework_name(name: str) -> str:
    """Normalise a framework name ('torch' -> 'pt', ...); unknown names raise ValueError."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in FRAMEWORKS:
        raise ValueError(f"unknown framework {name!r}; expected one of {', '.join(FRAMEWORKS)}")
    return key


def get_backend(name: str) -> ModuleType:
    """Import a backend's adapter module; a missing framework raises BackendUnavailableError."""
    key = framework_name(name)
    try:
        return importlib.import_module(_MODULES[key])
    except ModuleNotFoundError as error:
        raise BackendUnavailableError(
            f"the {key} backend needs a framework that is not installed ({error}); "
            f"install it with: pip install 'regnet-trio[{_EXTRAS[key]}]' (from a checkout: "
            f"pip install -c constraints.txt -e '.[{_EXTRAS[key]}]')"
        ) from None
    except ImportError as error:  # installed but unusable (e.g. Keras bound to another backend)
        raise BackendUnavailableError(f"the {key} backend cannot be used: {error}") from None


TRUNK_CLASS, CLASSIFIER_CLASS = "RegNetModel", "RegNetForImageClassification"


def architecture_name(with_head: bool) -> str:
    """The class name recorded in config.json's ``architectures``."""
    return CLASSIFIER_CLASS if with_head else TRUNK_CLASS


def config_has_head(config: RegNetConfig) -> bool:
    """False when the config names the trunk class (RegNetModel) as its architecture."""
    return not (config.architectures and list(config.architectures) == [TRUNK_CLASS])


def resolve_checkpoint(ckpt: str, seed: int = 0) -> tuple[RegNetConfig, dict[str, np.ndarray], bool, str]:
    """(config, canonical state, with_head, description) for a checkpoint (any format, or a hub id) or a zoo name.

    A zoo name gives seeded random weights with randomised BN statistics and head.
    """
    if Path(ckpt).exists() or looks_like_hub_id(ckpt):
        from .convert import read_checkpoint

        checkpoint = read_checkpoint(ckpt)
        return checkpoint.config, checkpoint.canonical_state(), checkpoint.with_head, str(ckpt)
    entry = get_entry(ckpt)  # an unknown name raises UnknownModelError with suggestions
    config = entry.config()
    with_head = not entry.is_trunk
    state = random_state(build_model_spec(config), seed=seed, with_head=with_head)
    return config, state, with_head, f"{entry.name} (random weights, seed {seed})"
