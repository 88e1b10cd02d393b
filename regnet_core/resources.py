"""How much memory a model's weights take, and the guard that refuses one that cannot fit.

Every backend calls ``check_memory`` before it allocates a model's weights (PyTorch and
TensorFlow constructors and ``from_pretrained``, Flax ``init`` and loading; PyTorch models
built on the meta device allocate nothing and are not checked), and ``regnet init`` does too.
The estimate comes from the canonical parameter table (``regnet_core.weights``): float32
values and int64 BatchNorm counters, counted without building every block (a stage's blocks
after the second repeat it). The memory available is the kernel's ``MemAvailable`` (Linux),
else free physical pages; where neither can be read the guard lets the model through.

The override is explicit: ``allow_large=True`` to a constructor or ``from_pretrained``, or
the environment variable ``REGNET_ALLOW_LARGE=1`` (for the command line:
``regnet init ... --allow-large``).
"""

from __future__ import annotations

import math
import os

from .config import RegNetConfig
from .errors import ModelTooLargeError
from .specs import ModelSpec, build_model_spec
from .weights import BASE_PREFIX, BN_COUNT, block_prefix, parameter_table

ALLOW_LARGE_VARIABLE = "REGNET_ALLOW_LARGE"
_FLOAT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_COUNTER_BYTES = 8  # BatchNorm num_batches_tracked, int64


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (MemAvailable, else free pages); None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _table_bytes(spec: ModelSpec, with_head: bool) -> dict[str, int]:
    values = counters = 0
    for tensor in parameter_table(spec, with_head):
        if tensor.kind == BN_COUNT:
            counters += 1
        else:
            values += math.prod(tensor.shape)
    return {dtype: values * size + counters * _COUNTER_BYTES for dtype, size in _FLOAT_BYTES.items()}


def weight_memory(spec: ModelSpec, with_head: bool = True) -> dict[str, int]:
    """Bytes the weights take (parameters and BatchNorm buffers) at float32, bfloat16 and float16, from the table alone."""
    return _table_bytes(spec, with_head)


def estimate_weight_bytes(config: RegNetConfig, with_head: bool = True, dtype: str = "float32") -> int:
    """Bytes of a model's weights (as ``weight_memory``) without building a spec of every block.

    The blocks after the second of a stage repeat the second, so the table of the config
    with every depth capped at 2 is counted and the second block of each stage multiplied.
    """
    config.validate()
    capped = config.copy(depths=[min(depth, 2) for depth in config.depths])
    spec = build_model_spec(capped)
    table = parameter_table(spec, with_head)
    total = _table_bytes(spec, with_head)[dtype]
    prefix = BASE_PREFIX if with_head else ""
    for stage_index, depth in enumerate(config.depths):
        if depth <= 2:
            continue
        block = f"{prefix}{block_prefix(stage_index, 1)}."
        per_block = 0
        for tensor in table:
            if tensor.name.startswith(block):
                size = _COUNTER_BYTES if tensor.kind == BN_COUNT else math.prod(tensor.shape) * _FLOAT_BYTES[dtype]
                per_block += size
        total += (depth - 2) * per_block
    return total


def _allowed_by_environment() -> bool:
    return os.environ.get(ALLOW_LARGE_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def _gb(value: int) -> str:
    return f"{value / 1e9:.3g} GB"


def check_memory(
    config: RegNetConfig, with_head: bool = True, allow_large: bool = False, what: str = "the model"
) -> None:
    """Raise ModelTooLargeError when the model's float32 weights exceed the memory available now.

    Runs before anything is allocated. ``allow_large=True`` (or REGNET_ALLOW_LARGE=1) skips it.
    """
    if allow_large or _allowed_by_environment():
        return
    needed = estimate_weight_bytes(config, with_head)
    available = available_memory()
    if available is None or needed <= available:
        return
    raise ModelTooLargeError(
        f"{what}: the weights need about {_gb(needed)} at float32 but only {_gb(available)} of memory is available; "
        f"refused before allocating anything (hidden_sizes {_short(config.hidden_sizes)}, depths "
        f"{_short(config.depths)}). Pass allow_large=True (command line: --allow-large, or set "
        f"{ALLOW_LARGE_VARIABLE}=1) to try anyway"
    )


def _short(values: list[int]) -> str:
    text = str(list(values))
    return text if len(text) <= 60 else text[:57] + "...]"
