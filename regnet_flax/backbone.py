"""RegNet feature maps for detection and segmentation in Flax / Linen (NHWC), from regnet_core's specs.

``RegNetBackbone`` runs the trunk's stem and stages under the trunk's own module names
(``embedder``, ``encoder/stages_0``, ...), stopping at the last stage it returns: its
variables hold no later stage. ``RegNetBackbone.from_pretrained`` loads any trunk or
classifier checkpoint into ``(module, variables)`` (the head and the stages not built are
dropped)::

    module, variables = RegNetBackbone.from_pretrained("ckpt", out_indices=(2, 3, 4))
    feature_maps = module.apply(variables, images_nhwc).feature_maps
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from regnet_core.config import RegNetConfig, require_config
from regnet_core.convert import load_pretrained
from regnet_core.features import (
    BackboneOutput,
    FeatureInfo,
    FeatureMapsMixin,
    backbone_spec,
    feature_info,
    resolve_out_indices,
    select_backbone_state,
    stage_names,
)
from regnet_core.resources import check_memory
from regnet_core.specs import ModelSpec, build_model_spec

from .modeling import Embeddings, Encoder, canonical_dtype, check_input, checked_keywords, register_output_pytree
from .weights import from_native, to_native

register_output_pytree(BackboneOutput)

Variables = dict[str, Any]

# init traces one forward on a dummy batch; at 32 x 32 (the zoo's overall stride) every stage is >= 1 x 1.
_INIT_IMAGE_SIZE = 32
_TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
_PRECISION = "highest"  # full float32 convolutions in the parity adapter (as regnet_flax.backend)


@checked_keywords
class RegNetBackbone(FeatureMapsMixin, nn.Module):
    """Feature maps (NHWC) of chosen outputs: ``out_indices`` into (stem, stage1, ..., stageN), default every stage.

    ``out_indices`` (negative from the end) or ``out_features`` (names) choose them; both are
    stored resolved (non-negative, forward order). Stages after the last chosen output are
    not built. Properties: ``feature_info`` (name, index, num_chs, reduction per output),
    ``channels``, ``reductions``, ``stage_names``, and ``spec`` (the spec of what is built).
    ``train=True`` with ``mutable=["batch_stats"]`` updates BatchNorm statistics as the full model does.
    ``dtype`` is the computation dtype (feature maps come out in it; see regnet_flax.from_pretrained).
    """

    config: RegNetConfig
    out_indices: Sequence[int] | None = None
    out_features: Sequence[str] | None = None
    zero_init_last_bn: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        full_spec = build_model_spec(require_config(self.config, "RegNetBackbone"))
        indices = resolve_out_indices(full_spec, self.out_indices, self.out_features)
        # Stored resolved (hashable tuples; resolving again is a no-op, so clones keep them).
        object.__setattr__(self, "out_indices", indices)
        object.__setattr__(self, "out_features", tuple(stage_names(full_spec)[index] for index in indices))
        super().__post_init__()

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """Name, index, channels (num_chs) and reduction of each returned feature map."""
        return feature_info(self.config, self.out_indices)

    @property
    def spec(self) -> ModelSpec:
        """The spec of what is built: the stem and the stages up to the last returned one."""
        return backbone_spec(self.config, self.out_indices)

    @nn.compact
    def __call__(
        self, pixel_values: jax.Array, train: bool = False, output_hidden_states: bool = False
    ) -> BackboneOutput:
        """NHWC float batch -> feature_maps (chosen outputs, NHWC) and, if asked, hidden_states (stem, stages run)."""
        spec = self.spec
        check_input(pixel_values, spec.stem.input_width)
        dtype, param_dtype = canonical_dtype(self.dtype), canonical_dtype(self.param_dtype)
        hidden_state = Embeddings(spec, self.axis_name, dtype, param_dtype, name="embedder")(pixel_values, train)
        stage_outputs = Encoder(spec, self.axis_name, self.zero_init_last_bn, dtype, param_dtype, name="encoder")(
            hidden_state, train
        )
        hidden_states = (hidden_state, *stage_outputs)
        return BackboneOutput(
            feature_maps=tuple(hidden_states[index] for index in self.out_indices),
            hidden_states=hidden_states if output_hidden_states else None,
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        out_indices: Sequence[int] | None = None,
        *,
        out_features: Sequence[str] | None = None,
        format: str | None = None,
        config: RegNetConfig | str | None = None,
        dtype: DTypeLike | None = None,
        allow_large: bool = False,
        **config_changes: Any,
    ) -> tuple[RegNetBackbone, Variables]:
        """(module, variables) holding the trunk of any supported checkpoint (directory, file of any format, hub id).

        The weights are checked strictly against the whole trunk; a classifier's head and the
        stages after the last chosen output are dropped (never read from disk).
        """
        config, state = load_pretrained(source, format, config, **config_changes)
        return backbone_from_canonical(
            config,
            state,
            out_indices,
            out_features=out_features,
            context=f"in {source}",
            dtype=dtype,
            allow_large=allow_large,
        )


def init_backbone(
    config: RegNetConfig,
    out_indices: Sequence[int] | None = None,
    seed: int = 0,
    *,
    out_features: Sequence[str] | None = None,
    zero_init_last_bn: bool = False,
    dtype: DTypeLike | None = None,
    allow_large: bool = False,
) -> tuple[RegNetBackbone, Variables]:
    """A new pycls-initialised (module, variables) backbone pair, seeded; ``dtype`` is the computation dtype."""
    check_memory(require_config(config, "init_backbone"), False, allow_large, what="RegNetBackbone")
    module = RegNetBackbone(config, out_indices, out_features, zero_init_last_bn, dtype=canonical_dtype(dtype))
    dummy = jnp.zeros((1, _INIT_IMAGE_SIZE, _INIT_IMAGE_SIZE, config.num_channels), jnp.float32)
    with jax.threefry_partitionable(False):  # compiles about 6x faster on CPU (see regnet_flax.init)
        variables = jax.jit(module.init)(jax.random.PRNGKey(seed), dummy)
    return module, dict(variables)


def backbone_from_canonical(
    config: RegNetConfig,
    state: Mapping[str, Any],
    out_indices: Sequence[int] | None = None,
    *,
    out_features: Sequence[str] | None = None,
    context: str = "",
    dtype: DTypeLike | None = None,
    allow_large: bool = False,
) -> tuple[RegNetBackbone, Variables]:
    """(module, variables) holding canonical trunk or classifier weights, checked strictly against the whole trunk."""
    check_memory(require_config(config, "backbone_from_canonical"), False, allow_large, what="RegNetBackbone")
    module = RegNetBackbone(config, out_indices, out_features, dtype=canonical_dtype(dtype))
    selected = select_backbone_state(state, build_model_spec(config), module.out_indices, context)
    return module, to_native(selected, module.spec, with_head=False, context=context, leaf=jnp.asarray)


def backbone_to_canonical(model: tuple[RegNetBackbone, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Canonical numpy weights (RegNetModel names) of the stem and the stages a backbone holds."""
    module, variables = model
    return from_native(variables, module.spec, with_head=False)


def run_backbone(
    model: tuple[RegNetBackbone, Mapping[str, Any]], pixel_values: np.ndarray, output_hidden_states: bool = False
) -> dict[str, list[np.ndarray]]:
    """Forward an NCHW numpy batch (transposed to NHWC, inference mode); outputs as lists of NCHW numpy arrays."""
    module, variables = model
    apply = jax.jit(module.apply, static_argnames=("output_hidden_states",))
    inputs = jnp.asarray(np.transpose(np.asarray(pixel_values, np.float32), _TO_NHWC))
    with jax.default_matmul_precision(_PRECISION):
        outputs = apply(variables, inputs, output_hidden_states=output_hidden_states)
    return {
        name: [np.ascontiguousarray(np.transpose(np.asarray(value), _TO_NCHW)) for value in values]
        for name, values in outputs.items()
    }
