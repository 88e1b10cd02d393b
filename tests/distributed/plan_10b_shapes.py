"""regnet-y-10b-seer laid over devices in shapes only: jax.eval_shape + NamedSharding on 8 host devices, and
PyTorch's meta device under FSDP's fully_shard (a fake 8-process group, each rank in turn). Nothing is allocated.

Prints, per framework, every device's (rank's) parameter values and the plan's figures.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import math  # noqa: E402

from regnet_core import get_config  # noqa: E402
from regnet_core.sharding import sharding_plan, tensor_shards  # noqa: E402
from tests.distributed.common import report  # noqa: E402

MODEL = "regnet-y-10b-seer"
DEVICES = 8


def flax_shares() -> dict:
    """Every device's parameter values when the abstract Flax parameters are laid over an 8-device mesh."""
    import jax
    import jax.numpy as jnp

    from regnet_flax.modeling import RegNetModel
    from regnet_flax.sharding import parameter_shard, sharded_parameter_shapes

    module = RegNetModel(get_config(MODEL))
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)))
    params = abstract["params"]
    mesh = jax.make_mesh((DEVICES,), ("fsdp",))
    laid = sharded_parameter_shapes(params, mesh, "fsdp")
    per_device = dict.fromkeys(mesh.devices.flat, 0)
    over_plan = []
    for (path, leaf), original in zip(
        jax.tree_util.tree_leaves_with_path(laid), jax.tree_util.tree_leaves(params), strict=True
    ):
        planned = parameter_shard(tuple(original.shape), mesh, "fsdp").elements_per_device
        assert leaf.sharding.shard_shape(leaf.shape) == parameter_shard(tuple(original.shape), mesh, "fsdp").shard_shape
        for device, index in leaf.sharding.devices_indices_map(leaf.shape).items():
            values = math.prod(len(range(*piece.indices(size))) for piece, size in zip(index, leaf.shape, strict=True))
            per_device[device] += values
            if values > planned:
                over_plan.append(jax.tree_util.keystr(path))
    return {
        "devices": len(per_device),
        "tensors": len(jax.tree_util.tree_leaves(params)),
        "parameters": int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))),
        "per_device": sorted(per_device.values()),
        "tensors_over_plan": over_plan,
        "dtypes": sorted({str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(params)}),
    }


def torch_shares() -> dict:
    """Every rank's parameter values under fully_shard_blocks on a meta-device model (one rank after another)."""
    import torch
    from torch import distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from regnet_pt.distributed import fully_shard_blocks
    from regnet_pt.modeling import RegNetModel

    planned = tensor_shards(get_config(MODEL), DEVICES)
    per_rank, over_plan, on_meta = {}, [], True
    for rank in range(DEVICES):
        dist.init_process_group("fake", rank=rank, world_size=DEVICES, store=FakeStore())
        try:
            with torch.device("meta"):
                model = RegNetModel(get_config(MODEL))
            fully_shard_blocks(model, mesh=init_device_mesh("cpu", (DEVICES,)))
            total = 0
            for name, parameter in model.named_parameters():
                local = parameter.to_local()
                on_meta = on_meta and local.is_meta
                total += local.numel()
                if local.numel() > planned[name].elements_per_device:
                    over_plan.append(name)
            per_rank[rank] = total
        finally:
            dist.destroy_process_group()
    return {"per_rank": per_rank, "tensors_over_plan": over_plan, "all_on_meta": on_meta}


def main() -> None:
    plan = sharding_plan(get_config(MODEL), DEVICES)
    results = {"plan_per_device": plan.parameters_per_device, "plan_parameters": plan.parameters}
    if "--flax" in sys.argv:
        results["flax"] = flax_shares()
    if "--torch" in sys.argv:
        results["torch"] = torch_shares()
    results["peak_rss_mib"] = _peak_rss_mib()
    report(results)


def _peak_rss_mib() -> float:
    # VmHWM is this process's own peak: getrusage's ru_maxrss carries the parent's peak over
    # fork and exec on Linux (a pytest worker at 3 GB made this worker read 3 GB).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM line in /proc/self/status")


if __name__ == "__main__":
    main()
