"""The one rule for pixel values, shared by the three backends and the command line.

Every backend's forward calls ``check_pixel_values`` with the batch's shape and dtype
before anything else runs, and casts when ``needs_cast`` says so. The policy:

- **rank and layout:** a 4-D batch, NCHW for PyTorch, NHWC for TensorFlow and Flax; a batch
  in the other layout is recognised and the transpose named.
- **channels:** exactly ``config.num_channels`` on the channel axis.
- **dtype:** float16, bfloat16, float32 and float64 are accepted and cast to the model's
  computation dtype (PyTorch: its weights' dtype; TensorFlow: the Keras dtype policy's
  compute dtype; Flax: the module's ``dtype``), so ``np.random.rand`` (float64) or a half
  precision batch just works; outputs come in the model's dtype, never the input's.
  Integer and boolean batches are refused: a uint8 image holds 0..255, the model expects
  normalised floats, and a silent cast would give confident nonsense. The message points
  to ``regnet_core.preprocess.ImageProcessor``, which makes model inputs from images.
  Other dtypes (complex, float8, strings) are refused.
- **empty:** a batch of 0 images, or images of height or width 0, is refused (BatchNorm in
  training mode would otherwise write NaN into its running statistics, and frameworks
  disagree on what an empty forward returns).
- **values:** not inspected: NaN and infinity propagate to the outputs (checking would cost a
  pass over the batch and a device synchronisation on every call). Filter them beforehand.
- **small images:** any height and width >= 1 runs. Each stride-2 step maps a side ``n`` to
  ``(n - 1) // 2 + 1`` (symmetric padding), so an image smaller than the total stride
  (32 for five stride-2 steps) ends in 1 x 1 feature maps; the logits are then those of
  that single position.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import PixelValuesError

# Floating dtypes a batch may come in; each is cast to the model's computation dtype.
ACCEPTED_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
LAYOUTS = ("NCHW", "NHWC")
_PREPROCESS_HINT = (
    "expected floating-point values normalised as the model was trained (make them from images with "
    "regnet_core.preprocess.ImageProcessor, or convert and normalise yourself)"
)


def dtype_base_name(dtype_name: str) -> str:
    """A framework's dtype name without its module prefix ('torch.float16' -> 'float16')."""
    name = str(dtype_name)
    for prefix in ("torch.", "tf.", "jnp.", "np.", "numpy."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _axes(layout: str) -> tuple[str, ...]:
    return ("batch", "channels", "height", "width") if layout == "NCHW" else ("batch", "height", "width", "channels")


def check_pixel_values(
    shape: Sequence[int | None], is_floating: bool, dtype_name: str, num_channels: int, layout: str
) -> None:
    """Raise PixelValuesError unless a batch's shape and dtype follow the module's policy (see the module docstring).

    ``shape`` may hold None for sizes unknown until run time (TensorFlow's symbolic batch);
    ``layout`` is "NCHW" or "NHWC".
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shape = tuple(shape)
    if len(shape) != 4:
        raise PixelValuesError(
            f"pixel_values must be a 4-D {layout} batch ({', '.join(_axes(layout))}), "
            f"got a {len(shape)}-D tensor of shape {shape}"
        )
    name = dtype_base_name(dtype_name)
    if not is_floating or name not in ACCEPTED_FLOAT_DTYPES:
        kind = "floating point" if not is_floating else f"one of {', '.join(ACCEPTED_FLOAT_DTYPES)}"
        raise PixelValuesError(f"pixel_values must be {kind}, got dtype {dtype_name}; {_PREPROCESS_HINT}")
    channel_axis, other_axis, other_layout = (1, 3, "NHWC") if layout == "NCHW" else (3, 1, "NCHW")
    channels = shape[channel_axis]
    if channels is not None and channels != num_channels:
        hint = ""
        if shape[other_axis] == num_channels:
            permutation = "(0, 2, 3, 1)" if layout == "NHWC" else "(0, 3, 1, 2)"
            hint = f"; it looks like an {other_layout} batch, expected {layout} (transpose with {permutation})"
        raise PixelValuesError(
            f"pixel_values must have {num_channels} channels on axis {channel_axis} ({layout}), got shape {shape}{hint}"
        )
    if shape[0] == 0:
        raise PixelValuesError(f"pixel_values is an empty batch (shape {shape}); expected at least one image")
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    if any(shape[axis] == 0 for axis in spatial):
        raise PixelValuesError(
            f"pixel_values holds images of height or width 0 (shape {shape}, {layout}); expected sides of at least 1"
        )


def needs_cast(dtype_name: str, compute_dtype_name: str) -> bool:
    """True when an accepted batch must be cast to the model's computation dtype before the first layer."""
    return dtype_base_name(dtype_name) != dtype_base_name(compute_dtype_name)
