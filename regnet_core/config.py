"""RegNetConfig: the fields of Hugging Face transformers' RegNetConfig, plus the design space."""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .design import MAX_WIDTH, QUANTUM, design_stages, se_width, stage_geometry
from .errors import ConfigError, ConfigTypeError
from .io import atomic_write_text
from .rules import ACTIVATIONS  # hidden_act names and what each means are defined once, there

MODEL_TYPE = "regnet"
CONFIG_NAME = "config.json"
LAYER_TYPES = ("x", "y")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
DEFAULT_SE_RATIO = 0.25

# transformers' defaults, kept so that a config.json written with its defaults left out
# (transformers writes only what differs) reads back to the same model.
_DEFAULTS: dict[str, Any] = {
    "num_channels": 3,
    "embedding_size": 32,
    "hidden_sizes": [128, 192, 512, 1088],
    "depths": [2, 6, 12, 2],
    "groups_width": 64,
    "layer_type": "y",
    "hidden_act": "relu",
    "downsample_in_first_stage": True,
}
FIELDS = (
    *_DEFAULTS,
    "se_ratio",
    "bottleneck_ratio",
    "num_labels",
    "id2label",
    "label2id",
    "problem_type",
    "architectures",
)
# Keywords the backends' from_pretrained take besides config fields, for "did you mean" hints.
LOADING_KEYWORDS = (
    "reinit_head",
    "format",
    "config",
    "dtype",
    "with_head",
    "seed",
    "out_indices",
    "out_features",
    "allow_large",
)
# Fields that describe the network; a config dictionary without model_type must hold one of them.
_ARCHITECTURE_KEYS = ("hidden_sizes", "depths", "groups_width", "embedding_size", "layer_type", "num_channels")
MAX_LABELS = 2**20  # id2label is materialised: a million names is already ~100 MB of dictionary
MAX_BLOCKS = 100_000  # specs list every block (the largest published RegNet has 27)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers and bools (so configs stay JSON-ready); anything else unchanged."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _plain_list(value: Any) -> Any:
    """A list, tuple or 1-D array as a list of plain values; anything else unchanged (validation names it)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _shown(value: Any) -> str:
    """A value for an error message, with its type when repr alone would mislead ('8' vs 8, True vs 1)."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if isinstance(value, (str, bool, np.generic)) or not isinstance(value, (int, float, list, tuple, dict, type(None))):
        return f"{text} ({type(value).__name__})"
    return text


def nearest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (difflib), or None when none is close."""
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_field_names(names: Iterable[str], where: str, also: Sequence[str] = ()) -> None:
    """Raise ConfigError naming each name that is no RegNetConfig field, with the nearest field (or ``also`` keyword)."""
    unknown = [name for name in names if name not in FIELDS]
    if not unknown:
        return
    parts = []
    for name in unknown:
        guess = nearest_name(name, (*FIELDS, *also))
        parts.append(f"{name!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
    raise ConfigError(
        f"{where} got {'an unknown keyword' if len(unknown) == 1 else 'unknown keywords'} {', '.join(parts)}; "
        f"expected RegNetConfig fields: {', '.join(FIELDS)}"
    )


class RegNetConfig:
    """Configuration of a RegNet, field for field compatible with transformers' RegNetConfig.

    Extra to transformers: ``se_ratio`` (SE width = round(block input width * se_ratio);
    defaults to 0.25 for Y blocks and 0 for X blocks) and ``bottleneck_ratio`` (bottleneck
    width = stage width * ratio; 1.0 in every published RegNet). Keys of a config.json that
    this class does not know are kept in ``extra`` and written back unchanged (as
    transformers does); an unknown keyword to the constructor or ``copy`` is a ConfigError
    that names the nearest field. numpy integers and floats are taken as Python numbers;
    every other type, bool, NaN or infinity where a number belongs is a ConfigError.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        num_channels: int = 3,
        embedding_size: int = 32,
        hidden_sizes: Sequence[int] = (128, 192, 512, 1088),
        depths: Sequence[int] = (2, 6, 12, 2),
        groups_width: int = 64,
        layer_type: str = "y",
        hidden_act: str = "relu",
        downsample_in_first_stage: bool = True,
        se_ratio: float | None = None,
        bottleneck_ratio: float = 1.0,
        num_labels: int | None = None,
        id2label: Mapping[Any, str] | None = None,
        label2id: Mapping[str, Any] | None = None,
        problem_type: str | None = None,
        architectures: Sequence[str] | None = None,
        **unknown: Any,
    ) -> None:
        model_type = unknown.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"expected a config with model_type {MODEL_TYPE!r}, got {_shown(model_type)}")
        check_field_names(unknown, "RegNetConfig()")
        self.num_channels = num_channels
        self.embedding_size = embedding_size
        self.hidden_sizes = hidden_sizes
        self.depths = depths
        self.groups_width = groups_width
        self.layer_type = layer_type
        self.hidden_act = hidden_act
        self.downsample_in_first_stage = downsample_in_first_stage
        if se_ratio is None:
            se_ratio = DEFAULT_SE_RATIO if layer_type == "y" else 0.0
        self.se_ratio = se_ratio
        self.bottleneck_ratio = bottleneck_ratio
        self.problem_type = problem_type
        self.architectures = architectures
        self.extra: dict[str, Any] = {}
        self._set_labels(num_labels, id2label, label2id)
        self.validate()

    # ------------------------------------------------------------------ labels
    def _set_labels(
        self, num_labels: int | None, id2label: Mapping[Any, str] | None, label2id: Mapping[str, Any] | None
    ) -> None:
        num_labels = _plain(num_labels)
        if id2label is not None:
            try:
                id2label = {int(k): str(v) for k, v in id2label.items()}
            except (TypeError, ValueError, AttributeError, OverflowError) as error:
                raise ConfigError(f"id2label must map integer ids to names, got {_shown(id2label)}") from error
            if sorted(id2label) != list(range(len(id2label))):
                raise ConfigError(f"id2label keys must be 0..{len(id2label) - 1}, got {sorted(id2label)[:10]}")
            if num_labels is not None and num_labels != len(id2label):
                raise ConfigError(f"num_labels={_shown(num_labels)} but id2label has {len(id2label)} entries")
        else:
            if num_labels is None:
                num_labels = 2
            if not _is_int(num_labels) or not 0 <= num_labels <= MAX_LABELS:
                raise ConfigError(
                    f"num_labels must be an integer >= 0 (0: no classifier; at most {MAX_LABELS}), got {_shown(num_labels)}"
                )
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        if len(id2label) > MAX_LABELS:
            raise ConfigError(f"id2label may hold at most {MAX_LABELS} labels, got {len(id2label)}")
        self.id2label: dict[int, str] = id2label
        if label2id is None:
            label2id = {name: i for i, name in id2label.items()}
        else:
            try:
                label2id = {str(k): int(v) for k, v in label2id.items()}
            except (TypeError, ValueError, AttributeError, OverflowError) as error:
                raise ConfigError(f"label2id must map names to integer ids, got {_shown(label2id)}") from error
        self.label2id: dict[str, int] = label2id

    @property
    def num_labels(self) -> int:
        """Number of output classes (0: the classifier is the identity, as in transformers)."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if value != self.num_labels:
            self._set_labels(value, None, None)

    # -------------------------------------------------------------- validation
    def _normalise(self) -> None:
        """numpy scalars and arrays, and tuples, as the plain Python values a config holds."""
        for field in ("num_channels", "embedding_size", "groups_width", "se_ratio", "bottleneck_ratio"):
            setattr(self, field, _plain(getattr(self, field)))
        self.downsample_in_first_stage = _plain(self.downsample_in_first_stage)
        self.hidden_sizes = _plain_list(self.hidden_sizes)
        self.depths = _plain_list(self.depths)
        if isinstance(self.architectures, tuple):
            self.architectures = list(self.architectures)

    def validate(self) -> None:
        """Raise ConfigError naming every field that cannot describe a RegNet (numpy scalars are taken as numbers)."""
        self._normalise()
        problems: list[str] = []
        for field in ("num_channels", "embedding_size", "groups_width"):
            value = getattr(self, field)
            if not _is_int(value) or not 1 <= value <= MAX_WIDTH:
                problems.append(f"{field} must be a positive integer (at most {MAX_WIDTH}), got {_shown(value)}")
        for field in ("hidden_sizes", "depths"):
            value = getattr(self, field)
            if not isinstance(value, list) or not value:
                problems.append(f"{field} must be a non-empty list of positive integers, got {_shown(value)}")
            elif not all(_is_int(v) and 1 <= v <= MAX_WIDTH for v in value):
                problems.append(f"{field} must hold positive integers only (at most {MAX_WIDTH}), got {_shown(value)}")
        if isinstance(self.depths, list) and all(_is_int(v) for v in self.depths) and sum(self.depths) > MAX_BLOCKS:
            problems.append(f"depths must add up to at most {MAX_BLOCKS} blocks, got {sum(self.depths)}")
        if isinstance(self.hidden_sizes, list) and isinstance(self.depths, list):
            if len(self.hidden_sizes) != len(self.depths):
                problems.append(
                    f"hidden_sizes and depths must have one entry per stage, got {len(self.hidden_sizes)} "
                    f"widths {self.hidden_sizes} and {len(self.depths)} depths {self.depths}"
                )
        if not isinstance(self.layer_type, str) or self.layer_type not in LAYER_TYPES:
            problems.append(f"layer_type must be one of {LAYER_TYPES}, got {_shown(self.layer_type)}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act must be one of {ACTIVATIONS}, got {_shown(self.hidden_act)}")
        if not isinstance(self.downsample_in_first_stage, bool):
            problems.append(f"downsample_in_first_stage must be a bool, got {_shown(self.downsample_in_first_stage)}")
        if not _is_real(self.se_ratio) or not math.isfinite(self.se_ratio):
            problems.append(f"se_ratio must be a number (finite), got {_shown(self.se_ratio)}")
        elif self.layer_type == "x" and self.se_ratio != 0:
            problems.append(f"X blocks have no squeeze-and-excitation: expected se_ratio 0, got {self.se_ratio!r}")
        elif self.layer_type == "y" and not 0 < self.se_ratio <= 1:
            problems.append(f"Y blocks need 0 < se_ratio <= 1, got {self.se_ratio!r}")
        if (
            not _is_real(self.bottleneck_ratio)
            or not math.isfinite(self.bottleneck_ratio)
            or self.bottleneck_ratio <= 0
        ):
            problems.append(f"bottleneck_ratio must be a number > 0 (finite), got {_shown(self.bottleneck_ratio)}")
        if self.problem_type is not None and (
            not isinstance(self.problem_type, str) or self.problem_type not in PROBLEM_TYPES
        ):
            problems.append(f"problem_type must be None or one of {PROBLEM_TYPES}, got {_shown(self.problem_type)}")
        if self.architectures is not None and (
            not isinstance(self.architectures, list) or not all(isinstance(a, str) for a in self.architectures)
        ):
            problems.append(
                f"architectures must be None or a list of class names such as ['RegNetModel'], "
                f"got {_shown(self.architectures)}"
            )
        if not problems:
            problems.extend(self._geometry_problems())
        if problems:
            raise ConfigError("invalid RegNetConfig: " + "; ".join(problems))

    def _geometry_problems(self) -> list[str]:
        """Stage widths the group width does not divide, and SE widths that round to 0 (fields already typed)."""
        problems = []
        for width in self.hidden_sizes:
            try:
                stage_geometry(width, self.bottleneck_ratio, self.groups_width)
            except ValueError as error:
                problems.append(str(error))
        if self.layer_type == "y" and not problems:
            inputs = [self.embedding_size, *self.hidden_sizes[:-1]]
            for index, (block_input, width, depth) in enumerate(
                zip(inputs, self.hidden_sizes, self.depths, strict=True)
            ):
                narrowest = min(block_input, width) if depth > 1 else block_input
                if se_width(narrowest, self.se_ratio) < 1:
                    problems.append(
                        f"se_ratio {self.se_ratio} gives an SE width of 0 in stage {index} (block input width "
                        f"{narrowest}); expected at least 1 channel"
                    )
        return problems

    # --------------------------------------------------------- design space
    @classmethod
    def from_design(
        cls,
        depth: int,
        w0: float,
        wa: float,
        wm: float,
        group_width: int,
        se_ratio: float = 0.0,
        bottleneck_ratio: float = 1.0,
        stem_width: int = 32,
        quantum: int = QUANTUM,
        **kwargs: Any,
    ) -> RegNetConfig:
        """The RegNet of the paper's design space with these numbers (se_ratio > 0 gives Y blocks)."""
        if not _is_real(se_ratio) or not math.isfinite(se_ratio):
            raise ConfigError(f"invalid RegNet design: se_ratio must be a finite number, got {_shown(se_ratio)}")
        design = design_stages(depth, w0, wa, wm, group_width, bottleneck_ratio, quantum)
        return cls(
            embedding_size=stem_width,
            hidden_sizes=list(design.widths),
            depths=list(design.depths),
            groups_width=int(group_width),
            layer_type="y" if se_ratio > 0 else "x",
            se_ratio=float(se_ratio),
            bottleneck_ratio=float(bottleneck_ratio),
            **kwargs,
        )

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values, unknown keys included."""
        out: dict[str, Any] = dict(copy.deepcopy(self.extra))
        out.update(
            {
                "model_type": MODEL_TYPE,
                "num_channels": self.num_channels,
                "embedding_size": self.embedding_size,
                "hidden_sizes": list(self.hidden_sizes),
                "depths": list(self.depths),
                "groups_width": self.groups_width,
                "layer_type": self.layer_type,
                "hidden_act": self.hidden_act,
                "downsample_in_first_stage": self.downsample_in_first_stage,
                "se_ratio": self.se_ratio,
                "bottleneck_ratio": self.bottleneck_ratio,
                "id2label": {str(k): v for k, v in self.id2label.items()},
                "label2id": dict(self.label2id),
                "problem_type": self.problem_type,
            }
        )
        if self.architectures is not None:
            out["architectures"] = list(self.architectures)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegNetConfig:
        """Read a config dictionary (ours or transformers'); missing keys take transformers' defaults.

        Keys that are no field are kept in ``extra`` (and written back). A dictionary with
        neither ``model_type`` nor any architecture field is no RegNet config and is refused.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a RegNet config must be a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"expected a config with model_type {MODEL_TYPE!r}, got {_shown(model_type)}")
        if "model_type" not in data and not any(key in data for key in _ARCHITECTURE_KEYS):
            keys = sorted(str(key) for key in data)
            raise ConfigError(
                "not a RegNet config: expected model_type 'regnet' or RegNet fields such as "
                f"{', '.join(_ARCHITECTURE_KEYS[:4])}, got keys {keys[:12] if keys else 'none'}"
            )
        not_text = [key for key in data if not isinstance(key, str)]
        if not_text:
            raise ConfigError(f"config keys must be strings, got {_shown(not_text[0])}")
        data = copy.deepcopy(dict(data))
        data.pop("model_type", None)
        known = {key: value for key, value in data.items() if key in FIELDS}
        config = cls(**{**_DEFAULTS, **known})
        extra = {key: value for key, value in data.items() if key not in FIELDS}
        for key, value in extra.items():  # kept to be written back: each must be JSON
            try:
                json.dumps(value)
            except (TypeError, ValueError, RecursionError):
                raise ConfigError(f"config key {key!r} holds {_shown(value)}, which is no JSON value") from None
        config.extra = extra
        return config

    def to_json_string(self) -> str:
        """The config as indented, key-sorted JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RegNetConfig:
        """Read a config.json file."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"expected a config.json file, got the directory {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config file at {path}") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a JSON text file (not UTF-8 text); expected a config.json") from None
        except RecursionError:
            raise ConfigError(f"{path} nests too deeply to be a config.json") from None
        return cls.from_dict(data)

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write the config as JSON, atomically."""
        atomic_write_text(Path(path), self.to_json_string())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> RegNetConfig:
        """Read ``config.json`` from a checkpoint directory (or a path to the file itself)."""
        path = Path(directory)
        return cls.from_json_file(path / CONFIG_NAME if path.is_dir() else path)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` into a directory, creating it if needed."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.to_json_file(Path(directory) / CONFIG_NAME)

    # ------------------------------------------------------------------ misc
    def copy(self, **changes: Any) -> RegNetConfig:
        """A new config with some fields changed; a keyword that is no field is a ConfigError naming the nearest."""
        check_field_names(changes, "RegNetConfig.copy()", also=LOADING_KEYWORDS)
        data = self.to_dict()
        if "num_labels" in changes or "id2label" in changes:
            data.pop("id2label", None)
            data.pop("label2id", None)
        if "layer_type" in changes and "se_ratio" not in changes:
            data.pop("se_ratio", None)
        data.update(changes)
        return type(self).from_dict(data)

    def __eq__(self, other: object) -> bool:
        # Compared as JSON, as hashed: a NaN kept in an unknown key equals itself.
        return isinstance(other, RegNetConfig) and self.to_json_string() == other.to_json_string()

    def __hash__(self) -> int:
        # Hashable so that Flax modules holding a config can be static under jax.jit.
        return hash(self.to_json_string())

    def __repr__(self) -> str:
        return f"RegNetConfig({self.to_json_string()})"


def require_config(config: Any, where: str = "a RegNet model") -> RegNetConfig:
    """``config`` itself when it is a RegNetConfig, else a ConfigTypeError (a ConfigError and a TypeError) saying how to make one."""
    if not isinstance(config, RegNetConfig):
        hint = (
            " (RegNetConfig(**fields) or RegNetConfig.from_dict(data) makes one)" if isinstance(config, Mapping) else ""
        )
        raise ConfigTypeError(f"{where} expected a RegNetConfig, got {type(config).__name__}{hint}")
    return config


def reject_keywords(unknown: Mapping[str, Any], where: str, accepted: Sequence[str] = ()) -> None:
    """Raise ConfigTypeError for keywords ``where`` does not take: a config field is pointed to the config, others to the nearest name."""
    if not unknown:
        return
    parts = []
    for name in unknown:
        if name in FIELDS:
            parts.append(f"{name!r} (a RegNetConfig field: set it on the config, e.g. config.copy({name}=...))")
        else:
            guess = nearest_name(name, (*accepted, *FIELDS))
            parts.append(f"{name!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
    takes = f"; it takes {', '.join(accepted)}" if accepted else ""
    raise ConfigTypeError(
        f"{where} got {'an unknown keyword' if len(parts) == 1 else 'unknown keywords'} {', '.join(parts)}{takes}"
    )
