"""Run the backends on one input and compare every output, pair by pair.

Outputs are compared in NCHW (the NHWC backends' adapters transpose back): every hidden
state (stem, then each stage), the last hidden state, the pooled output and the logits;
``check_feature_parity`` compares the feature maps of each framework's RegNetBackbone.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .backends import framework_name, get_backend, resolve_checkpoint
from .config import RegNetConfig
from .features import feature_info

# fp32 tolerances: logits within 1e-4 absolute and 1e-5 of max |logit|; every other
# output within 1e-5 of its own largest magnitude.
LOGITS_ATOL = 1e-4
RTOL = 1e-5


@dataclass(frozen=True)
class OutputDifference:
    """Max absolute and relative (to the reference's max magnitude) difference of one output."""

    name: str
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class PairReport:
    """All output differences between two frameworks, in forward order."""

    reference: str
    other: str
    outputs: list[OutputDifference] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every output is within tolerance."""
        return all(o.passed for o in self.outputs)

    @property
    def first_divergence(self) -> str | None:
        """The earliest output (in forward order) above tolerance, if any."""
        return next((o.name for o in self.outputs if not o.passed), None)

    def worst(self, name: str) -> OutputDifference | None:
        """The difference of a named output."""
        return next((o for o in self.outputs if o.name == name), None)


@dataclass
class ParityReport:
    """The result of a parity run over several frameworks."""

    source: str
    input_shape: tuple[int, ...]
    seed: int
    frameworks: list[str]
    pairs: list[PairReport]

    @property
    def passed(self) -> bool:
        """True when every pair agrees on every output."""
        return all(pair.passed for pair in self.pairs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "source": self.source,
            "input_shape": list(self.input_shape),
            "seed": self.seed,
            "frameworks": self.frameworks,
            "tolerance": {"logits_max_abs": LOGITS_ATOL, "max_rel": RTOL},
            "passed": self.passed,
            "pairs": [
                {
                    "frameworks": [pair.reference, pair.other],
                    "passed": pair.passed,
                    "first_divergence": pair.first_divergence,
                    "outputs": [asdict(o) for o in pair.outputs],
                }
                for pair in self.pairs
            ],
        }


def compare_arrays(name: str, reference: np.ndarray, other: np.ndarray) -> OutputDifference:
    """Difference of one output; shapes must agree (a layout bug shows up here)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        return OutputDifference(name, float("inf"), float("inf"), False)
    max_abs = float(np.max(np.abs(reference - other))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = max_rel <= RTOL and (name != "logits" or max_abs <= LOGITS_ATOL)
    return OutputDifference(name, max_abs, max_rel, passed)


def _named_outputs(outputs: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    named = []
    for index, hidden in enumerate(outputs.get("hidden_states") or []):
        named.append((f"hidden_states[{index}]" + (" (stem)" if index == 0 else f" (stage {index})"), hidden))
    for key in ("last_hidden_state", "pooler_output", "logits"):
        if key in outputs:
            named.append((key, outputs[key]))
    return named


def compare_outputs(reference: Mapping[str, Any], other: Mapping[str, Any]) -> list[OutputDifference]:
    """Compare every output two backends produced, in forward order."""
    theirs = dict(_named_outputs(other))
    differences = []
    for name, value in _named_outputs(reference):
        if name not in theirs:
            differences.append(OutputDifference(name, float("inf"), float("inf"), False))
        else:
            differences.append(compare_arrays(name, value, theirs[name]))
    return differences


def random_input(batch: int, image_size: int, num_channels: int, seed: int) -> np.ndarray:
    """A seeded standard-normal NCHW float32 batch."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, num_channels, image_size, image_size)).astype(np.float32)


def run_outputs(
    config: RegNetConfig,
    state: Mapping[str, np.ndarray],
    with_head: bool,
    frameworks: Sequence[str],
    pixel_values: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Outputs (NCHW numpy) of each framework on one input; one model alive at a time."""
    results = {}
    for name in frameworks:
        backend = get_backend(name)
        model = backend.from_canonical(config, state, with_head)
        results[name] = backend.run(model, pixel_values, output_hidden_states=True)
        del model
    return results


def check_parity(
    config: RegNetConfig,
    state: Mapping[str, np.ndarray],
    with_head: bool,
    frameworks: Sequence[str],
    pixel_values: np.ndarray,
    source: str = "",
    seed: int = 0,
) -> ParityReport:
    """Run every framework on ``pixel_values`` and compare each pair."""
    names = [framework_name(f) for f in frameworks]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"parity needs at least two different frameworks, got {list(frameworks)}")
    results = run_outputs(config, state, with_head, names, pixel_values)
    pairs = [PairReport(a, b, compare_outputs(results[a], results[b])) for a, b in itertools.combinations(names, 2)]
    return ParityReport(source, tuple(pixel_values.shape), seed, names, pairs)


def parity(
    ckpt: str,
    frameworks: Sequence[str] = ("pt", "tf", "flax"),
    batch: int = 2,
    image_size: int = 224,
    seed: int = 0,
) -> ParityReport:
    """Parity of a checkpoint directory or zoo name (seeded random weights) on a seeded random batch."""
    config, state, with_head, source = resolve_checkpoint(ckpt, seed)
    pixel_values = random_input(batch, image_size, config.num_channels, seed)
    return check_parity(config, state, with_head, frameworks, pixel_values, source, seed)


def backbone_adapter(name: str) -> Any:
    """A framework's backbone module (``regnet_pt.backbone``, ...): ``backbone_from_canonical`` and ``run_backbone``."""
    backend = get_backend(name)  # a missing framework raises BackendUnavailableError naming the extra
    return importlib.import_module(backend.__name__.rsplit(".", 1)[0] + ".backbone")


def run_feature_maps(
    config: RegNetConfig,
    state: Mapping[str, np.ndarray],
    frameworks: Sequence[str],
    pixel_values: np.ndarray,
    out_indices: Sequence[int] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Feature maps (NCHW numpy) of each framework's backbone on one input; one model alive at a time."""
    results = {}
    for name in frameworks:
        adapter = backbone_adapter(name)
        model = adapter.backbone_from_canonical(config, state, out_indices)
        results[name] = adapter.run_backbone(model, pixel_values)["feature_maps"]
        del model
    return results


def compare_feature_maps(
    reference: Sequence[np.ndarray], other: Sequence[np.ndarray], names: Sequence[str]
) -> list[OutputDifference]:
    """Compare two backbones' feature maps, named ``feature_maps[i] (stageK)``, in forward order."""
    differences = []
    for position, name in enumerate(names):
        label = f"feature_maps[{position}] ({name})"
        if position >= len(reference) or position >= len(other):
            differences.append(OutputDifference(label, float("inf"), float("inf"), False))
        else:
            differences.append(compare_arrays(label, reference[position], other[position]))
    return differences


def check_feature_parity(
    config: RegNetConfig,
    state: Mapping[str, np.ndarray],
    frameworks: Sequence[str],
    pixel_values: np.ndarray,
    out_indices: Sequence[int] | None = None,
    source: str = "",
    seed: int = 0,
) -> ParityReport:
    """Run every framework's backbone (trunk or classifier weights) on ``pixel_values`` and compare the feature maps."""
    names = [framework_name(f) for f in frameworks]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"parity needs at least two different frameworks, got {list(frameworks)}")
    outputs = [info.name for info in feature_info(config, out_indices)]
    results = run_feature_maps(config, state, names, pixel_values, out_indices)
    pairs = [
        PairReport(a, b, compare_feature_maps(results[a], results[b], outputs))
        for a, b in itertools.combinations(names, 2)
    ]
    return ParityReport(source, tuple(pixel_values.shape), seed, names, pairs)


def format_report(report: ParityReport) -> str:
    """A human-readable table of every pair and output."""
    lines = [
        f"parity of {report.source} on a seeded N(0, 1) batch {report.input_shape} (NCHW, float32)",
        f"tolerance: logits max_abs <= {LOGITS_ATOL:g} and max_rel <= {RTOL:g}; other outputs max_rel <= {RTOL:g}",
        f"{'pair':<10}{'output':<28}{'max_abs':>12}{'max_rel':>12}",
    ]
    for pair in report.pairs:
        label = f"{pair.reference}-{pair.other}"
        for o in pair.outputs:
            flag = "" if o.passed else "  ABOVE TOLERANCE"
            lines.append(f"{label:<10}{o.name:<28}{o.max_abs:>12.3e}{o.max_rel:>12.3e}{flag}")
    for pair in report.pairs:
        if pair.passed:
            logits = pair.worst("logits") or pair.worst("pooler_output") or pair.outputs[-1]
            lines.append(f"{pair.reference} vs {pair.other}: agree ({logits.name} max_abs {logits.max_abs:.3e})")
        else:
            lines.append(f"{pair.reference} vs {pair.other}: DIVERGE, first at {pair.first_divergence}")
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)
