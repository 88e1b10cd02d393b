"""Data-parallel training on PyTorch's own engine: DistributedDataParallel, with BatchNorm synchronised.

Under DistributedDataParallel each process normalises with the statistics of its own share
of the batch, so the step differs from the one-device step on the same global batch.
``convert_sync_batchnorm`` replaces every ``BatchNorm2d`` by ``SyncBatchNorm2d``, which in
training all-reduces per-channel sums and counts, then sums of squared deviations from the
global mean, across the process group: every process normalises with the global batch's
statistics (and updates its running statistics with them), and the DDP step equals the
one-device step. Unlike ``torch.nn.SyncBatchNorm`` (GPU only) it runs on every device and
backend, gloo on CPU included::

    torch.distributed.init_process_group("gloo")
    model = convert_sync_batchnorm(RegNetForImageClassification.from_pretrained(path).train())
    model = torch.nn.parallel.DistributedDataParallel(model)

Parameters and buffers are the same tensor objects after conversion (state dicts, names,
channels_last layout and ``fold_batchnorm`` are unchanged); eval mode, and training
without an initialised process group of more than one process, run plain BatchNorm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum across the process group; the gradient is the sum of the incoming gradients across the group."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad_output.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """A differentiable sum of ``tensor`` over the process group (default: the whole world)."""
    return _AllReduceSum.apply(tensor, group)


def _world_size(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch across the process group.

    Numerics follow ``nn.BatchNorm2d``: normalisation by the biased variance, running
    variance updated with the unbiased one (n / (n - 1) over the global count), float32
    statistics for lower-precision inputs. Any device, any backend.
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Plain BatchNorm in eval mode or alone; global-batch statistics across the group in training."""
        if not self.training or _world_size(self.process_group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        factor = self._update_factor()
        # Statistics in float32 at least (as BatchNorm2d does for half and bfloat16 inputs), float64 kept.
        values = input if input.dtype in (torch.float32, torch.float64) else input.float()
        axes = (0, 2, 3)
        local_count = values.new_tensor([input.numel() // input.shape[1]])
        totals = all_reduce_sum(torch.cat([values.sum(axes), local_count]), self.process_group)
        sums, count = totals[:-1], totals[-1]
        mean = sums / count
        # Two passes as on one device; the mean's gradient through this sum is zero across the group.
        squares = (values - mean.detach().view(1, -1, 1, 1)).square().sum(axes)
        variance = all_reduce_sum(squares, self.process_group) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = variance * (count / (count - 1).clamp(min=1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        scale = torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(values.dtype)
        # Centre first: x * scale - mean * scale would cancel digits where the mean is large.
        output = (values - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        if self.bias is not None:
            output = output + self.bias.to(values.dtype).view(1, -1, 1, 1)
        return output.to(input.dtype)

    def _update_factor(self) -> float:
        """The running statistics' update weight of this step (and count the step), as nn.BatchNorm2d."""
        if not self.track_running_stats or self.num_batches_tracked is None:
            return 0.0
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a SyncBatchNorm2d sharing its tensors; returns ``module``.

    Call before wrapping in DistributedDataParallel and before making the optimizer;
    ``revert_sync_batchnorm`` undoes it. ``process_group`` defaults to the whole world.
    """
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        return _convert(module, SyncBatchNorm2d, process_group=process_group)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm2d in ``module`` (in place) by a plain BatchNorm2d sharing its tensors."""
    if isinstance(module, SyncBatchNorm2d):
        return _convert(module, nn.BatchNorm2d)
    for name, child in module.named_children():
        reverted = revert_sync_batchnorm(child)
        if reverted is not child:
            setattr(module, name, reverted)
    return module


def _convert(norm: nn.BatchNorm2d, cls: type[nn.BatchNorm2d], **kwargs: Any) -> nn.BatchNorm2d:
    """A ``cls`` holding the same parameters and buffers (the same tensor objects) as ``norm``."""
    device = next(iter((*norm.parameters(), *norm.buffers())), torch.empty(0)).device
    converted = cls(
        norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, device=device, **kwargs
    )
    if norm.affine:
        converted.weight, converted.bias = norm.weight, norm.bias
    converted.running_mean, converted.running_var = norm.running_mean, norm.running_var
    converted.num_batches_tracked = norm.num_batches_tracked
    return converted.train(norm.training)


def fully_shard_blocks(model: nn.Module, **fsdp_options: Any) -> nn.Module:
    """Shard ``model`` with FSDP (``torch.distributed.fsdp.fully_shard``) in the plan's units; returns it.

    Every residual block is one unit (gathered whole while it runs), the stem and head are the
    root's; parameters are split along their first axis (output channels) over the mesh, as
    regnet_core.sharding plans. ``fsdp_options`` go to every ``fully_shard`` call (``mesh``,
    ``mp_policy``, ``reshard_after_forward``, ...). Works on a meta-device model too.
    FSDP takes contiguous parameters only, so the weights leave channels_last first.
    """
    from torch.distributed.fsdp import fully_shard

    from .modeling import Bottleneck

    model.to(memory_format=torch.contiguous_format)
    for block in [module for module in model.modules() if isinstance(module, Bottleneck)]:
        fully_shard(block, **fsdp_options)
    fully_shard(model, **fsdp_options)
    return model


__all__ = ["SyncBatchNorm2d", "all_reduce_sum", "convert_sync_batchnorm", "fully_shard_blocks", "revert_sync_batchnorm"]
