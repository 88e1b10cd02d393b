"""Image classification in any backend: a checkpoint and images in, the top-k labels with scores out.

The answer has the shape and the numbers of transformers' image-classification pipeline:
for each image a list of ``{"label": ..., "score": ...}``, best first, the scores a softmax
of the logits for single-label models and a sigmoid for multi-label ones (chosen as the
pipeline chooses, computed with its float32 formulas). Images go through the checkpoint's
own ``preprocessor_config.json`` (``regnet_core.preprocess``), else the default ImageNet
processing.

Labels are the config's ``id2label``, except for a 1000-class checkpoint that carries
transformers' placeholder names (``LABEL_0`` ...): those get the ImageNet-1k class names
shipped with the package (``regnet_core/data/imagenet_labels.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .backends import framework_name, get_backend, resolve_checkpoint
from .checkpoint import PREPROCESSOR_NAME
from .config import RegNetConfig
from .hub import looks_like_hub_id
from .preprocess import ImageLike, ImageProcessor, as_image_list, check_paths, image_name, load_rgb
from .zoo import get_entry

IMAGENET_CLASSES = 1000
SOFTMAX, SIGMOID, NONE = "softmax", "sigmoid", "none"
FUNCTIONS = (SOFTMAX, SIGMOID, NONE)
DEFAULT_BATCH_SIZE = 1  # one image per forward, as the pipeline runs them: its scores bit for bit in PyTorch


class NoClassifierError(ValueError):
    """A checkpoint without a classifier head (a trunk), given where class scores are needed."""


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order, as transformers' hub configs name them."""
    text = resources.files("regnet_core").joinpath("data", "imagenet_labels.json").read_text(encoding="utf-8")
    names = tuple(json.loads(text))
    if len(names) != IMAGENET_CLASSES:  # a damaged installation, not a user error
        raise RuntimeError(f"regnet_core/data/imagenet_labels.json holds {len(names)} names, expected 1000")
    return names


def has_placeholder_labels(config: RegNetConfig) -> bool:
    """True when id2label holds transformers' default names LABEL_0, LABEL_1, ..."""
    return all(config.id2label.get(i) == f"LABEL_{i}" for i in range(config.num_labels))


def class_names(config: RegNetConfig) -> list[str]:
    """Label of each class index: id2label, or the ImageNet names for 1000 placeholder labels."""
    if config.num_labels == IMAGENET_CLASSES and has_placeholder_labels(config):
        return list(imagenet_labels())
    return [config.id2label[i] for i in range(config.num_labels)]


def score_function(config: RegNetConfig) -> str:
    """'sigmoid', 'softmax' or 'none' for a config, chosen as transformers' image-classification pipeline does."""
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return SIGMOID
    if config.problem_type == "single_label_classification" or config.num_labels > 1:
        return SOFTMAX
    return NONE


def scores_from_logits(logits: np.ndarray, function: str) -> np.ndarray:
    """Scores of one image's logits (1-D) with the pipeline's float32 formulas."""
    if function not in FUNCTIONS:
        raise ValueError(f"expected function_to_apply one of {', '.join(FUNCTIONS)}, got {function!r}")
    logits = np.asarray(logits, dtype=np.float32)
    if function == SIGMOID:
        return 1.0 / (1.0 + np.exp(-logits))
    if function == SOFTMAX:
        shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits


def top_labels(scores: np.ndarray, labels: Sequence[str], top_k: int | None) -> list[dict[str, Any]]:
    """The top_k (all with None) ``{"label", "score"}`` entries, best first; ties keep class order."""
    entries = [{"label": labels[i], "score": score.item()} for i, score in enumerate(scores)]
    entries.sort(key=lambda entry: entry["score"], reverse=True)
    return entries if top_k is None else entries[: min(top_k, len(entries))]


def _check_top_k(top_k: int | None) -> int | None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"expected top_k a positive integer (or None for every class), got {top_k!r}")
    return top_k


def _no_classifier(source: str) -> NoClassifierError:
    return NoClassifierError(
        f"expected a checkpoint with a classifier (RegNetForImageClassification), got a trunk without one "
        f"(RegNetModel): {source}"
    )


def _load(checkpoint: str | os.PathLike, seed: int) -> tuple[RegNetConfig, Mapping[str, Any], str, ImageProcessor]:
    """(config, canonical state, description, processor) of a classifier: anything resolve_checkpoint takes.

    A trunk is refused before any weight is read or drawn.
    """
    text = os.fspath(checkpoint)
    if not (Path(text).exists() or looks_like_hub_id(text)):  # a zoo name: random weights, default processing
        if get_entry(text).is_trunk:
            raise _no_classifier(f"{text} (a zoo trunk)")
        config, state, _, source = resolve_checkpoint(text, seed)
        return config, state, source, ImageProcessor.default()
    from .convert import read_checkpoint

    read = read_checkpoint(text)
    if not read.with_head or read.config.num_labels < 1:
        raise _no_classifier(text)
    directory = read.foreign.path if read.foreign is not None else Path(text)
    if directory.is_dir() and (directory / PREPROCESSOR_NAME).is_file():
        processor = ImageProcessor.from_pretrained(directory)  # a broken file is an error, not the default
    elif read.foreign is not None and isinstance(read.foreign.extra.get("preprocessor"), Mapping):
        processor = ImageProcessor.from_dict(read.foreign.extra["preprocessor"])  # e.g. keras-applications' /255
    else:
        processor = ImageProcessor.default()
    return read.config, read.canonical_state(), text, processor


class ImageClassifier:
    """A checkpoint loaded once in one framework, with its labels and image processing; call it on images."""

    def __init__(
        self,
        model: Any,
        config: RegNetConfig,
        framework: str = "pt",
        processor: ImageProcessor | None = None,
        source: str = "",
    ) -> None:
        self.model = model
        self.config = config
        self.framework = framework_name(framework)
        self.backend = get_backend(self.framework)
        self.processor = processor or ImageProcessor.default()
        self.source = source
        self.labels = class_names(config)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, framework: str = "pt", seed: int = 0) -> ImageClassifier:
        """Load a checkpoint (any format or hub id; a zoo name gives seeded random weights) into a framework."""
        backend = get_backend(framework)  # a missing framework fails before any weight is read
        config, state, source, processor = _load(checkpoint, seed)
        if config.num_channels != 3:
            raise ValueError(f"expected a model taking 3-channel RGB images, got {source} with {config.num_channels}")
        model = backend.from_canonical(config, state, True)
        return cls(model, config, framework, processor, source)

    def iter_logits(
        self, images: ImageLike | Sequence[ImageLike], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[np.ndarray]:
        """Each image's logits (1-D float32), in order; images are read and run batch_size at a time."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"expected batch_size a positive integer, got {batch_size!r}")
        items = as_image_list(images)
        check_paths(items)
        for start in range(0, len(items), batch_size):
            chunk = [
                self.processor.process_rgb(load_rgb(item, image_name(item, start + offset, len(items))))
                for offset, item in enumerate(items[start : start + batch_size])
            ]
            for group in _same_shape_runs(chunk):  # without resizing, images of other sizes run apart
                pixel_values = np.ascontiguousarray(np.stack(group).transpose(0, 3, 1, 2))
                logits = np.asarray(self.backend.run(self.model, pixel_values, output_hidden_states=False)["logits"])
                yield from logits.astype(np.float32, copy=False)

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        top_k: int | None = 5,
        function_to_apply: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[list[dict[str, Any]]]:
        """For each image, the top_k ``{"label", "score"}`` entries, best first (top_k None: every class)."""
        top_k = _check_top_k(top_k)
        function = score_function(self.config) if function_to_apply is None else str(function_to_apply).lower()
        scores_from_logits(np.zeros(1, np.float32), function)  # an unknown function fails before any image is read
        return [
            top_labels(scores_from_logits(logits, function), self.labels, top_k)
            for logits in self.iter_logits(images, batch_size)
        ]


def _same_shape_runs(arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
    runs: list[list[np.ndarray]] = []
    for array in arrays:
        if runs and runs[-1][0].shape == array.shape:
            runs[-1].append(array)
        else:
            runs.append([array])
    return runs


def predict(
    checkpoint: str | os.PathLike,
    images: ImageLike | Sequence[ImageLike],
    framework: str = "pt",
    top_k: int | None = 5,
    function_to_apply: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> list[list[dict[str, Any]]]:
    """Classify images with a checkpoint: for each image the top_k ``{"label", "score"}``, best first."""
    _check_top_k(top_k)
    items = as_image_list(images)
    check_paths(items)  # a missing image fails before the model loads
    classifier = ImageClassifier.from_checkpoint(checkpoint, framework, seed)
    return classifier(items, top_k=top_k, function_to_apply=function_to_apply, batch_size=batch_size)
