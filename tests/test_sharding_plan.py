"""The parameter-sharding plan (regnet_core.sharding): its arithmetic, its table in docs/SCALING.md, and
regnet-y-10b-seer laid over 8 devices in shapes only (jax.sharding, PyTorch FSDP on the meta device)."""

from __future__ import annotations

import math

import pytest

from regnet_core import build_model_spec, get_config, model_complexity
from regnet_core.sharding import (
    MIN_SHARDED_ELEMENTS,
    ShardingPlanError,
    main,
    plan_summary,
    plan_table,
    shard_tensor,
    sharding_plan,
    tensor_shards,
)
from tests.helpers import requires
from tests.test_distributed import ROOT, run_worker

TEN_B = "regnet-y-10b-seer"


def test_a_large_tensor_splits_its_output_channels_padded_and_a_small_one_is_replicated():
    conv = shard_tensor((11110, 1010, 3, 3), 8)
    assert conv.axis == 0 and conv.padded_shape == (11112, 1010, 3, 3) and conv.shard_shape == (1389, 1010, 3, 3)
    assert conv.elements_per_device * 8 >= conv.elements
    hwio = shard_tensor((3, 3, 1010, 11110), 8, layout="channels_last")
    assert hwio.axis == 3 and hwio.shard_shape == (3, 3, 1010, 1389)
    assert hwio.elements_per_device == conv.elements_per_device  # one rule, either layout
    assert shard_tensor((28280, 28280, 1, 1), 8).shard_shape == (3535, 28280, 1, 1)  # 8 divides: no padding
    small = shard_tensor((MIN_SHARDED_ELEMENTS - 1,), 8)
    assert small.axis is None and small.elements_per_device == small.elements


def test_the_plan_counts_the_parameters_our_complexity_counts_and_splits_them():
    spec = build_model_spec(get_config(TEN_B))
    params = model_complexity(spec).params
    whole = sharding_plan(spec, 1)
    assert whole.parameters == whole.parameters_per_device == params
    for devices in (8, 16, 64):
        plan = sharding_plan(spec, devices)
        assert plan.parameters == params
        ideal = math.ceil(params / devices)
        # every device holds its share, plus the replicated small tensors, plus the padding of its pieces
        assert ideal <= plan.parameters_per_device
        assert plan.parameters_per_device <= ideal + plan.replicated_parameters + plan.padding // devices + 1
        assert plan.padding < 0.005 * params
        assert plan.replicated_parameters < 0.001 * params
        shards = tensor_shards(spec, devices)
        assert sum(shard.elements_per_device for shard in shards.values()) == plan.parameters_per_device


@pytest.mark.parametrize(
    "precision, optimizer, bytes_per_value",
    [
        ("float32", "sgd", 4 + 4 + 4),
        ("float32", "adamw", 4 + 4 + 8),
        ("bfloat16", "sgd", 2 + 2 + 4 + 4),
        ("bfloat16", "adamw", 2 + 2 + 4 + 8),
    ],
)
def test_bytes_per_device_follow_precision_and_optimizer(precision, optimizer, bytes_per_value):
    plan = sharding_plan(get_config(TEN_B), 16, precision, optimizer)
    state = plan.parameter_bytes + plan.gradient_bytes + plan.optimizer_bytes
    assert state == bytes_per_value * plan.parameters_per_device
    assert plan.total_bytes == state + 4 * plan.buffers_per_device


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((0,), "device count must be a positive integer, got 0"),
        ((8, "float16"), "unknown precision 'float16'; expected one of float32, bfloat16"),
        ((8, "float32", "lamb"), "unknown optimizer 'lamb'; expected one of sgd, adamw"),
    ],
)
def test_bad_plans_are_refused_with_what_was_expected(arguments, message):
    with pytest.raises(ShardingPlanError, match=message):
        sharding_plan(get_config("regnet-x-002"), *arguments)
    assert issubclass(ShardingPlanError, ValueError)


def test_scaling_doc_holds_the_table_the_code_prints(capsys):
    doc = (ROOT / "docs" / "SCALING.md").read_text()
    config = get_config(TEN_B)
    assert plan_table(config) in doc
    assert plan_summary(config) in doc
    assert main([TEN_B]) == 0
    assert plan_table(config) in capsys.readouterr().out
    assert main([TEN_B, "--devices", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


@requires("jax")
@requires("torch")
def test_10b_parameter_shapes_laid_over_8_devices_fit_the_plan_without_allocating():
    result = run_worker("plan_10b_shapes", "--flax", "--torch", env={"REGNET_ALLOW_LARGE": "1"})
    planned = result["plan_per_device"]
    flax = result["flax"]
    assert flax["devices"] == 8 and flax["parameters"] == result["plan_parameters"]  # Flax's tree == our complexity
    assert flax["tensors_over_plan"] == [] and max(flax["per_device"]) <= planned
    torch = result["torch"]
    assert torch["all_on_meta"] and torch["tensors_over_plan"] == []
    assert max(torch["per_rank"].values()) <= planned
    # FSDP's pieces cover every value once (it splits the small tensors too; the last ranks get the remainders)
    assert len(torch["per_rank"]) == 8 and sum(torch["per_rank"].values()) == result["plan_parameters"]
    assert result["peak_rss_mib"] < 2048  # 9.3e9 float32 values would be 35 GiB
