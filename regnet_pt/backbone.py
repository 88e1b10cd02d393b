"""RegNet feature maps for detection and segmentation in PyTorch (NCHW), from regnet_core's specs.

``RegNetBackbone`` builds the trunk's stem and stages under the trunk's own names
(``embedder.embedder...``, ``encoder.stages.0...``), stopping at the last stage it returns,
and loads any trunk or classifier checkpoint (the head and the stages not built are dropped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regnet_core.checkpoint import save_checkpoint
from regnet_core.config import RegNetConfig, reject_keywords
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
from regnet_core.resources import check_memory
from regnet_core.specs import build_model_spec

from .modeling import Embeddings, Encoder, RegNetPreTrainedModel, run_trunk
from .weights import state_from_canonical

TRUNK_CLASS = "RegNetModel"


class RegNetBackbone(FeatureMapsMixin, RegNetPreTrainedModel):
    """Feature maps (NCHW) of chosen outputs: ``out_indices`` into (stem, stage1, ..., stageN), default every stage.

    Stages after the last chosen output are not built (no weights, no compute). Attributes:
    ``out_indices``, ``out_features`` (names), ``feature_info`` (name, index, num_chs,
    reduction per output), ``channels``, ``reductions``, ``stage_names``; ``spec`` is the spec
    of what is built.
    """

    def __init__(
        self,
        config: RegNetConfig,
        out_indices: Sequence[int] | None = None,
        *,
        out_features: Sequence[str] | None = None,
        zero_init_last_bn: bool = False,
        allow_large: bool = False,
        _skip_init: bool = False,
        **unknown: Any,
    ) -> None:
        reject_keywords(
            unknown, "RegNetBackbone()", ("out_indices", "out_features", "zero_init_last_bn", "allow_large")
        )
        super().__init__(config, allow_large, _allocates=not _skip_init)
        full_spec = self.spec
        self.out_indices = resolve_out_indices(full_spec, out_indices, out_features)
        self.feature_info = feature_info(full_spec, self.out_indices)
        self.out_features = tuple(info.name for info in self.feature_info)
        self.spec = backbone_spec(full_spec, self.out_indices)
        with torch.device("meta") if _skip_init else nullcontext():
            self.embedder = Embeddings(self.spec)
            self.encoder = Encoder(self.spec)
        if not _skip_init:
            self.init_weights(zero_init_last_bn)
            self.use_channels_last()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True
    ) -> BackboneOutput | tuple:
        """NCHW float batch -> feature_maps (chosen outputs, NCHW) and, if asked, hidden_states (stem, stages run)."""
        hidden_states = run_trunk(self.embedder, self.encoder, pixel_values, self.spec.stem.input_width)
        output = BackboneOutput(  # ordinary NCHW tensors out, whatever the memory format inside
            feature_maps=tuple(hidden_states[index].contiguous() for index in self.out_indices),
            hidden_states=tuple(state.contiguous() for state in hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

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
        allow_large: bool = False,
        **config_changes: Any,
    ) -> RegNetBackbone:
        """A backbone holding the trunk of any supported checkpoint (directory, weights file of any format, hub id).

        The weights are checked strictly against the whole trunk; a classifier's head and the
        stages after the last chosen output are dropped (never read from disk). Returned in eval mode.
        """
        config, state = load_pretrained(source, format, config, **config_changes)
        check_memory(config, False, allow_large, what=cls.__name__)  # before the weights stream in
        model = cls(config, out_indices, out_features=out_features, _skip_init=True)
        model.load_canonical_state(state, context=f"in {source}", _copy=False)
        return model.eval()

    def load_canonical_state(
        self, state: dict[str, Any], *, reinit_head: bool = False, context: str = "", _copy: bool = True
    ) -> RegNetBackbone:
        """Load a trunk or classifier's canonical weights in place, strictly (see ``from_pretrained``)."""
        if reinit_head:
            raise ValueError("reinit_head=True was given, but a backbone has no classifier to start afresh")
        selected = select_backbone_state(state, build_model_spec(self.config), self.out_indices, context)
        self._assign_tensors(state_from_canonical(selected, self.spec, with_head=False, context=context, copy=_copy))
        return self

    def save_pretrained(
        self, directory: str | os.PathLike, max_shard_size: int | str = "5GB", *, overwrite: bool = False
    ) -> Path:
        """Write the trunk as a RegNetModel checkpoint; needs every stage built (out_indices reaching the last).

        A directory that already holds files is replaced only with ``overwrite=True``, once the new one is complete.
        """
        require_whole_trunk(build_model_spec(self.config), self.out_indices, "save the backbone as a trunk checkpoint")
        state = self.canonical_state()
        return save_checkpoint(directory, self.config, state, max_shard_size, TRUNK_CLASS, overwrite=overwrite)


# ----------------------------------------------------------------------------- adapter for regnet_core.parity


def backbone_from_canonical(
    config: RegNetConfig, state: Mapping[str, np.ndarray], out_indices: Sequence[int] | None = None
) -> RegNetBackbone:
    """A backbone in eval mode holding canonical (trunk or classifier) weights."""
    model = RegNetBackbone(config, out_indices, _skip_init=True)
    return model.load_canonical_state(dict(state)).eval()


def run_backbone(
    model: RegNetBackbone, pixel_values: np.ndarray, output_hidden_states: bool = False
) -> dict[str, list[np.ndarray]]:
    """Forward an NCHW numpy batch; feature maps (and hidden states) as lists of NCHW numpy arrays."""
    with torch.no_grad():
        outputs = model(torch.from_numpy(np.ascontiguousarray(pixel_values)), output_hidden_states=output_hidden_states)
    return {name: [value.numpy() for value in values] for name, values in outputs.items()}
