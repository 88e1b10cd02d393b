"""Parameter-sharding plan: per-device memory of parameters, gradients and optimizer state over N devices.

One rule for every backend (FSDP's ``fully_shard`` in PyTorch, ``jax.sharding`` in Flax):
a tensor of at least ``MIN_SHARDED_ELEMENTS`` values is split along its output-channel axis
into N equal pieces of ceil(channels / N) channels, the last piece padded; smaller tensors
(BatchNorm scales and shifts, biases, the stem) are replicated on every device. The
output-channel axis is the first of a canonical (PyTorch) tensor, which is the axis
``fully_shard`` splits, and the last of a channels-last (TensorFlow, Flax) one.

Why not "the largest axis that N divides": RegNet widths are multiples of the group width,
and in regnet-y-10b-seer those carry a single factor 2 (11110 = 2 * 5 * 11 * 101, 1010 =
2 * 5 * 101), so no axis of most of its tensors divides 8, let alone 16 or 64: such a rule
would replicate nearly the whole model. Splitting with padding costs a few hundredths of a
percent instead. ``jax.sharding`` needs axes that divide evenly, so there the padded axis is
stored padded (zeros, sliced off where the weight is used); FSDP pads internally.

Bytes per parameter value: float32 training keeps the parameter, its gradient and the
optimizer state in float32; bfloat16 (mixed) training keeps the parameter and gradient in
bfloat16 plus a float32 master copy beside the float32 optimizer state. Optimizer state:
SGD with momentum holds one value per parameter, AdamW two. Activations are not counted:
they depend on batch and image size (``model_complexity`` gives them per image).

``python -m regnet_core.sharding regnet-y-10b-seer --devices 8 16 64`` prints the table of
docs/SCALING.md (``--json`` for the figures).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .complexity import model_complexity
from .config import RegNetConfig
from .specs import ModelSpec, build_model_spec
from .weights import BN_MEAN, BN_VAR, TRAINABLE_KINDS, parameter_table

# 65,536 values (256 KiB at float32): below this a tensor is replicated; all of them together
# are a few MB even for regnet-y-10b-seer, and splitting them would only add collectives.
MIN_SHARDED_ELEMENTS = 2**16

# bytes per parameter value: (parameter, gradient, float32 master copy)
PRECISIONS = {"float32": (4, 4, 0), "bfloat16": (2, 2, 4)}
# float32 optimizer-state values per parameter value
OPTIMIZERS = {"sgd": 1, "adamw": 2}
LAYOUTS = ("canonical", "channels_last")
DEFAULT_DEVICE_COUNTS = (8, 16, 64)

GIB = 2**30


class ShardingPlanError(ValueError):
    """A sharding plan asked for with a bad device count, precision, optimizer or layout."""


@dataclass(frozen=True)
class TensorShard:
    """How one tensor lies over the devices: split along ``axis`` into equal (padded) pieces, or replicated."""

    shape: tuple[int, ...]
    axis: int | None  # None: replicated
    num_devices: int

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """The shape with the split axis padded to a multiple of the device count (what each device's piece tiles)."""
        if self.axis is None:
            return self.shape
        shape = list(self.shape)
        shape[self.axis] = -(-shape[self.axis] // self.num_devices) * self.num_devices
        return tuple(shape)

    @property
    def shard_shape(self) -> tuple[int, ...]:
        """The piece every device holds."""
        if self.axis is None:
            return self.shape
        shape = list(self.padded_shape)
        shape[self.axis] //= self.num_devices
        return tuple(shape)

    @property
    def elements(self) -> int:
        """Values in the whole tensor."""
        return math.prod(self.shape)

    @property
    def elements_per_device(self) -> int:
        """Values each device holds (its padded piece, or the whole tensor when replicated)."""
        return math.prod(self.shard_shape)


def _check_devices(num_devices: int) -> int:
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
        raise ShardingPlanError(f"the device count must be a positive integer, got {num_devices!r}")
    return num_devices


def output_axis(ndim: int, layout: str = "canonical") -> int:
    """The output-channel axis of an ``ndim``-D tensor: first in the canonical layout, last in channels-last."""
    if layout not in LAYOUTS:
        raise ShardingPlanError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return 0 if layout == "canonical" or ndim == 0 else ndim - 1


def shard_tensor(shape: Sequence[int], num_devices: int, layout: str = "canonical") -> TensorShard:
    """The plan's rule for one tensor: output channels split over ``num_devices`` (padded), or replicated when small."""
    shape = tuple(int(size) for size in shape)
    num_devices = _check_devices(num_devices)
    axis = output_axis(len(shape), layout)
    if num_devices == 1 or not shape or math.prod(shape) < MIN_SHARDED_ELEMENTS:
        return TensorShard(shape, None, num_devices)
    return TensorShard(shape, axis, num_devices)


def _spec_of(model: RegNetConfig | ModelSpec) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, RegNetConfig):
        return build_model_spec(model)
    raise ShardingPlanError(f"expected a RegNetConfig or ModelSpec, got {type(model).__name__}")


def tensor_shards(
    model: RegNetConfig | ModelSpec, num_devices: int, layout: str = "canonical"
) -> dict[str, TensorShard]:
    """{canonical name: TensorShard} of every trainable tensor, shapes in ``layout``."""
    from .weights import channels_last_shape

    spec = _spec_of(model)
    shards = {}
    for tensor in parameter_table(spec, with_head=spec.head.num_labels > 0):
        if tensor.kind in TRAINABLE_KINDS:
            shape = tensor.shape if layout == "canonical" else channels_last_shape(tensor.shape, tensor.kind)
            shards[tensor.name] = shard_tensor(shape, num_devices, layout)
    return shards


@dataclass(frozen=True)
class ShardingPlan:
    """Per-device memory of one model trained on ``num_devices`` devices (every device holds the same)."""

    num_devices: int
    precision: str
    optimizer: str
    parameters: int  # all trainable values of the model (model_complexity's params)
    parameters_per_device: int  # values of parameters each device holds (pieces padded, small tensors whole)
    replicated_parameters: int  # values of the small tensors every device holds whole
    padding: int  # values added by padding split axes, over all devices
    buffers_per_device: int  # BatchNorm running statistics (float32, replicated)
    largest_block: str  # the unit FSDP gathers whole while it runs: the largest block
    largest_block_parameters: int
    largest_tensor: str  # the largest single tensor (the floor of what any unit must gather)
    largest_tensor_parameters: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int  # optimizer state, and the float32 master copy in bfloat16 training

    @property
    def total_bytes(self) -> int:
        """Parameters, gradients, optimizer state and BatchNorm buffers on each device (activations not included)."""
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes + 4 * self.buffers_per_device

    @property
    def largest_block_bytes(self) -> int:
        """The largest block's parameters gathered whole at the parameter precision (plus as much for its gradients)."""
        return self.largest_block_parameters * PRECISIONS[self.precision][0]

    def as_dict(self) -> dict[str, object]:
        """Every field and the total, for JSON."""
        return {**asdict(self), "total_bytes": self.total_bytes, "largest_block_bytes": self.largest_block_bytes}


def _block_of(name: str) -> str:
    """The block (FSDP unit) a canonical tensor belongs to: ``...stages.S.layers.B``, else the root."""
    parts = name.split(".")
    if "layers" in parts:
        return ".".join(parts[: parts.index("layers") + 2])
    return "(stem and head)"


def sharding_plan(
    model: RegNetConfig | ModelSpec, num_devices: int, precision: str = "float32", optimizer: str = "adamw"
) -> ShardingPlan:
    """The plan's per-device memory for ``model`` on ``num_devices`` devices."""
    if precision not in PRECISIONS:
        raise ShardingPlanError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if optimizer not in OPTIMIZERS:
        raise ShardingPlanError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    spec = _spec_of(model)
    shards = tensor_shards(spec, num_devices)
    parameters = sum(shard.elements for shard in shards.values())
    complexity_params = model_complexity(spec).params
    if parameters != complexity_params:  # the table and the complexity walk the same specs
        raise AssertionError(f"parameter table holds {parameters} values, complexity counts {complexity_params}")
    per_device = sum(shard.elements_per_device for shard in shards.values())
    replicated = sum(shard.elements for shard in shards.values() if shard.axis is None)
    padding = sum(
        shard.elements_per_device * num_devices - shard.elements for shard in shards.values() if shard.axis is not None
    )
    blocks: dict[str, int] = {}
    for name, shard in shards.items():
        blocks[_block_of(name)] = blocks.get(_block_of(name), 0) + shard.elements
    largest = max(blocks, key=blocks.__getitem__)
    largest_tensor = max(shards, key=lambda name: shards[name].elements)
    buffers = sum(
        math.prod(t.shape)
        for t in parameter_table(spec, with_head=spec.head.num_labels > 0)
        if t.kind in (BN_MEAN, BN_VAR)
    )
    parameter_bytes, gradient_bytes, master_bytes = PRECISIONS[precision]
    return ShardingPlan(
        num_devices=num_devices,
        precision=precision,
        optimizer=optimizer,
        parameters=parameters,
        parameters_per_device=per_device,
        replicated_parameters=replicated,
        padding=padding,
        buffers_per_device=buffers,
        largest_block=largest,
        largest_block_parameters=blocks[largest],
        largest_tensor=largest_tensor,
        largest_tensor_parameters=shards[largest_tensor].elements,
        parameter_bytes=per_device * parameter_bytes,
        gradient_bytes=per_device * gradient_bytes,
        optimizer_bytes=per_device * (master_bytes + 4 * OPTIMIZERS[optimizer]),
    )


def _gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def plan_table(model: RegNetConfig | ModelSpec, device_counts: Sequence[int] = DEFAULT_DEVICE_COUNTS) -> str:
    """A markdown table of per-device GiB for every device count, precision and optimizer (one device first)."""
    header = (
        "| devices | precision | optimizer | parameters | gradients | optimizer state | total per device "
        "| largest block gathered |\n| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    )
    rows = [header]
    for num_devices in (1, *device_counts):
        for precision in PRECISIONS:
            for optimizer in OPTIMIZERS:
                plan = sharding_plan(model, num_devices, precision, optimizer)
                rows.append(
                    f"| {num_devices} | {precision} | {optimizer} | {_gib(plan.parameter_bytes)} "
                    f"| {_gib(plan.gradient_bytes)} | {_gib(plan.optimizer_bytes)} | {_gib(plan.total_bytes)} "
                    f"| {_gib(plan.largest_block_bytes)} |"
                )
    return "\n".join(rows)


def plan_summary(model: RegNetConfig | ModelSpec, device_counts: Sequence[int] = DEFAULT_DEVICE_COUNTS) -> str:
    """One line per device count: values per device, of which replicated, and the padding."""
    plan = sharding_plan(model, 1)
    lines = [
        f"- largest block: {plan.largest_block}, {plan.largest_block_parameters:,} values; largest tensor: "
        f"{plan.largest_tensor} {tensor_shards(model, 1)[plan.largest_tensor].shape}, "
        f"{plan.largest_tensor_parameters:,} values"
    ]
    for num_devices in device_counts:
        plan = sharding_plan(model, num_devices)
        lines.append(
            f"- {num_devices} devices: {plan.parameters_per_device:,} parameter values per device "
            f"(the model's {plan.parameters:,} / {num_devices} = {plan.parameters // num_devices:,}; "
            f"{plan.replicated_parameters:,} replicated; padding adds {plan.padding:,} over all devices, "
            f"{100 * plan.padding / plan.parameters:.3f}%)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m regnet_core.sharding MODEL [--devices N ...] [--json]``: the plan's table."""
    from .zoo import UnknownModelError, get_config

    parser = argparse.ArgumentParser(prog="python -m regnet_core.sharding", description=main.__doc__)
    parser.add_argument("model", help="a zoo name, e.g. regnet-y-10b-seer")
    parser.add_argument("--devices", type=int, nargs="+", default=list(DEFAULT_DEVICE_COUNTS))
    parser.add_argument("--json", action="store_true", help="every plan's figures as JSON")
    args = parser.parse_args(argv)
    try:
        config = get_config(args.model)
        if args.json:
            plans = [
                sharding_plan(config, n, precision, optimizer).as_dict()
                for n in (1, *args.devices)
                for precision in PRECISIONS
                for optimizer in OPTIMIZERS
            ]
            print(json.dumps({"model": args.model, "plans": plans}, indent=1))
        else:
            print(plan_table(config, args.devices))
            print()
            print(plan_summary(config, args.devices))
    except (UnknownModelError, ShardingPlanError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
