"""RegNet feature maps for detection and segmentation in TensorFlow / Keras 3 (NHWC), from regnet_core's specs.

``RegNetBackbone`` builds the trunk's stem and stages under the trunk's own layer names
(``stem/conv/kernel``, ``stage_0/block_0/...``), stopping at the last stage it returns, and
loads any trunk or classifier checkpoint (the head and the stages not built are dropped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from regnet_core.checkpoint import save_checkpoint
from regnet_core.config import RegNetConfig
from regnet_core.convert import load_pretrained
from regnet_core.features import (
    BackboneOutput,
    FeatureMapsMixin,
    backbone_spec,
    feature_info,
    require_whole_trunk,
    resolve_out_indices,
    select_backbone_state,
)
from regnet_core.specs import build_model_spec

from .modeling import RegNetPreTrainedModel, check_input, register_outputs_with_keras_tree, trunk_layers
from .weights import assign_canonical

TRUNK_CLASS = "RegNetModel"
_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)


register_outputs_with_keras_tree(BackboneOutput)


@keras.saving.register_keras_serializable(package="regnet_tf")
class RegNetBackbone(FeatureMapsMixin, RegNetPreTrainedModel):
    """Feature maps (NHWC) of chosen outputs: ``out_indices`` into (stem, stage1, ..., stageN), default every stage.

    Stages after the last chosen output are not built (no variables, no compute). Eager
    inference calls run compiled, and ``dtype`` may be "mixed_bfloat16", as for the other
    models (``regnet_tf.modeling``). Attributes:
    ``out_indices``, ``out_features`` (names), ``feature_info`` (name, index, num_chs,
    reduction per output), ``channels``, ``reductions``, ``stage_names``; ``spec`` is the spec
    of what is built.
    """

    default_name = "regnet_backbone"

    def __init__(
        self,
        config: RegNetConfig,
        out_indices: Sequence[int] | None = None,
        *,
        out_features: Sequence[str] | None = None,
        zero_init_last_bn: bool = False,
        _skip_init: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        full_spec = self.spec
        self._out_indices = resolve_out_indices(full_spec, out_indices, out_features)
        self._feature_info = feature_info(full_spec, self._out_indices)
        self.spec = backbone_spec(full_spec, self._out_indices)
        self.stem, self.stages = trunk_layers(self.spec, zero_init_last_bn, _skip_init, self.dtype_policy)
        self.build(self.input_shape_nhwc)

    @property
    def out_indices(self) -> tuple[int, ...]:
        """The returned outputs' indices (0 = stem), in forward order."""
        return self._out_indices

    @property
    def feature_info(self) -> tuple[Any, ...]:
        """Name, index, channels (num_chs) and reduction of each returned feature map."""
        return self._feature_info

    @property
    def out_features(self) -> tuple[str, ...]:
        """The returned outputs' names ("stem", "stage1", ...), in forward order."""
        return tuple(info.name for info in self._feature_info)

    def build(self, input_shape: Any = None) -> None:
        self.stem.build(input_shape)
        for stage in self.stages:
            stage.build(input_shape)

    def call(
        self, pixel_values: tf.Tensor, output_hidden_states: bool = False, training: bool = False
    ) -> BackboneOutput:
        """NHWC float batch -> feature_maps (chosen outputs, NHWC, in the compute dtype) and, if asked, hidden_states."""
        check_input(pixel_values, self.spec.stem.input_width)
        hidden = self.stem(pixel_values, training=training)
        hidden_states = [hidden]
        for stage in self.stages:
            hidden = stage(hidden, training=training)
            hidden_states.append(hidden)
        return BackboneOutput(
            feature_maps=tuple(hidden_states[index] for index in self._out_indices),
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )

    # -------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        out_indices: Sequence[int] | None = None,
        *,
        out_features: Sequence[str] | None = None,
        format: str | None = None,
        config: RegNetConfig | str | None = None,
        dtype: Any = None,
        allow_large: bool = False,
        **config_changes: Any,
    ) -> RegNetBackbone:
        """A backbone holding the trunk of any supported checkpoint (directory, weights file of any format, hub id).

        The weights are checked strictly against the whole trunk; a classifier's head and the
        stages after the last chosen output are dropped (never read from disk). ``dtype``: the
        Keras policy ("float32", "mixed_bfloat16" or "bfloat16"; None: the global one).
        """
        config, state = load_pretrained(source, format, config, **config_changes)
        model = cls(
            config, out_indices, out_features=out_features, _skip_init=True, dtype=dtype, allow_large=allow_large
        )
        return model.load_canonical_state(state, context=f"in {source}")

    def load_canonical_state(
        self, state: dict[str, Any], *, reinit_head: bool = False, context: str = ""
    ) -> RegNetBackbone:
        """Assign a trunk or classifier's canonical weights, strictly (see ``from_pretrained``)."""
        if reinit_head:
            raise ValueError("reinit_head=True was given, but a backbone has no classifier to start afresh")
        selected = select_backbone_state(state, build_model_spec(self.config), self._out_indices, context)
        assign_canonical(self, selected, context=context)
        return self

    def save_pretrained(
        self, directory: str | os.PathLike, max_shard_size: int | str = "5GB", *, overwrite: bool = False
    ) -> Path:
        """Write the trunk as a RegNetModel checkpoint; needs every stage built (out_indices reaching the last).

        A directory that already holds files is replaced only with ``overwrite=True``, once the new one is complete.
        """
        require_whole_trunk(build_model_spec(self.config), self._out_indices, "save the backbone as a trunk checkpoint")
        state = self.canonical_state()
        return save_checkpoint(directory, self.config, state, max_shard_size, TRUNK_CLASS, overwrite=overwrite)

    # -------------------------------------------------------------- Keras serialisation
    def get_config(self) -> dict[str, Any]:
        """Keras config: the layer name, the RegNet config as a dict, the dtype policy and the out_indices."""
        return {**super().get_config(), "out_indices": list(self._out_indices)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RegNetBackbone:
        """Rebuild from ``get_config()`` (weights not included)."""
        return cls(
            RegNetConfig.from_dict(config["regnet_config"]),
            config.get("out_indices"),
            name=config.get("name"),
            dtype=config.get("dtype"),
        )


# ----------------------------------------------------------------------------- adapter for regnet_core.parity


def backbone_from_canonical(
    config: RegNetConfig, state: Mapping[str, np.ndarray], out_indices: Sequence[int] | None = None
) -> RegNetBackbone:
    """A backbone holding canonical (trunk or classifier) weights."""
    return RegNetBackbone(config, out_indices, _skip_init=True).load_canonical_state(dict(state))


def run_backbone(
    model: RegNetBackbone, pixel_values: np.ndarray, output_hidden_states: bool = False
) -> dict[str, list[np.ndarray]]:
    """Forward an NCHW numpy batch (transposed to NHWC, inference mode); outputs as lists of NCHW numpy arrays."""
    nhwc = tf.convert_to_tensor(np.ascontiguousarray(np.transpose(np.asarray(pixel_values, np.float32), _TO_NHWC)))
    outputs = model(nhwc, output_hidden_states=output_hidden_states, training=False)
    return {
        name: [np.ascontiguousarray(np.transpose(np.asarray(value), _TO_NCHW)) for value in values]
        for name, values in outputs.items()
    }
