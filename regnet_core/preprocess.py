"""ImageNet preprocessing as RegNet checkpoints ship it: transformers' ConvNext image processing, numpy and Pillow only.

The steps, for each image (the settings are a ``preprocessor_config.json``'s):

1. **To 8-bit RGB.** Paths are opened with Pillow and, like PIL images, turned upright by
   their EXIF orientation (as transformers' image-classification pipeline loads images).
   Every image then becomes an 8-bit RGB image, following these rules:

   * 8-bit images (uint8 arrays, PIL modes L, RGB, RGBA, P, CMYK, ...): as they are; PIL
     modes other than RGB go through Pillow's ``convert("RGB")``.
   * Grayscale (2-D arrays, (H, W, 1) arrays, mode L): the value is copied to R, G and B.
   * Alpha (RGBA arrays, modes RGBA / LA / PA): dropped, not composited (as Pillow's
     ``convert("RGB")`` and the pipeline do).
   * 16-bit (uint16 arrays, modes ``I;16*``): 0..65535 is scaled to 0..255 by
     ``round(v / 257)``. transformers' processor refuses values above 255 and its pipeline
     clips them to 255 (most 16-bit photographs turn white); both are wrong for 16-bit data.
   * Floats (float arrays, mode F): values in [0, 1] are intensities, scaled by 255 and
     rounded to the nearest integer (``np.rint``, as scikit-image's ``img_as_ubyte``). Whole
     numbers with a value above 1 are 8-bit values 0..255 (as transformers takes them).
     transformers truncates ``x * 255`` instead of rounding, so ``k / 255`` can come back as
     ``k - 1``, and then divides by 255 twice (it warns about it); neither is copied here.
   * Other integer arrays (int32, int64, mode I, ...): values must lie in 0..255.

2. **Resize** with Pillow (``resample``, Pillow's filter numbers; 3 is bicubic). For a
   ``size`` (``{"shortest_edge": N}``) under 384 the shorter side becomes
   ``int(N / crop_pct)`` and the longer ``int(short * long / short_in)``, then the centre
   ``N x N`` is cropped (``top = (h - N) // 2``; zero padding where the image is smaller, as
   transformers pads). From 384 up the image is resized straight to ``N x N``, no crop.
3. **Rescale** (``x * rescale_factor`` computed in float64, stored as float32) and
   **normalise** (``(x - mean) / std`` in float32): transformers' arithmetic, step by step.

Guarantee: for any image that is 8-bit RGB after step 1, the output equals transformers'
``ConvNextImageProcessor`` (same settings, same Pillow) on that RGB image bit for bit
(tolerance 0): the resize is the same Pillow call on the same uint8 pixels and every later
step is the same correctly rounded float32 / float64 operation in the same order. For
grayscale, RGBA, palette and other PIL modes that is transformers on ``image.convert("RGB")``
(what its pipeline feeds the processor; the processor alone refuses 2-D and 4-channel
images). For 16-bit and float inputs it is transformers on the 8-bit image of the rules
above.

A ``preprocessor_config.json`` key that is missing means what it means to transformers
(``ConvNextImageProcessor``'s defaults: shortest edge 384, bilinear, mean and std 0.5);
``ImageProcessor()`` itself is the RegNet checkpoints' processing (224, crop 0.875,
bicubic, ImageNet mean and std). Unknown keys are kept and written back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .checkpoint import DEFAULT_PREPROCESSOR, PREPROCESSOR_NAME

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WARP_SIZE = 384  # from this shortest edge up, images are resized to size x size without a crop

# transformers' ConvNextImageProcessor defaults: what a preprocessor_config.json means where it omits a key.
TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"shortest_edge": 384},
    "crop_pct": 224 / 256,
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
SETTINGS = tuple(TRANSFORMERS_DEFAULTS)
PROCESSOR_TYPES = ("ConvNextImageProcessor", "ConvNextImageProcessorFast")
FEATURE_EXTRACTOR_TYPES = ("ConvNextFeatureExtractor",)
RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"
_DATA_FORMATS = {
    "channels_first": CHANNELS_FIRST,
    "nchw": CHANNELS_FIRST,
    "channels_last": CHANNELS_LAST,
    "nhwc": CHANNELS_LAST,
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

ImageLike = str | os.PathLike | np.ndarray | Image.Image


class ImageInputError(ValueError):
    """An image that cannot be preprocessed: says what was expected and what came."""


class PreprocessorConfigError(ValueError):
    """A preprocessor setting that is invalid or not ConvNext-style: says what was expected and what came."""


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise PreprocessorConfigError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _check_number(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise PreprocessorConfigError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise PreprocessorConfigError(f"{name} must be positive, got {value!r}")
    return value


def _check_size(value: Any) -> int:
    size = value.get("shortest_edge") if isinstance(value, Mapping) and set(value) == {"shortest_edge"} else value
    if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
        raise PreprocessorConfigError(
            f'size must be a positive integer or {{"shortest_edge": N}} (ConvNext processing), got {value!r}'
        )
    return int(size)


def _check_resample(value: Any) -> int:
    if isinstance(value, str) and value.lower() in RESAMPLE_NAMES:
        return RESAMPLE_NAMES[value.lower()]
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) not in RESAMPLE_NAMES.values():
        raise PreprocessorConfigError(
            f"resample must be a Pillow filter number 0..5 (3 = bicubic) or one of {', '.join(RESAMPLE_NAMES)}, "
            f"got {value!r}"
        )
    return int(value)


def _check_channels(name: str, value: Any, nonzero: bool = False) -> float | list[float]:
    if isinstance(value, (list, tuple, np.ndarray)):
        values = [_check_number(name, v) for v in value]
        if len(values) != 3:
            raise PreprocessorConfigError(f"{name} must be one number or 3 (R, G, B), got {len(values)}: {value!r}")
        if nonzero and any(v == 0 for v in values):
            raise PreprocessorConfigError(f"{name} must not contain 0, got {value!r}")
        return [float(v) for v in values]
    number = _check_number(name, value)
    if nonzero and number == 0:
        raise PreprocessorConfigError(f"{name} must not be 0")
    return float(number)


def _data_format(value: str) -> str:
    key = str(value).lower()
    if key not in _DATA_FORMATS:
        raise ValueError(f"data_format must be 'channels_first' (NCHW) or 'channels_last' (NHWC), got {value!r}")
    return _DATA_FORMATS[key]


class ImageProcessor:
    """transformers' ConvNextImageProcessor in numpy and Pillow: the processing RegNet checkpoints ship with.

    ``processor(images)`` takes one image or a list (PIL images, HWC numpy arrays, paths) and
    returns a float32 batch, NCHW by default (``data_format="channels_last"``: NHWC). See the
    module docstring for what each kind of image becomes and what is guaranteed.
    """

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Mapping[str, int] = 224,
        crop_pct: float | None = 0.875,
        resample: int | str = 3,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = IMAGENET_MEAN,
        image_std: float | Sequence[float] = IMAGENET_STD,
        **extra: Any,
    ) -> None:
        self.do_resize = _check_bool("do_resize", do_resize)
        self.size = _check_size(size)
        self.crop_pct = float(_check_number("crop_pct", 224 / 256 if crop_pct is None else crop_pct, positive=True))
        self.resample = _check_resample(resample)
        self.do_rescale = _check_bool("do_rescale", do_rescale)
        self.rescale_factor = _check_number("rescale_factor", rescale_factor)
        self.do_normalize = _check_bool("do_normalize", do_normalize)
        self.image_mean = _check_channels("image_mean", image_mean)
        self.image_std = _check_channels("image_std", image_std, nonzero=True)
        kind = extra.get("image_processor_type")
        if kind is None and "feature_extractor_type" in extra:
            kind = extra["feature_extractor_type"]
            if kind not in FEATURE_EXTRACTOR_TYPES:
                raise PreprocessorConfigError(f"expected feature_extractor_type ConvNextFeatureExtractor, got {kind!r}")
        elif kind is not None and kind not in PROCESSOR_TYPES:
            raise PreprocessorConfigError(
                f"expected image_processor_type {' or '.join(PROCESSOR_TYPES)} (the processing RegNet checkpoints use), "
                f"got {kind!r}"
            )
        self.extra = dict(extra)
        self.extra.setdefault("image_processor_type", PROCESSOR_TYPES[0])

    # ------------------------------------------------------------------ config
    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ImageProcessor:
        """A processor from preprocessor_config.json contents; missing keys take transformers' defaults."""
        if not isinstance(config, Mapping):
            raise PreprocessorConfigError(
                f"expected a JSON object of preprocessor settings, got {type(config).__name__}"
            )
        values = {**TRANSFORMERS_DEFAULTS, **config}
        for key in ("size", "image_mean", "image_std"):  # null means the default, as in transformers
            if values[key] is None:
                values[key] = TRANSFORMERS_DEFAULTS[key]
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ImageProcessor:
        """A processor from a preprocessor_config.json file."""
        path = Path(path)
        if not path.is_file():
            raise PreprocessorConfigError(f"expected a preprocessor config file at {path}, found none")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise PreprocessorConfigError(
                f"{path}: expected JSON preprocessor settings, cannot read it ({error})"
            ) from None
        try:
            return cls.from_dict(data)
        except PreprocessorConfigError as error:
            raise PreprocessorConfigError(f"{path}: {error}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageProcessor:
        """A processor from a checkpoint directory's preprocessor_config.json, or from that file itself."""
        path = Path(path)
        return cls.from_json_file(path / PREPROCESSOR_NAME if path.is_dir() else path)

    @classmethod
    def default(cls) -> ImageProcessor:
        """The processing of the published RegNet checkpoints (regnet_core.checkpoint.DEFAULT_PREPROCESSOR)."""
        return cls.from_dict(DEFAULT_PREPROCESSOR)

    def to_dict(self) -> dict[str, Any]:
        """The settings as preprocessor_config.json holds them (transformers' keys; unknown keys kept)."""
        settings = {
            "do_resize": self.do_resize,
            "size": {"shortest_edge": self.size},
            "crop_pct": self.crop_pct,
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
        }
        return {"image_processor_type": self.extra["image_processor_type"], **settings, **self.extra}

    def to_json_string(self) -> str:
        """The settings as JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write preprocessor_config.json into ``directory`` (created if needed); returns the file's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PREPROCESSOR_NAME
        path.write_text(self.to_json_string())
        return path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageProcessor) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={getattr(self, key)!r}" for key in SETTINGS)
        return f"ImageProcessor({settings})"

    @property
    def output_size(self) -> int | None:
        """The side of the square images this processor returns (None without resizing)."""
        return self.size if self.do_resize else None

    # ------------------------------------------------------------------ processing
    def __call__(self, images: ImageLike | Sequence[ImageLike], data_format: str = CHANNELS_FIRST) -> np.ndarray:
        """Preprocess one image or a list into a float32 batch: (N, 3, H, W), or (N, H, W, 3) with channels_last."""
        return self.preprocess(images, data_format)

    def preprocess(self, images: ImageLike | Sequence[ImageLike], data_format: str = CHANNELS_FIRST) -> np.ndarray:
        """Preprocess one image or a list into a float32 batch: (N, 3, H, W), or (N, H, W, 3) with channels_last."""
        layout = _data_format(data_format)
        items = as_image_list(images)
        check_paths(items)
        arrays = []
        for index, item in enumerate(items):
            where = image_name(item, index, len(items))
            arrays.append(self.process_rgb(load_rgb(item, where)))
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise ImageInputError(
                f"expected images of one size to batch (do_resize is false), got sizes "
                f"{', '.join(f'{h}x{w}' for h, w, _ in sorted(shapes))}"
            )
        batch = np.stack(arrays)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if layout == CHANNELS_FIRST else batch

    def process_rgb(self, image: Image.Image) -> np.ndarray:
        """One 8-bit RGB PIL image through resize, crop, rescale and normalise: float32 (H, W, 3)."""
        if self.do_resize:
            width, height = image.size
            if self.size < WARP_SIZE:
                image = image.resize(self._short_side_size(height, width)[::-1], resample=self.resample)
                pixels = center_crop(np.asarray(image), self.size)
            else:
                pixels = np.asarray(image.resize((self.size, self.size), resample=self.resample))
        else:
            pixels = np.asarray(image)
        values = pixels
        if self.do_rescale:  # transformers: float64 product, then float32
            values = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            values = values.astype(np.float32, copy=False)
            mean = np.array(_per_channel(self.image_mean), dtype=np.float32)
            std = np.array(_per_channel(self.image_std), dtype=np.float32)
            values = (values - mean) / std
        return values.astype(np.float32, copy=False)

    def _short_side_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing the shorter side to int(size / crop_pct), as transformers computes it."""
        short_target = int(self.size / self.crop_pct)
        short, long = (width, height) if width <= height else (height, width)
        long_target = int(short_target * long / short)
        return (long_target, short_target) if width <= height else (short_target, long_target)


def _per_channel(value: float | list[float]) -> list[float]:
    return list(value) if isinstance(value, list) else [value] * 3


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size of an HWC array, zero-padded where it is smaller (transformers' center_crop)."""
    height, width = pixels.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + size, left : left + size]
    new_height, new_width = max(size, height), max(size, width)
    padded = np.zeros((new_height, new_width) + pixels.shape[2:], dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
    padded[top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_height, top + size), max(0, left) : min(new_width, left + size)]


# ---------------------------------------------------------------------- inputs
def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or a batch as a list: a list or tuple is a batch, as is a 4-D (N, H, W, C) array."""
    if isinstance(images, (list, tuple)):
        items = list(images)
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ImageInputError("expected at least one image, got an empty batch")
    return items


def image_name(item: ImageLike, index: int, count: int) -> str:
    """How errors name an image: 'image', or 'image 3' in a batch, followed by its path when it has one."""
    name = f"image {index}" if count > 1 else "image"
    if isinstance(item, (str, os.PathLike)):
        name += f" {os.fspath(item)}"
    return name


def check_paths(images: Sequence[ImageLike]) -> None:
    """Fail early, before any work, when a path in a batch is missing or not a file."""
    for index, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
            where = image_name(item, index, len(images))
            what = "a directory" if Path(item).is_dir() else "no such file"
            raise ImageInputError(f"{where}: expected an image file, got {what}")


def open_image(path: str | os.PathLike, where: str | None = None) -> Image.Image:
    """Open and decode an image file with Pillow (errors name the file and what was expected)."""
    path = Path(path)
    where = where or f"image {os.fspath(path)}"
    if not path.is_file():
        raise ImageInputError(
            f"{where}: expected an image file, got {'a directory' if path.is_dir() else 'no such file'}"
        )
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError:
        raise ImageInputError(
            f"{where}: expected an image file (PNG, JPEG, ...), got a file Pillow cannot identify"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageInputError(
            f"{where}: expected an image within Pillow's size limit, got {error} "
            "(raise PIL.Image.MAX_IMAGE_PIXELS to open it anyway)"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageInputError(f"{where}: expected a readable image file, cannot decode it ({error})") from None


def load_rgb(image: ImageLike, where: str | None = None) -> Image.Image:
    """Any accepted image (path, PIL image, HWC array) as an 8-bit RGB PIL image, by the module's rules."""
    where = where or image_name(image, 0, 1)
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, where)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, where)
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_rgb8(image, where))
    raise ImageInputError(
        f"{where}: expected a path, a PIL image or a numpy array (H, W, C), got {type(image).__module__}."
        f"{type(image).__qualname__}"
    )


def _pil_to_rgb(image: Image.Image, where: str) -> Image.Image:
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError):  # unreadable EXIF: keep the image as stored
        pass
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_array_to_rgb8(np.asarray(image), f"{where} (PIL mode {image.mode})"))
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ImageInputError(
            f"{where}: expected an image Pillow can turn into RGB, got mode {image.mode} ({error})"
        ) from None


def _array_to_rgb8(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageInputError(
            f"{where}: expected an array of shape (H, W) or (H, W, C) (a batch: a list, or (N, H, W, C)), "
            f"got {array.ndim} dimensions {array.shape}"
        )
    if array.shape[2] not in (1, 3, 4):
        hint = ""
        if array.shape[0] in (1, 3, 4):
            hint = (
                f"; it looks channels-first, pass array.transpose(1, 2, 0) (shape {array.shape[1:] + array.shape[:1]})"
            )
        raise ImageInputError(
            f"{where}: expected channels last with 1 (gray), 3 (RGB) or 4 (RGBA) channels, got shape {array.shape}{hint}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageInputError(f"{where}: expected an image of at least 1x1 pixels, got shape {array.shape}")
    pixels = to_uint8(array, where)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def to_uint8(array: np.ndarray, where: str = "image") -> np.ndarray:
    """Pixel values as uint8 by the module's rules (16-bit scaled, floats in [0, 1] scaled and rounded)."""
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype.kind == "u" and dtype.itemsize == 2:  # uint16, either byte order (PIL mode I;16B)
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageInputError(
                f"{where}: expected {dtype} pixel values 0..255 (or uint8 / uint16 / floats in [0, 1]), "
                f"got values {low}..{high}"
            )
        return array.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageInputError(f"{where}: expected finite {dtype} pixel values, got NaN or infinity")
        low, high = float(values.min()), float(values.max())
        if low >= 0 and high <= 1:
            return np.rint(values * 255).astype(np.uint8)
        if low >= 0 and high <= 255 and np.array_equal(values, np.floor(values)):
            return values.astype(np.uint8)
        raise ImageInputError(
            f"{where}: expected {dtype} pixel values in [0, 1] (or whole numbers 0..255), got values in [{low:g}, {high:g}]"
        )
    raise ImageInputError(f"{where}: expected uint8, uint16, integer or float pixel values, got dtype {dtype}")
