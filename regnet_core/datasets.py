"""A real, small dataset for the fine-tuning examples and tests: scikit-learn's handwritten digits as RGB images.

``load_digits`` in scikit-learn ships 1797 grayscale 8x8 images of the digits 0-9 (values
0 to 16) inside the package, so nothing is downloaded. ``load_digits_rgb`` upsamples them
bilinearly (half-pixel centres, as Pillow and PyTorch's ``align_corners=False``) to
``size x size``, scales to [0, 1], normalises with the training split's mean and standard
deviation and repeats the gray channel three times. The train / test split is stratified
and fixed by ``seed``: every framework trains and is scored on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# The largest value in scikit-learn's digits (4x4 blocks of 32x32 bitmaps: counts 0..16).
DIGITS_MAX = 16.0
DIGITS_CLASSES = tuple(str(digit) for digit in range(10))
SPLITS = ("train", "test", "all")
DATA_FORMATS = ("channels_first", "channels_last")


class DatasetUnavailableError(ImportError):
    """The dataset's package is not installed; the message names the extra that brings it."""


@dataclass(frozen=True)
class ImageSplit:
    """Images (float32, NCHW or NHWC) and their integer labels (int64)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.ndim != 4 or labels.shape != (images.shape[:1]) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"expected a 4-D image batch and one integer label per image, got images {images.shape} "
                f"and labels {labels.shape} {labels.dtype}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, count: int) -> ImageSplit:
        """The first ``count`` examples (the split is already in a seeded random order)."""
        return ImageSplit(self.images[:count], self.labels[:count])


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) matrix of bilinear resampling with half-pixel centres (edges clamped)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    source = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    source = np.clip(source, 0.0, in_size - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DatasetUnavailableError(
            f"the digits dataset ships with scikit-learn, which is not installed ({error}); "
            "install it with: pip install 'regnet-trio[train]' (from a checkout: "
            "pip install -c constraints.txt -e '.[train]')"
        ) from None
    bunch = load_digits()
    return np.asarray(bunch.images, np.float64), np.asarray(bunch.target, np.int64)


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) indices: per class, a seeded shuffle gives round(n * test_fraction) to test.

    Each returned index array is in a seeded random order (classes interleaved).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * test_fraction))
        test.append(members[:cut])
        train.append(members[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_digits_rgb(
    split: str = "train",
    size: int = 32,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    data_format: str = "channels_first",
) -> ImageSplit:
    """scikit-learn's digits as normalised float32 RGB images (``size x size``) with int64 labels 0-9.

    ``split`` is "train" (80% by default: 1438 images), "test" (the held-out 20% of each class: 359) or
    "all" (train then test). ``data_format`` "channels_first" gives NCHW (PyTorch),
    "channels_last" NHWC (TensorFlow, Flax). Mean and std come from the training split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (the digits are 8x8), got {size!r}")
    labels, scaled, train_index, test_index, mean, std = _digits_scaled(int(size), seed, test_fraction)
    index = {"train": train_index, "test": test_index, "all": np.concatenate([train_index, test_index])}[split]
    gray = ((scaled[index] - mean) / std).astype(np.float32)
    axis = 1 if data_format == "channels_first" else 3
    images = np.ascontiguousarray(np.repeat(np.expand_dims(gray, axis), 3, axis=axis))
    return ImageSplit(images, labels[index].copy())


def _digits_scaled(size: int, seed: int, test_fraction: float) -> tuple:
    """(labels, every image resized and scaled to [0, 1], train index, test index, training mean, training std)."""
    raw, labels = _raw_digits()
    train_index, test_index = split_indices(labels, test_fraction, seed)
    resample = bilinear_matrix(raw.shape[1], size)
    scaled = np.einsum("oh,nhw,pw->nop", resample, raw / DIGITS_MAX, resample)  # (n, size, size)
    train_values = scaled[train_index]
    return labels, scaled, train_index, test_index, float(train_values.mean()), float(train_values.std())


def digits_image_processor(size: int = 32, *, seed: int = 0, test_fraction: float = 0.2) -> Any:
    """The ImageProcessor of a digits model: an 8-bit image of a digit (ink bright) as load_digits_rgb prepares it.

    Resize to ``size`` x ``size`` (bilinear, no crop), scale to [0, 1], normalise every
    channel with the training split's mean and standard deviation. A fine-tuned digits
    checkpoint saves this beside its weights, so that ``regnet predict`` and
    ``ImageProcessor.from_pretrained`` prepare new images as training did.
    """
    from .preprocess import ImageProcessor

    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (the digits are 8x8), got {size!r}")
    *_, mean, std = _digits_scaled(int(size), seed, test_fraction)
    return ImageProcessor(
        do_resize=True,
        size=int(size),
        crop_pct=1.0,
        resample=2,  # bilinear
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[mean] * 3,
        image_std=[std] * 3,
    )


def digits_id2label() -> dict[int, str]:
    """{0: "0", ..., 9: "9"}: the config labels of a digits classifier."""
    return dict(enumerate(DIGITS_CLASSES))
