"""RegNetConfig: the fields of Hugging Face transformers' RegNetConfig, plus the design space."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .design import QUANTUM, design_stages, stage_geometry
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
_OWN_KEYS = (
    *_DEFAULTS,
    "se_ratio",
    "bottleneck_ratio",
    "num_labels",
    "id2label",
    "label2id",
    "problem_type",
    "architectures",
    "model_type",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class RegNetConfig:
    """Configuration of a RegNet, field for field compatible with transformers' RegNetConfig.

    Extra to transformers: ``se_ratio`` (SE width = round(block input width * se_ratio);
    defaults to 0.25 for Y blocks and 0 for X blocks) and ``bottleneck_ratio`` (bottleneck
    width = stage width * ratio; 1.0 in every published RegNet). Keys this class does not
    know are kept in ``extra`` and written back unchanged.
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
        **extra: Any,
    ) -> None:
        self.num_channels = num_channels
        self.embedding_size = embedding_size
        self.hidden_sizes = list(hidden_sizes) if isinstance(hidden_sizes, (list, tuple)) else hidden_sizes
        self.depths = list(depths) if isinstance(depths, (list, tuple)) else depths
        self.groups_width = groups_width
        self.layer_type = layer_type
        self.hidden_act = hidden_act
        self.downsample_in_first_stage = downsample_in_first_stage
        if se_ratio is None:
            se_ratio = DEFAULT_SE_RATIO if layer_type == "y" else 0.0
        self.se_ratio = se_ratio
        self.bottleneck_ratio = bottleneck_ratio
        self.problem_type = problem_type
        self.architectures = list(architectures) if architectures is not None else None
        extra.pop("model_type", None)
        self.extra: dict[str, Any] = dict(extra)
        self._set_labels(num_labels, id2label, label2id)
        self.validate()

    # ------------------------------------------------------------------ labels
    def _set_labels(
        self, num_labels: int | None, id2label: Mapping[Any, str] | None, label2id: Mapping[str, Any] | None
    ) -> None:
        if id2label is not None:
            try:
                id2label = {int(k): str(v) for k, v in id2label.items()}
            except (TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"id2label must map integer ids to names, got {id2label!r}") from error
            if sorted(id2label) != list(range(len(id2label))):
                raise ValueError(f"id2label keys must be 0..{len(id2label) - 1}, got {sorted(id2label)[:10]}")
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"num_labels={num_labels} but id2label has {len(id2label)} entries")
        else:
            if num_labels is None:
                num_labels = 2
            if not _is_int(num_labels) or num_labels < 0:
                raise ValueError(f"num_labels must be an integer >= 0, got {num_labels!r}")
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        self.id2label: dict[int, str] = id2label
        if label2id is None:
            label2id = {name: i for i, name in id2label.items()}
        else:
            try:
                label2id = {str(k): int(v) for k, v in label2id.items()}
            except (TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"label2id must map names to integer ids, got {label2id!r}") from error
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
    def validate(self) -> None:
        """Raise ValueError naming every field that cannot describe a RegNet."""
        problems: list[str] = []
        for field in ("num_channels", "embedding_size", "groups_width"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                problems.append(f"{field} must be a positive integer, got {value!r}")
        for field in ("hidden_sizes", "depths"):
            value = getattr(self, field)
            if not isinstance(value, list) or not value:
                problems.append(f"{field} must be a non-empty list of positive integers, got {value!r}")
            elif not all(_is_int(v) and v > 0 for v in value):
                problems.append(f"{field} must hold positive integers only, got {value!r}")
        if isinstance(self.hidden_sizes, list) and isinstance(self.depths, list):
            if len(self.hidden_sizes) != len(self.depths):
                problems.append(
                    f"hidden_sizes and depths must have one entry per stage, got {len(self.hidden_sizes)} "
                    f"widths {self.hidden_sizes} and {len(self.depths)} depths {self.depths}"
                )
        if self.layer_type not in LAYER_TYPES:
            problems.append(f"layer_type must be one of {LAYER_TYPES}, got {self.layer_type!r}")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if not isinstance(self.downsample_in_first_stage, bool):
            problems.append(f"downsample_in_first_stage must be a bool, got {self.downsample_in_first_stage!r}")
        if not isinstance(self.se_ratio, (int, float)) or isinstance(self.se_ratio, bool):
            problems.append(f"se_ratio must be a number, got {self.se_ratio!r}")
        elif self.layer_type == "x" and self.se_ratio != 0:
            problems.append(f"X blocks have no squeeze-and-excitation: expected se_ratio 0, got {self.se_ratio!r}")
        elif self.layer_type == "y" and not 0 < self.se_ratio <= 1:
            problems.append(f"Y blocks need 0 < se_ratio <= 1, got {self.se_ratio!r}")
        if not isinstance(self.bottleneck_ratio, (int, float)) or not self.bottleneck_ratio > 0:
            problems.append(f"bottleneck_ratio must be a number > 0, got {self.bottleneck_ratio!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            problems.append(f"problem_type must be None or one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if not problems:
            for width in self.hidden_sizes:
                try:
                    stage_geometry(width, self.bottleneck_ratio, self.groups_width)
                except ValueError as error:
                    problems.append(str(error))
        if problems:
            raise ValueError("invalid RegNetConfig: " + "; ".join(problems))

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
        """Read a config dictionary (ours or transformers'); missing keys take transformers' defaults."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a RegNet config must be a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"expected a config with model_type {MODEL_TYPE!r}, got {model_type!r}")
        kwargs = {**_DEFAULTS, **copy.deepcopy(dict(data))}
        kwargs.pop("model_type", None)
        return cls(**kwargs)

    def to_json_string(self) -> str:
        """The config as indented, key-sorted JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RegNetConfig:
        """Read a config.json file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no config file at {path}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
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
        """A new config with some fields changed."""
        data = self.to_dict()
        if "num_labels" in changes or "id2label" in changes:
            data.pop("id2label", None)
            data.pop("label2id", None)
        if "layer_type" in changes and "se_ratio" not in changes:
            data.pop("se_ratio", None)
        data.update(changes)
        return type(self).from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegNetConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        # Hashable so that Flax modules holding a config can be static under jax.jit.
        return hash(self.to_json_string())

    def __repr__(self) -> str:
        return f"RegNetConfig({self.to_json_string()})"
