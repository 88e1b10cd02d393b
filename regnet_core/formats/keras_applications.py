"""``keras-applications``: Keras 2 ``keras.applications.RegNetX*/Y*`` weights (``regnetx002.h5``, ``..._notop.h5``), read only.

The files are Keras 2 HDF5 weight files (``model.save_weights("x.h5")``; a whole-model
``.h5`` keeps the same tree under ``model_weights``): the root attribute ``layer_names``
lists the layers in model order, each layer's group lists ``weight_names`` and holds the
datasets. Read with h5py alone, one dataset at a time. Tensors are named
``{layer}/{variable}`` as Keras names them (``regnetx002_stem_conv/kernel:0``,
``regnetx002_Stage_0_XBlock_0_conv_1x1_1_bn/gamma:0``, ``1head_dense/kernel:0``). The name
table matches the layer names' suffixes after the model name (``stem_conv``,
``Stage_{s}_{X|Y}Block_{i}_conv_3x3``, ``..._skip_1x1``, ``..._squeeze_and_excite_squeeze``,
``head_dense``), never the model name nor the head's session-dependent number; the layer
order of ``layer_names`` gives the forward order. Layout: channels last (conv HWIO, dense
(in, out)).

Keras' model divides its input by 255 inside (``Rescaling(1/255)``, no mean / std) and pads
its stride-2 3x3 convolutions "same"; both facts are recorded as notes, and the first as a
preprocessor that moves the /255 into preprocessing (``extra["preprocessor"]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RegNetConfig
from ..errors import CheckpointError
from ..tensors import LazyTensor
from . import neutral
from .base import CHANNELS_LAST, KERAS_BN, ForeignCheckpoint, Format, NameTable, ReferenceUnavailable
from .keras_native import h5_tensor, open_h5, require_h5py

H5_SUFFIXES = (".h5", ".hdf5")
MODEL_WEIGHTS = "model_weights"  # where a whole-model .h5 (model.save) keeps the weights tree


def _keras_rules() -> list[tuple[str, str]]:
    rules = [("stem_conv/kernel", "stem.conv.weight"), ("stem_bn/{bn}", "stem.bn.{bn}")]
    for letter in "XY":
        block = f"Stage_{{stage}}_{letter}Block_{{block}}"
        target = "s{stage}.b{block}"
        rules += [
            (f"{block}_conv_1x1_1/kernel", f"{target}.a.conv.weight"),
            (f"{block}_conv_1x1_1_bn/{{bn}}", f"{target}.a.bn.{{bn}}"),
            (f"{block}_conv_3x3/kernel", f"{target}.b.conv.weight"),
            (f"{block}_conv_3x3_bn/{{bn}}", f"{target}.b.bn.{{bn}}"),
            (f"{block}_conv_1x1_2/kernel", f"{target}.c.conv.weight"),
            (f"{block}_conv_1x1_2_bn/{{bn}}", f"{target}.c.bn.{{bn}}"),
            (f"{block}_skip_1x1/kernel", f"{target}.proj.conv.weight"),
            (f"{block}_skip_bn/{{bn}}", f"{target}.proj.bn.{{bn}}"),
        ]
        if letter == "Y":  # only Y blocks have squeeze-and-excitation
            for part, role in (("squeeze", "reduce"), ("excite", "expand")):
                rules += [
                    (f"{block}_squeeze_and_excite_{part}/kernel", f"{target}.se.{role}.weight"),
                    (f"{block}_squeeze_and_excite_{part}/bias", f"{target}.se.{role}.bias"),
                ]
    rules += [("head_dense/kernel", "head.weight"), ("head_dense/bias", "head.bias")]
    return rules


# Names below are ``{layer suffix}/{variable}``: the model name, the head's number and ":0" taken off.
KERAS_APPS_TABLE = NameTable(_keras_rules(), KERAS_BN)

_LAYER = re.compile(r"(?:(?P<model>[^/]*)_)?(?P<suffix>stem_(?:conv|bn)|Stage_\d+_[XY]Block_\d+_\w+)")
_HEAD = re.compile(r"(?P<model>[^/]*)head_dense")  # Keras names it f"{uid}head_dense", uid counting models built
_VARIABLE = re.compile(r"(?P<variable>\w+)(?::\d+)?")

PREPROCESSOR = {
    "image_processor_type": "ConvNextImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "crop_pct": 0.875,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": False,
    "image_mean": [0.0, 0.0, 0.0],
    "image_std": [1.0, 1.0, 1.0],
}
SCALING_NOTE = (
    "Keras' RegNets take RGB values in [0, 255] and divide them by 255 inside the model (a Rescaling layer; "
    "no mean / std normalisation); the converted model has no such layer, so it takes the image already divided "
    "by 255 (RGB in [0, 1], not ImageNet-normalised): the preprocessor written with it rescales by 1/255 and "
    "does not normalise (image_mean 0, image_std 1)"
)
PADDING_NOTE = (
    "Keras pads its five stride-2 3x3 convolutions 'same', which is (0, 1) on a side of even length, while the "
    "converted model pads (1, 1): the converted model reproduces Keras' outputs (to float rounding) only when the "
    "height and the width are each 1 more than a multiple of 32 (33, 65, 97, ..., 225, 257); at every other size, "
    "the usual 224x224 included, its stride-2 convolutions sample a grid shifted by one pixel against Keras', so "
    "its outputs differ from Keras' (by percents of the logits' scale, not by rounding) and accuracy measured "
    "with Keras at 224 is not reproduced exactly"
)


def split_name(name: str) -> tuple[str, str, str] | None:
    """(model name, layer suffix, variable) of a Keras tensor name such as ``regnetx002_stem_conv/kernel:0``."""
    layer, _, variable = name.rpartition("/")
    variable_match = _VARIABLE.fullmatch(variable)
    if not layer or variable_match is None:
        return None
    match = _HEAD.fullmatch(layer)
    if match:
        return match.group("model"), "head_dense", variable_match.group("variable")
    match = _LAYER.fullmatch(layer)
    if match:
        return match.group("model") or "", match.group("suffix"), variable_match.group("variable")
    return None


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_attribute_list(group: Any, name: str) -> list[str] | None:
    """A list of strings from an HDF5 attribute, joined from Keras' chunks (``name0``, ``name1``, ...) when split."""
    if name in group.attrs:
        return [_text(value) for value in np.atleast_1d(group.attrs[name])]
    if f"{name}0" not in group.attrs:
        return None
    values: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(_text(value) for value in np.atleast_1d(group.attrs[f"{name}{chunk}"]))
        chunk += 1
    return values


def read_h5_weights(path: Path) -> tuple[dict[str, LazyTensor], str]:
    """(tensors named ``{layer}/{variable}`` in layer order, the weights tree's root) of a Keras 2 .h5 file."""
    h5py = require_h5py()
    with open_h5(path, "a Keras .h5 weights file") as file:
        root_name = ""
        root = file
        if read_attribute_list(file, "layer_names") is None and isinstance(file.get(MODEL_WEIGHTS), h5py.Group):
            root_name, root = MODEL_WEIGHTS + "/", file[MODEL_WEIGHTS]
        layer_names = read_attribute_list(root, "layer_names")
        if layer_names is None:
            seen = ", ".join(sorted(file.attrs)) or "none"
            raise CheckpointError(
                f"{path} is not a Keras 2 weights file: expected the root attribute 'layer_names' "
                f"(model.save_weights to .h5), found attributes: {seen}"
            )
        tensors: dict[str, LazyTensor] = {}
        for layer in layer_names:
            group = root.get(layer)
            if not isinstance(group, h5py.Group):
                raise CheckpointError(f"{path} lists the layer {layer!r} in layer_names but has no group for it")
            for weight_name in read_attribute_list(group, "weight_names") or []:
                dataset = group.get(weight_name)
                if not isinstance(dataset, h5py.Dataset):
                    raise CheckpointError(
                        f"{path}: the layer {layer!r} lists the weight {weight_name!r}, which is not in the file"
                    )
                name = f"{layer}/{weight_name.rpartition('/')[2]}"
                if name in tensors:
                    raise CheckpointError(
                        f"{path} is not a Keras Applications weights file: its layer {layer!r} holds two weights "
                        f"named {name.rpartition('/')[2]!r} ({weight_name!r} and another); expected one layer "
                        "per convolution, BatchNorm or Dense"
                    )
                tensors[name] = h5_tensor(path, dataset, f"{root_name}{layer}/{weight_name}")
    return tensors, root_name


class KerasApplicationsFormat(Format):
    """Keras 2 Applications' RegNet layer names (``regnetx002_Stage_0_XBlock_0_conv_3x3``, ``1head_dense``), HWIO."""

    name = "keras-applications"
    description = "Keras 2 keras.applications RegNetX/RegNetY weights (.h5, with top or _notop; input x255)"
    library = "tf_keras"
    layout = CHANNELS_LAST
    verify_image_size = 65  # Keras' "same" stride-2 padding equals ours only at sizes = 1 (mod 32)

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.name.lower().endswith(H5_SUFFIXES)

    def open(self, path: Path) -> ForeignCheckpoint:
        if not path.is_file():
            raise CheckpointError(
                f"expected a Keras .h5 weights file, got {path} ({'a directory' if path.is_dir() else 'no such path'})"
            )
        tensors, root = read_h5_weights(path)
        notes = [SCALING_NOTE, PADDING_NOTE]
        if root:
            notes.insert(0, f"read the weights under {root.rstrip('/')} of the whole-model file {path.name}")
        models = {parts[0] for parts in map(split_name, tensors) if parts is not None and parts[1] != "head_dense"}
        extra: dict[str, Any] = {"preprocessor": dict(PREPROCESSOR)}
        if len(models) == 1:
            extra["model_name"] = next(iter(models))
        return ForeignCheckpoint(path, self.name, [path], tensors, None, [], notes, extra)

    def to_neutral(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        mapped, unknown = {}, []
        for name in names:
            parts = split_name(name)
            result = KERAS_APPS_TABLE.to_neutral(f"{parts[1]}/{parts[2]}") if parts is not None else None
            if result is None:
                unknown.append(name)
            else:
                mapped[name] = result
        return mapped, unknown

    def reference_logits(self, foreign: ForeignCheckpoint, config: RegNetConfig) -> Callable[[np.ndarray], np.ndarray]:
        """tf_keras' own RegNet holding the file: NCHW batch -> logits (pooled features without top).

        The input convention is the converted model's: images already divided by 255. Keras'
        model divides by 255 itself, so the runner hands it the batch times 255 (NHWC); both
        then compute on the same values, and the outputs compare one to one.
        """
        try:
            import tf_keras
        except Exception as error:  # ImportError, or TensorFlow failing to load
            raise ReferenceUnavailable(
                f"tf_keras (Keras 2, the home of keras.applications.RegNet*) does not import here ({error})"
            ) from None
        mapped, _ = self.to_neutral(list(foreign.tensors))
        ours = {mapped[name]: tuple(t.shape) for name, t in foreign.tensors.items() if name in mapped}
        with_head = neutral.has_head(ours)
        classes = ours["head.bias"][0] if with_head else 1000
        tried = []
        for constructor in keras_candidates(tf_keras, config, foreign.extra.get("model_name")):
            model = getattr(tf_keras.applications, constructor)(
                weights=None,
                include_top=with_head,
                classes=classes,
                pooling=None if with_head else "avg",
                input_tensor=tf_keras.Input(shape=(None, None, 3)),  # any image size (include_top fixes 224 otherwise)
            )
            tried.append(constructor)
            theirs_named = {w.name: tuple(int(d) for d in w.shape) for w in model.weights}
            theirs_mapped, _ = self.to_neutral(list(theirs_named))
            theirs = {theirs_mapped[name]: shape for name, shape in theirs_named.items() if name in theirs_mapped}
            if theirs != ours or len(theirs_mapped) != len(theirs_named):
                continue
            model.load_weights(str(foreign.path))  # Keras' own loader (it matches layers by order)
            return _keras_runner(model)
        raise ReferenceUnavailable(
            "no keras.applications RegNet has this architecture"
            + (f" (compared the weight shapes of {', '.join(tried)})" if tried else "")
        )


def keras_candidates(tf_keras: Any, config: RegNetConfig, model_name: str | None) -> list[str]:
    """keras.applications RegNet constructors that may build this network, most likely first (shapes decide)."""
    letter = config.layer_type.upper()
    available = sorted(name for name in dir(tf_keras.applications) if name.startswith(f"RegNet{letter}"))
    names = []
    if model_name and model_name.lower().startswith("regnet"):
        names.append("RegNet" + model_name[len("regnet") :].upper())
    try:
        from tf_keras.src.applications import regnet

        configs = regnet.MODEL_CONFIGS
    except (ImportError, AttributeError):
        configs = None  # then every constructor of this kind is a candidate
    for name in available:
        spec = configs.get(name[len("RegNet") :].lower()) if configs is not None else None
        if configs is None or (
            spec is not None
            and list(spec["depths"]) == list(config.depths)
            and list(spec["widths"]) == list(config.hidden_sizes)
            and spec["block_type"] == letter
        ):
            names.append(name)
    return [name for i, name in enumerate(names) if name in available and name not in names[:i]]


def _keras_runner(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    def run(pixel_values: np.ndarray) -> np.ndarray:
        images = np.transpose(np.asarray(pixel_values, np.float32), (0, 2, 3, 1)) * np.float32(255)
        output = model(images, training=False)
        return np.asarray(output).reshape(pixel_values.shape[0], -1)

    return run


FORMAT = KerasApplicationsFormat()
