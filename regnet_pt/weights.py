"""PyTorch <-> canonical weights. PyTorch's names and layouts are the canonical ones, so this
only moves tensors between torch and numpy and fits trunk/classifier prefixes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from regnet_core.specs import ModelSpec
from regnet_core.tensors import LazyTensor, materialize
from regnet_core.weights import prepare_state


def state_to_canonical(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A PyTorch state dict as contiguous numpy arrays (bfloat16 widened to float32)."""
    out = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[name] = np.array(tensor.numpy(), order="C", copy=True)
    return out


def state_from_canonical(
    state: Mapping[str, np.ndarray],
    spec: ModelSpec,
    *,
    with_head: bool,
    reinit_head: bool = False,
    context: str = "",
    copy: bool = True,
) -> dict[str, torch.Tensor]:
    """Checked canonical numpy arrays as torch tensors, named for the model (see core prepare_state).

    With ``copy=False`` the tensors may share memory with ``state`` (for callers that own it).
    """
    _, prepared = prepare_state(state, spec, with_head=with_head, reinit_head=reinit_head, context=context)
    tensors = {}
    for name, value in prepared.items():
        lazy = isinstance(value, LazyTensor)
        array = materialize(value)
        # A lazily read tensor is fresh memory already; an in-memory array is the caller's unless copy=False.
        fresh = (lazy and array.flags.writeable) or (not copy and array.flags.writeable)
        tensors[name] = torch.from_numpy(array if fresh else np.array(array, copy=True))
    return tensors
