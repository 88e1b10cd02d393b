"""Small shared helpers for the tests: tiny configs and the reference zoo figures."""

from __future__ import annotations

import json
from pathlib import Path

from regnet_core import RegNetConfig

DATA = Path(__file__).parent / "data"
# Copied from the project's reference: pycls's published zoo figures at 224 with 1000 classes.
REFERENCE = json.loads((DATA / "regnet_zoo.json").read_text())
REFERENCE_ZOO = {entry["name"]: entry for entry in REFERENCE["zoo"]}
SMALL_ZOO = [name for name, entry in REFERENCE_ZOO.items() if entry["pycls_at_224"]["flops"] <= 1.7e9]


def tiny_config(layer_type: str = "y", num_labels: int = 5, **changes) -> RegNetConfig:
    """A three-stage RegNet small enough for fast tests, with grouped convs and projections."""
    fields = dict(
        embedding_size=8,
        hidden_sizes=[8, 16, 24],
        depths=[1, 2, 2],
        groups_width=8,
        layer_type=layer_type,
        num_labels=num_labels,
    )
    fields.update(changes)
    return RegNetConfig(**fields)


def requires(module: str):
    """Skip a test when an optional framework is not installed."""
    import importlib.util

    import pytest

    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


def tensorflow_onednn_on_avx512() -> bool:
    """Whether TensorFlow runs its oneDNN kernels on an AVX-512 CPU, where three faults show that we have not fixed.

    Seen on an AVX-512 AMD EPYC with TensorFlow 2.21 (oneDNN on by TensorFlow's own default
    there), and not with TF_ENABLE_ONEDNN_OPTS=0: a fused convolution + bias + ReLU turns NaN
    into 0 (reproduced with three TensorFlow ops alone); an empty batch in a compiled fit
    reaches BatchNorm with the input's channel count; one epoch on digits lowers the held-out
    loss by 12%, not the 20% the other backends reach (cause not found). The tests of those
    behaviours record an expected failure there, only when the fault shows (docs/RELIABILITY.md).
    """
    from regnet_core.bench import cpu_flags

    if "avx512f" not in cpu_flags():
        return False
    from regnet_tf.modeling import onednn_enabled

    return onednn_enabled()
