"""``torchvision``: torchvision's RegNet state dicts (``regnet_x_400mf`` ... ``regnet_y_128gf``), read only.

A plain state dict in a .pth / .pt / .bin pickle or a .safetensors file (a ``{"model": ...}``
or ``{"state_dict": ...}`` training wrapper is unwrapped). Block names count stages from 1
and blocks from 0 (``trunk_output.block2.block2-0``). A ``num_classes=0`` model keeps a
zero-row ``fc``, which is read as no classifier. Three torchvision models round their widths
differently from pycls (regnet_x_400mf, regnet_y_800mf, regnet_y_8gf); their widths are read
from the shapes like any other's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RegNetConfig
from ..containers import tensor_file_kind
from ..errors import CheckpointError
from .base import ForeignCheckpoint, Format, NameTable, ReferenceUnavailable
from .timm import drop_empty_head, lazy_to_torch, read_state_file, torch_runner

_BLOCK = "trunk_output.block{stage1}.block{stage1}-{block}"
TORCHVISION_TABLE = NameTable(
    [
        ("stem.0.weight", "stem.conv.weight"),
        ("stem.1.{bn}", "stem.bn.{bn}"),
        (f"{_BLOCK}.proj.0.weight", "s{stage}.b{block}.proj.conv.weight"),
        (f"{_BLOCK}.proj.1.{{bn}}", "s{stage}.b{block}.proj.bn.{bn}"),
        (f"{_BLOCK}.f.a.0.weight", "s{stage}.b{block}.a.conv.weight"),
        (f"{_BLOCK}.f.a.1.{{bn}}", "s{stage}.b{block}.a.bn.{bn}"),
        (f"{_BLOCK}.f.b.0.weight", "s{stage}.b{block}.b.conv.weight"),
        (f"{_BLOCK}.f.b.1.{{bn}}", "s{stage}.b{block}.b.bn.{bn}"),
        (f"{_BLOCK}.f.se.fc1.{{wb}}", "s{stage}.b{block}.se.reduce.{wb}"),
        (f"{_BLOCK}.f.se.fc2.{{wb}}", "s{stage}.b{block}.se.expand.{wb}"),
        (f"{_BLOCK}.f.c.0.weight", "s{stage}.b{block}.c.conv.weight"),
        (f"{_BLOCK}.f.c.1.{{bn}}", "s{stage}.b{block}.c.bn.{bn}"),
        ("fc.{wb}", "head.{wb}"),
    ]
)


class TorchvisionFormat(Format):
    """torchvision's RegNet names (``stem.0``, ``trunk_output.block1.block1-0.f.a.0``, ``fc``)."""

    name = "torchvision"
    description = "torchvision state dict (.pth / .pt / .bin / .safetensors)"
    library = "torchvision"

    def claims(self, path: Path) -> bool:
        return path.is_file() and tensor_file_kind(path) is not None and path.suffix != ".pyth"

    def open(self, path: Path) -> ForeignCheckpoint:
        if not path.is_file():
            raise CheckpointError(f"expected a torchvision weights file, got {path} ({_what(path)})")
        state = read_state_file(path)
        tensors = drop_empty_head(state.tensors, "fc.weight", "fc.bias", state.notes, state.ignored)
        return ForeignCheckpoint(path, self.name, [path], tensors, None, state.ignored, state.notes)

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return TORCHVISION_TABLE.map_to_neutral(names)

    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        try:
            import torch
            import torchvision
        except Exception as error:  # a CUDA build of torchvision beside CPU torch fails with other errors too
            raise ReferenceUnavailable(f"torchvision does not import here ({type(error).__name__}: {error})") from None
        if config.hidden_act != "relu":
            raise ReferenceUnavailable(f"torchvision's RegNets use ReLU, this model has {config.hidden_act}")
        with_head = "fc.weight" in foreign.tensors
        num_classes = foreign.tensors["fc.weight"].shape[0] if with_head else 0
        state = dict(foreign.tensors)
        shapes = {n: tuple(t.shape) for n, t in state.items() if not n.endswith("num_batches_tracked")}
        if not with_head:
            width = config.hidden_sizes[-1]
            shapes.update({"fc.weight": (0, width), "fc.bias": (0,)})
        tried = []
        for name in torchvision_candidates(torchvision, config):
            model = _build_on_meta(torch, torchvision, name, num_classes)
            theirs = {n: tuple(t.shape) for n, t in model.state_dict().items() if not n.endswith("num_batches_tracked")}
            tried.append(name)
            if theirs != shapes:
                continue
            model = model.to_empty(device="cpu").eval()
            values = {n: lazy_to_torch(t) for n, t in state.items()}
            if not with_head:
                values.update({"fc.weight": torch.zeros(shapes["fc.weight"]), "fc.bias": torch.zeros(0)})
            model.load_state_dict(values, strict=True)
            if not with_head:
                model.fc = torch.nn.Identity()  # the pooled features, as our trunk gives them
            return torch_runner(model)
        detail = (
            f"compared the tensor shapes of {', '.join(tried)}"
            if tried
            else f"none has stage widths {config.hidden_sizes} and depths {config.depths}"
        )
        raise ReferenceUnavailable(f"no torchvision constructor has this architecture ({detail})")


def _what(path: Path) -> str:
    return "a directory" if path.is_dir() else "no such path"


def torchvision_candidates(torchvision: Any, config: RegNetConfig) -> list[str]:
    """torchvision's RegNet constructors of this model's kind (X or Y) whose stage widths and depths are this model's."""
    import torch

    prefix = f"regnet_{config.layer_type}_"
    names = sorted(name for name in dir(torchvision.models) if name.startswith(prefix))
    wanted = (list(config.hidden_sizes), list(config.depths))
    return [name for name in names if _stages(torch, torchvision, name) in (wanted, None)]


class _Probed(Exception):
    """Raised to stop a torchvision constructor once its block parameters are known."""


def _cpu_block_params(torch: Any, torchvision: Any, on_params: Callable[[Any], Any]) -> Any:
    """A patch of torchvision's BlockParams.from_init_params that computes on the CPU and hands the result on."""
    from unittest import mock

    block_params = torchvision.models.regnet.BlockParams
    original = block_params.from_init_params

    def on_cpu(cls: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):
            return on_params(original(*args, **kwargs))

    return mock.patch.object(block_params, "from_init_params", classmethod(on_cpu))


def _stages(torch: Any, torchvision: Any, name: str) -> tuple[list[int], list[int]] | None:
    """(stage widths, depths) of a torchvision constructor without building it (None when they cannot be read)."""
    found: list[Any] = []

    def stop(params: Any) -> Any:
        found.append(params)
        raise _Probed

    try:
        with _cpu_block_params(torch, torchvision, stop):
            getattr(torchvision.models, name)(weights=None)
    except _Probed:
        pass
    except Exception:  # noqa: BLE001 (another torchvision version: let the shapes decide)
        return None
    if not found:
        return None
    widths, depths = getattr(found[0], "widths", None), getattr(found[0], "depths", None)
    return (list(widths), list(depths)) if widths is not None and depths is not None else None


def _build_on_meta(torch: Any, torchvision: Any, name: str, num_classes: int) -> Any:
    """torchvision's ``name`` model with tensors on the meta device (its width arithmetic runs on the CPU)."""
    with _cpu_block_params(torch, torchvision, lambda params: params), torch.device("meta"):
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


FORMAT = TorchvisionFormat()
