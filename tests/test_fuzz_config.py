"""Configs fuzzed with hypothesis: a valid config has one spec, and builds in every backend with the
parameter count the core predicts; anything else raises ConfigError and nothing else.

Short by default (CI). A long run: ``REGNET_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest
tests/test_fuzz_config.py -q`` (every test then draws that many examples; the backend test
builds three models per example, about a second each).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from regnet_core import RegNetConfig
from regnet_core.complexity import model_complexity
from regnet_core.config import ACTIVATIONS, FIELDS
from regnet_core.errors import ConfigError
from regnet_core.resources import estimate_weight_bytes, weight_memory
from regnet_core.specs import build_model_spec
from regnet_core.weights import TRAINABLE_KINDS, parameter_table
from tests.helpers import requires

EXAMPLES_VARIABLE = "REGNET_FUZZ_EXAMPLES"


def fuzz_settings(default: int) -> settings:
    """``default`` examples (REGNET_FUZZ_EXAMPLES overrides), no deadline: model builds vary with the machine's load."""
    examples = int(os.environ.get(EXAMPLES_VARIABLE) or default)
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )


# ----------------------------------------------------------------------------- strategies
@st.composite
def valid_fields(draw) -> dict:
    """Fields of a tiny RegNet, built to be valid most of the time (whole groups, SE widths of 1 or more)."""
    group_width = draw(st.sampled_from([1, 2, 4, 8]))
    ratio = draw(st.sampled_from([1.0, 0.5, 0.25]))
    stages = draw(st.integers(1, 3))
    widths = []
    for _ in range(stages):
        if draw(st.integers(0, 4)) == 0:  # sometimes any width: capped group widths, clashes
            widths.append(draw(st.integers(1, 24)))
        else:
            widths.append(int(group_width * draw(st.integers(1, 3)) / ratio))
    layer_type = draw(st.sampled_from(["x", "y"]))
    fields = {
        "num_channels": draw(st.integers(1, 4)),
        "embedding_size": draw(st.integers(1, 16)),
        "hidden_sizes": widths,
        "depths": draw(st.lists(st.integers(1, 2), min_size=stages, max_size=stages)),
        "groups_width": group_width,
        "layer_type": layer_type,
        "hidden_act": draw(st.sampled_from(ACTIVATIONS)),
        "downsample_in_first_stage": draw(st.booleans()),
        "se_ratio": draw(st.sampled_from([0.25, 0.5, 1.0])) if layer_type == "y" else 0.0,
        "bottleneck_ratio": ratio,
        "num_labels": draw(st.integers(0, 4)),
    }
    if draw(st.booleans()):  # numpy scalars are numbers too
        fields["hidden_sizes"] = np.asarray(widths, np.int64)
        fields["bottleneck_ratio"] = np.float32(ratio)
    return fields


BAD_VALUES = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=2),
    st.sampled_from([math.inf, -math.inf, math.nan, np.float32("nan"), np.bool_(True), np.int64(-3), object()]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.one_of(st.integers(-3, 40), st.floats(), st.text(max_size=1), st.booleans()), max_size=4),
    st.dictionaries(st.text(max_size=2), st.integers(-2, 3), max_size=2),
    st.tuples(st.integers(0, 16)),
)


def _check_valid(config: RegNetConfig) -> None:
    """What every valid config guarantees in the core: a spec, the same spec after JSON, one parameter count."""
    spec = build_model_spec(config)
    assert [stage.width for stage in spec.stages] == config.hidden_sizes
    assert [stage.depth for stage in spec.stages] == config.depths
    assert all(block.se_width >= 1 for _, _, block in spec.blocks()) or config.layer_type == "x"
    again = RegNetConfig.from_dict(json.loads(config.to_json_string()))
    assert again == config and build_model_spec(again) == spec
    table = parameter_table(spec, with_head=True)
    trainable = sum(math.prod(t.shape) for t in table if t.kind in TRAINABLE_KINDS)
    assert trainable == model_complexity(spec, 8).params
    assert estimate_weight_bytes(config) == weight_memory(spec)["float32"]


def _build(fields) -> RegNetConfig | None:
    """The config, or None after our error (any other exception fails the test)."""
    try:
        config = RegNetConfig(**fields)
    except ConfigError as error:
        event("ConfigError")
        note(str(error))
        assert str(error) and "\n" not in str(error)
        return None
    event("valid")
    return config


# ----------------------------------------------------------------------------- core
@fuzz_settings(300)
@given(valid_fields())
def test_drawn_configs_are_valid_with_one_spec_or_our_error(fields):
    config = _build(fields)
    if config is not None:
        _check_valid(config)


@fuzz_settings(300)
@given(valid_fields(), st.sampled_from(FIELDS), BAD_VALUES)
def test_any_value_in_any_field_gives_a_valid_config_or_our_error(fields, field, value):
    fields = {**fields, field: value}
    config = _build(fields)
    if config is not None:
        _check_valid(config)


@fuzz_settings(200)
@given(
    valid_fields(),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20).filter(
        lambda name: name not in FIELDS and name != "model_type"
    ),
)
def test_unknown_keywords_are_our_error_naming_them(fields, name):
    with pytest.raises(ConfigError, match=f"unknown keyword '{name}'"):
        RegNetConfig(**fields, **{name: 1})
    config = _build(fields)
    if config is not None:
        with pytest.raises(ConfigError, match=f"unknown keyword '{name}'"):
            config.copy(**{name: 1})


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=4)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@fuzz_settings(300)
@given(
    st.one_of(
        JSON,
        st.dictionaries(st.sampled_from([*FIELDS, "model_type", "extra_key"]), JSON, max_size=6),
        st.dictionaries(st.one_of(st.sampled_from(["model_type", "depths"]), st.integers(0, 2)), JSON, max_size=3),
        st.dictionaries(st.sampled_from(["model_type", "note"]), st.one_of(st.just("regnet"), BAD_VALUES), max_size=2),
        valid_fields().flatmap(
            lambda fields: st.dictionaries(st.sampled_from(sorted(fields)), JSON, max_size=2).map(
                lambda changes: {
                    **{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in fields.items()},
                    **changes,
                }
            )
        ),
    )
)
def test_any_json_gives_a_valid_config_or_our_error(data):
    try:
        config = RegNetConfig.from_dict(data)
    except ConfigError as error:
        event("ConfigError")
        assert str(error) and "\n" not in str(error)
        return
    event("valid")
    _check_valid(config)
    assert set(config.extra) == set(data) - set(FIELDS) - {"model_type"}  # unknown keys kept


# ----------------------------------------------------------------------------- backends
def _pt_count(config: RegNetConfig) -> tuple[int, dict]:
    import torch

    from regnet_pt import RegNetForImageClassification

    model = RegNetForImageClassification(config).eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, config.num_channels, 8, 8)).logits
    assert logits.shape == (1, config.num_labels or config.hidden_sizes[-1])
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return sum(p.numel() for p in model.parameters()), shapes


def _tf_count(config: RegNetConfig) -> tuple[int, dict]:
    from regnet_tf import RegNetForImageClassification

    model = RegNetForImageClassification(config)
    shapes = {name: tuple(value.shape) for name, value in model.canonical_state().items()}
    return sum(math.prod(v.shape) for v in model.trainable_weights), shapes


def _flax_count(config: RegNetConfig) -> int:
    import jax
    import jax.numpy as jnp

    from regnet_flax.modeling import RegNetForImageClassification

    module = RegNetForImageClassification(config)
    dummy = jnp.zeros((1, 8, 8, config.num_channels), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)  # traced in full, nothing computed
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"]))


@requires("torch")
@requires("tensorflow")
@requires("flax")
@fuzz_settings(10)
@given(valid_fields())
def test_valid_configs_build_in_every_backend_with_the_predicted_parameters(fields):
    config = _build(fields)
    if config is None:
        return
    spec = build_model_spec(config)
    expected = model_complexity(spec, 8).params
    table = {t.name: t.shape for t in parameter_table(spec, with_head=True)}
    pt_params, pt_shapes = _pt_count(config)
    tf_params, tf_shapes = _tf_count(config)
    assert pt_params == expected and pt_shapes == table
    assert tf_params == expected and _without_counters(tf_shapes) == _without_counters(table)
    assert _flax_count(config) == expected


def _without_counters(shapes: dict) -> dict:
    """Shapes without num_batches_tracked (PyTorch bookkeeping the other frameworks need not hold)."""
    return {name: shape for name, shape in shapes.items() if not name.endswith("num_batches_tracked")}
