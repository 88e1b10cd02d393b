"""Feature maps for detection and segmentation: which outputs a backbone returns, and what each holds.

Outputs are numbered as timm's ``features_only`` and transformers' backbones number them:
index 0 is the stem, 1..N are the stages, named ``"stem"``, ``"stage1"``, ..., ``"stageN"``
(transformers' backbone names). ``out_indices`` may be negative (counted from the last
stage, as in timm and transformers); the default is every stage, ``(1, ..., N)``: the
inputs of an FPN-style neck, without the stride-2 stem (ask for index 0 to get it, as
timm's default ``(0, 1, 2, 3, 4)`` does). transformers' own default, the last stage only,
is ``(-1,)``.

Channels and reductions (stride from the input) come from the specs here and nowhere else.
A backbone builds the stem and the stages up to the last one it returns, no further
(``backbone_spec``), and loads a trunk or classifier checkpoint after checking it against the
whole trunk (``select_backbone_state``): the head and the stages it does not build are dropped.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import RegNetConfig
from .outputs import ModelOutput
from .specs import HeadSpec, ModelSpec, build_model_spec
from .weights import parameter_table, prepare_state

STEM_NAME = "stem"
STAGE_PREFIX = "stage"
BACKBONE_OUTPUT_FIELDS = ("feature_maps", "hidden_states")


class FeatureSelectionError(ValueError):
    """An ``out_indices`` / ``out_features`` choice that names no valid set of outputs; says what was expected."""


@dataclass(frozen=True)
class FeatureInfo:
    """One output of a backbone: its name, its index (0 = stem), its channels and its stride from the input."""

    name: str
    index: int
    num_chs: int
    reduction: int


def _model_spec(spec: ModelSpec | RegNetConfig) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, RegNetConfig):
        return build_model_spec(spec)
    raise TypeError(f"expected a ModelSpec or a RegNetConfig, got {type(spec).__name__}")


def stage_names(spec: ModelSpec | RegNetConfig) -> tuple[str, ...]:
    """Names of every output a backbone can return, by index: ("stem", "stage1", ..., "stageN")."""
    return (STEM_NAME, *(f"{STAGE_PREFIX}{index}" for index in range(1, len(_model_spec(spec).stages) + 1)))


def default_out_indices(spec: ModelSpec | RegNetConfig) -> tuple[int, ...]:
    """Every stage, without the stem: (1, ..., N)."""
    return tuple(range(1, len(_model_spec(spec).stages) + 1))


def _expected(names: Sequence[str]) -> str:
    last = len(names) - 1
    return f"ints in [{-len(names)}, {last}] (0 = stem, 1..{last} = stage1..stage{last}, negative from the end)"


def _ordered_unique(indices: Sequence[int], given: Any, names: Sequence[str], what: str) -> tuple[int, ...]:
    seen: dict[int, int] = {}
    for position, index in enumerate(indices):
        if index in seen:
            raise FeatureSelectionError(
                f"{what} must name each output once, got {given!r}: entries {seen[index]} and {position} "
                f"both name {names[index]!r}"
            )
        seen[index] = position
    result = tuple(indices)
    if list(result) != sorted(result):
        raise FeatureSelectionError(
            f"{what} must be in forward order (stem first, as the backbone returns them), got {given!r}; "
            f"expected {tuple(sorted(result))!r}"
        )
    return result


def _from_indices(out_indices: Any, names: Sequence[str]) -> tuple[int, ...]:
    expected = _expected(names)
    is_vector = isinstance(out_indices, np.ndarray) and out_indices.ndim == 1
    if isinstance(out_indices, (str, bytes)) or not (isinstance(out_indices, Sequence) or is_vector):
        if isinstance(out_indices, int) and not isinstance(out_indices, bool):
            raise FeatureSelectionError(
                f"out_indices must be a sequence of {expected}, got the int {out_indices} "
                f"(timm reads an int as 'the last n'; pass ({out_indices},) for one output or "
                f"range(-{out_indices}, 0) for the last {out_indices})"
            )
        raise FeatureSelectionError(f"out_indices must be a sequence of {expected}, got {out_indices!r}")
    given = tuple(out_indices.tolist() if is_vector else out_indices)
    if not given:
        raise FeatureSelectionError(f"out_indices must name at least one output ({expected}), got {given!r}")
    resolved = []
    for item in given:
        if isinstance(item, bool):
            raise FeatureSelectionError(f"out_indices must be a sequence of {expected}, got the bool {item!r}")
        try:
            index = operator.index(item)
        except TypeError:
            raise FeatureSelectionError(
                f"out_indices must be a sequence of {expected}, got {item!r} ({type(item).__name__}) in {given!r}"
            ) from None
        if not -len(names) <= index < len(names):
            raise FeatureSelectionError(
                f"out_indices must be {expected} for this {len(names) - 1}-stage model, got {index} in {given!r}"
            )
        resolved.append(index % len(names))
    return _ordered_unique(resolved, given, names, "out_indices")


def _from_features(out_features: Any, names: Sequence[str]) -> tuple[int, ...]:
    expected = f"names among {', '.join(names)}"
    if isinstance(out_features, (str, bytes)) or not isinstance(out_features, Sequence):
        hint = f" (for one output pass ({out_features!r},))" if isinstance(out_features, str) else ""
        raise FeatureSelectionError(f"out_features must be a sequence of {expected}, got {out_features!r}{hint}")
    given = tuple(out_features)
    if not given:
        raise FeatureSelectionError(f"out_features must name at least one output ({expected}), got {given!r}")
    unknown = [name for name in given if name not in names]
    if unknown:
        raise FeatureSelectionError(
            f"out_features must be {expected}, got unknown {', '.join(map(repr, unknown))} in {given!r}"
        )
    return _ordered_unique([names.index(name) for name in given], given, names, "out_features")


def resolve_out_indices(
    spec: ModelSpec | RegNetConfig, out_indices: Sequence[int] | None = None, out_features: Sequence[str] | None = None
) -> tuple[int, ...]:
    """The outputs to return as non-negative indices in forward order (0 = stem), checked.

    ``out_indices`` (ints, negative from the end) or ``out_features`` (names such as "stage2")
    choose them; both may be given when they agree. Neither: every stage, (1, ..., N).
    Duplicates, out-of-range or unknown entries, and entries out of forward order raise
    FeatureSelectionError naming what was expected and what came.
    """
    names = stage_names(spec)
    from_indices = None if out_indices is None else _from_indices(out_indices, names)
    from_features = None if out_features is None else _from_features(out_features, names)
    if from_indices is not None and from_features is not None and from_indices != from_features:
        raise FeatureSelectionError(
            f"out_indices {tuple(out_indices)!r} and out_features {tuple(out_features)!r} name different outputs "
            f"({', '.join(names[i] for i in from_indices)} vs {', '.join(names[i] for i in from_features)}); "
            "give one of them, or both naming the same outputs"
        )
    if from_indices is not None:
        return from_indices
    if from_features is not None:
        return from_features
    return default_out_indices(spec)


def feature_info(
    spec: ModelSpec | RegNetConfig, out_indices: Sequence[int] | None = None, out_features: Sequence[str] | None = None
) -> tuple[FeatureInfo, ...]:
    """Name, index, channels (num_chs) and reduction (stride from the input) of each chosen output, in forward order."""
    spec = _model_spec(spec)
    indices = resolve_out_indices(spec, out_indices, out_features)
    names = stage_names(spec)
    widths = [spec.stem.width]
    reductions = [spec.stem.stride]
    for stage in spec.stages:
        widths.append(stage.width)
        reductions.append(reductions[-1] * stage.stride)
    return tuple(FeatureInfo(names[i], i, widths[i], reductions[i]) for i in indices)


def backbone_spec(spec: ModelSpec | RegNetConfig, out_indices: Sequence[int] | None = None) -> ModelSpec:
    """The spec of what a backbone builds: the stem and the stages up to the last chosen output, no head."""
    spec = _model_spec(spec)
    indices = resolve_out_indices(spec, out_indices)
    num_stages = indices[-1]  # index i is stage i's output; index 0 (the stem) needs no stage
    stages = spec.stages[:num_stages]
    width = stages[-1].width if stages else spec.stem.width
    return dataclasses.replace(spec, stages=stages, head=HeadSpec(input_width=width, num_labels=0))


def select_backbone_state(
    state: Mapping[str, Any],
    spec: ModelSpec | RegNetConfig,
    out_indices: Sequence[int] | None = None,
    context: str = "",
) -> dict[str, Any]:
    """The canonical tensors a backbone holds (RegNetModel names), from a trunk or classifier state.

    The state is first checked strictly against the whole trunk (as a RegNetModel loads it: a
    classifier's head is dropped), so a checkpoint of another architecture is refused with
    every problem named; then the stages the backbone does not build are left out. Lazily read
    tensors stay lazy: the ones left out are never read.
    """
    spec = _model_spec(spec)
    _, prepared = prepare_state(state, spec, with_head=False, context=context)
    return {tensor.name: prepared[tensor.name] for tensor in parameter_table(backbone_spec(spec, out_indices), False)}


def require_whole_trunk(spec: ModelSpec | RegNetConfig, out_indices: Sequence[int], action: str) -> None:
    """Raise FeatureSelectionError unless a backbone with these outputs builds every stage (to save it as a trunk)."""
    spec = _model_spec(spec)
    indices = resolve_out_indices(spec, out_indices)
    if indices[-1] != len(spec.stages):
        names = stage_names(spec)
        raise FeatureSelectionError(
            f"cannot {action}: this backbone stops at {names[indices[-1]]} of {len(spec.stages)} stages (out_indices "
            f"{indices!r}), so the later stages' weights were never built; expected a backbone whose out_indices "
            f"reach the last stage ({len(spec.stages)} or -1)"
        )


class FeatureMapsMixin:
    """``channels``, ``reductions`` and ``stage_names`` of a backbone, read off its ``feature_info`` and config."""

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of each returned feature map, in order."""
        return tuple(info.num_chs for info in self.feature_info)  # type: ignore[attr-defined]

    @property
    def reductions(self) -> tuple[int, ...]:
        """Stride from the input of each returned feature map, in order."""
        return tuple(info.reduction for info in self.feature_info)  # type: ignore[attr-defined]

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Every output the model could return, by index: ("stem", "stage1", ...)."""
        return stage_names(self.config)  # type: ignore[attr-defined]


class BackboneOutput(ModelOutput):
    """A backbone's outputs by attribute, key or position: ``feature_maps`` and, when asked, ``hidden_states``.

    ``feature_maps`` is a tuple of the chosen outputs in forward order; ``hidden_states`` the
    stem's and every stage's output that the backbone computed. None fields are left out, so
    ``to_tuple()`` is ``(feature_maps,)`` or ``(feature_maps, hidden_states)`` as with
    transformers' BackboneOutput.
    """

    def __init__(self, pairs: Any = (), /, **fields: Any) -> None:
        fields = {**dict(pairs), **fields}
        unknown = set(fields) - set(BACKBONE_OUTPUT_FIELDS)
        if unknown:
            raise TypeError(f"unknown output fields {sorted(unknown)}; expected some of {BACKBONE_OUTPUT_FIELDS}")
        OrderedDict.__init__(
            self, ((name, fields[name]) for name in BACKBONE_OUTPUT_FIELDS if fields.get(name) is not None)
        )

    def __getattr__(self, name: str) -> Any:
        if name in BACKBONE_OUTPUT_FIELDS:
            return self.get(name)
        raise AttributeError(name)
