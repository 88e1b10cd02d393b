"""Export for serving: ONNX (from PyTorch), SavedModel and TFLite (from TensorFlow), StableHLO (from Flax via jax.export).

Every artefact is self-contained (the weights are inside it) and takes one float32 input
named ``pixel_values`` with a dynamic batch, height and width, in the exporting framework's
layout (NCHW for ONNX, NHWC for the others). Its outputs are named:

- ``logits`` (batch, num_labels) for a classifier (the flattened pooled features when num_labels is 0);
- ``pooled_features`` (batch, channels) for a trunk (RegNetModel);
- with ``output_hidden_states``, also ``hidden_states_0`` (the stem) ... ``hidden_states_S`` (the
  last stage), in the same layout as the input. Off by default: a served model is asked for
  its logits, and the hidden states are large (the stem's alone is 1/4 of the image size at
  the stem's width).

``export_checkpoint`` writes an artefact atomically, loads it back with its own runtime and
compares its outputs with the checkpoint's own model (PyTorch for ONNX, TensorFlow for
SavedModel and TFLite, Flax for StableHLO) at the parity tolerance. This module imports no
framework at import time.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .backends import BackendUnavailableError, get_backend, resolve_checkpoint
from .config import RegNetConfig
from .hub import looks_like_hub_id
from .io import OutputExistsError, atomic_output
from .parity import LOGITS_ATOL, RTOL, OutputDifference, compare_arrays, random_input
from .specs import ModelSpec, build_model_spec
from .weights import BN_COUNT, parameter_table
from .zoo import get_entry

INPUT_NAME = "pixel_values"
LOGITS_NAME = "logits"
FEATURES_NAME = "pooled_features"
HIDDEN_STATES_PREFIX = "hidden_states_"
# ONNX files are protobufs, TFLite files and serialized jax.export modules flatbuffers: neither
# can hold more than 2 GiB. Leave room for the graph beside the weights.
SERIALIZATION_LIMIT = 2**31 - 2**26


class ExportError(ValueError):
    """An export that cannot be made as asked: says what was expected and what came."""


class ArtefactTooLargeError(ExportError):
    """The weights do not fit the artefact's serialization format (2 GiB)."""


@dataclass(frozen=True)
class ExportTarget:
    """One artefact kind: the framework that writes it, its module and functions, and its runtime."""

    name: str
    description: str
    framework: str
    module: str
    write: str
    load: str
    run: str
    layout: str
    runtime: str
    requires: tuple[str, ...]
    install: str
    limited: bool  # weights must fit SERIALIZATION_LIMIT

    def module_of(self) -> ModuleType:
        """The backend's export module; a missing framework or package raises BackendUnavailableError."""
        get_backend(self.framework)  # names the framework's extra when the framework itself is missing
        for package in self.requires:
            try:
                importlib.import_module(package)
            except ImportError:
                raise BackendUnavailableError(
                    f"--to {self.name} needs {package}, which is not installed; install it with: {self.install}"
                ) from None
        return importlib.import_module(self.module)

    def runtime_version(self) -> str:
        """The runtime's name and version, e.g. 'onnxruntime 1.32.0'."""
        module = importlib.import_module(self.runtime.split(".")[0])
        return f"{self.runtime} {getattr(module, '__version__', '?')}"


TARGETS: dict[str, ExportTarget] = {
    "onnx": ExportTarget(
        "onnx",
        "ONNX",
        "pt",
        "regnet_pt.export",
        "export_onnx",
        "load_onnx",
        "run_onnx",
        "NCHW",
        "onnxruntime",
        ("onnx", "onnxscript", "onnxruntime"),
        "pip install onnx onnxscript onnxruntime",
        True,
    ),
    "savedmodel": ExportTarget(
        "savedmodel",
        "TensorFlow SavedModel",
        "tf",
        "regnet_tf.export",
        "export_saved_model",
        "load_saved_model",
        "run_saved_model",
        "NHWC",
        "tensorflow",
        ("tensorflow",),
        "pip install 'regnet-trio[tf]'",
        False,
    ),
    "tflite": ExportTarget(
        "tflite",
        "TFLite",
        "tf",
        "regnet_tf.export",
        "export_tflite",
        "load_tflite",
        "run_tflite",
        "NHWC",
        "tensorflow",
        ("tensorflow",),
        "pip install 'regnet-trio[tf]'",
        True,
    ),
    "stablehlo": ExportTarget(
        "stablehlo",
        "StableHLO (jax.export)",
        "flax",
        "regnet_flax.export",
        "export_stablehlo",
        "load_stablehlo",
        "run_stablehlo",
        "NHWC",
        "jax",
        ("jax", "flax"),
        "pip install 'regnet-trio[flax]'",
        True,
    ),
}


def get_target(name: str) -> ExportTarget:
    """The export target called ``name``; an unknown one raises ExportError listing the choices."""
    key = str(name).lower()
    if key not in TARGETS:
        raise ExportError(f"unknown export target {name!r}; expected one of {', '.join(TARGETS)}")
    return TARGETS[key]


def output_names(num_stages: int, with_head: bool, output_hidden_states: bool = False) -> list[str]:
    """The artefact's output names, in order: logits or pooled_features, then hidden_states_0 ... _S."""
    names = [LOGITS_NAME if with_head else FEATURES_NAME]
    if output_hidden_states:
        names += [f"{HIDDEN_STATES_PREFIX}{index}" for index in range(num_stages + 1)]
    return names


def total_stride(spec: ModelSpec) -> int:
    """The downsampling factor from the input to the last stage."""
    stride = spec.stem.stride
    for stage in spec.stages:
        stride *= stage.stride
    return stride


def example_shape(spec: ModelSpec, layout: str) -> tuple[int, int, int, int]:
    """A tracing input: batch 2 and a side of twice the total stride, so that no dimension traces as 0 or 1."""
    side = 2 * total_stride(spec)
    channels = spec.stem.input_width
    return (2, channels, side, side) if layout == "NCHW" else (2, side, side, channels)


def weight_bytes(spec: ModelSpec, with_head: bool) -> int:
    """Bytes of the float32 weights (parameters and BatchNorm statistics) an artefact embeds."""
    return sum(
        int(np.prod(t.shape, dtype=np.int64)) * 4 for t in parameter_table(spec, with_head) if t.kind != BN_COUNT
    )


def check_fits(target: ExportTarget, config: RegNetConfig, with_head: bool, name: str = "the model") -> None:
    """Raise ArtefactTooLargeError when the target's format cannot hold the model's weights."""
    if not target.limited:
        return
    size = weight_bytes(build_model_spec(config), with_head)
    if size > SERIALIZATION_LIMIT:
        raise ArtefactTooLargeError(
            f"a {target.description} artefact holds at most 2 GiB (its serialization format's limit), "
            f"but {name}'s weights take {size / 1e9:.2f} GB at float32; export it with --to savedmodel, "
            "which stores the weights beside the graph"
        )


@dataclass
class ExportReport:
    """What was written, and how the artefact's outputs compared with the source model's."""

    target: str
    path: str
    source: str
    framework: str
    runtime: str
    layout: str
    input_shape: tuple[int, ...]
    seed: int
    details: str
    outputs: list[OutputDifference] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every output is within the parity tolerance."""
        return all(o.passed for o in self.outputs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "target": self.target,
            "path": self.path,
            "source": self.source,
            "framework": self.framework,
            "runtime": self.runtime,
            "layout": self.layout,
            "input_shape": list(self.input_shape),
            "seed": self.seed,
            "details": self.details,
            "tolerance": {"logits_max_abs": LOGITS_ATOL, "max_rel": RTOL},
            "passed": self.passed,
            "outputs": [asdict(o) for o in self.outputs],
        }

    def summary(self) -> str:
        """Lines for the command line: what was written, the measured differences, PASS or FAIL."""
        lines = [
            f"wrote {self.path} ({self.target}: {self.details}) from {self.source}",
            f"checked with {self.runtime} against {self.framework} on a seeded N(0, 1) batch "
            f"{self.input_shape} ({self.layout}, float32, seed {self.seed})",
            f"tolerance: logits max_abs <= {LOGITS_ATOL:g} and max_rel <= {RTOL:g}; hidden states max_rel <= {RTOL:g}",
        ]
        for o in self.outputs:
            flag = "" if o.passed else "  ABOVE TOLERANCE"
            lines.append(f"  {o.name:<20} max_abs {o.max_abs:.3e}  max_rel {o.max_rel:.3e}{flag}")
        main = self.outputs[0]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: max difference {main.max_abs:.3e} ({main.name}, max_rel {main.max_rel:.3e})")
        return "\n".join(lines)


def _to_nchw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, (0, 3, 1, 2))) if array.ndim == 4 else array


def compare_artefact_outputs(
    reference: Mapping[str, Any], produced: Mapping[str, np.ndarray], layout: str, with_head: bool
) -> list[OutputDifference]:
    """Compare an artefact's outputs (``layout``) with a backend's ``run`` outputs (NCHW) at the parity tolerance.

    The main output (logits, or a trunk's pooled features) is held to the logits rule.
    """
    main_name = LOGITS_NAME if with_head else FEATURES_NAME
    if main_name not in produced:
        raise ExportError(f"the artefact has no output {main_name!r}; it has {sorted(produced)}")
    if with_head:
        main_reference = np.asarray(reference[LOGITS_NAME])
    else:
        pooled = np.asarray(reference["pooler_output"])
        main_reference = pooled.reshape(pooled.shape[0], -1)
    differences = [replace(compare_arrays(LOGITS_NAME, main_reference, produced[main_name]), name=main_name)]
    for index, hidden in enumerate(reference.get("hidden_states") or []):
        name = f"{HIDDEN_STATES_PREFIX}{index}"
        if name not in produced:
            differences.append(OutputDifference(name, float("inf"), float("inf"), False))
            continue
        value = produced[name] if layout == "NCHW" else _to_nchw(produced[name])
        differences.append(compare_arrays(name, hidden, value))
    return differences


def _precheck_size(ckpt: str, target: ExportTarget) -> None:
    """Refuse a zoo model too large for the target before its random weights are allocated."""
    if Path(ckpt).exists() or looks_like_hub_id(ckpt):
        return
    entry = get_entry(ckpt)
    check_fits(target, entry.config(), not entry.is_trunk, entry.name)


def export_checkpoint(
    ckpt: str,
    out: str | os.PathLike,
    to: str,
    *,
    overwrite: bool = False,
    opset: int | None = None,
    output_hidden_states: bool = False,
    batch: int = 2,
    image_size: int = 224,
    seed: int = 0,
) -> ExportReport:
    """Export a checkpoint (any format, a hub id or a zoo name) to ``out`` and check the artefact against it.

    The artefact is written atomically (an existing ``out`` needs ``overwrite``), then loaded
    with its runtime and run on a seeded N(0, 1) batch of ``batch`` x ``image_size`` images;
    its outputs are compared with the checkpoint's model in the exporting framework.
    """
    target = get_target(to)
    if opset is not None and target.name != "onnx":
        raise ExportError(f"--opset applies to --to onnx only, got --to {target.name}")
    out_path = Path(out)
    if (out_path.exists() or out_path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{out_path} already exists; pass --overwrite (overwrite=True) to replace it")
    module = target.module_of()
    write, load, run = (getattr(module, name) for name in (target.write, target.load, target.run))
    if opset is not None:
        module.check_opset(opset)
    _precheck_size(ckpt, target)
    config, state, with_head, source = resolve_checkpoint(ckpt, seed)
    check_fits(target, config, with_head, source)

    backend = get_backend(target.framework)
    model = backend.from_canonical(config, state, with_head)
    del state
    pixel_values = random_input(batch, image_size, config.num_channels, seed)
    reference = backend.run(model, pixel_values, output_hidden_states=output_hidden_states)
    options: dict[str, Any] = {"output_hidden_states": output_hidden_states}
    if opset is not None:
        options["opset"] = opset
    with atomic_output(out_path, overwrite) as temporary:
        write(model, temporary, **options)
    del model
    gc.collect()

    artefact = load(out_path)
    inputs = pixel_values if target.layout == "NCHW" else np.ascontiguousarray(np.transpose(pixel_values, (0, 2, 3, 1)))
    produced = run(artefact, inputs)
    differences = compare_artefact_outputs(reference, produced, target.layout, with_head)
    names = output_names(len(config.hidden_sizes), with_head, output_hidden_states)
    details = describe(
        target, config.num_channels, names, opset if opset is not None else getattr(module, "ONNX_OPSET", None)
    )
    return ExportReport(
        target.name,
        str(out_path),
        source,
        target.framework,
        target.runtime_version(),
        target.layout,
        tuple(inputs.shape),
        seed,
        details,
        differences,
    )


def describe(target: ExportTarget, num_channels: int, names: list[str], opset: int | None = None) -> str:
    """One line on an artefact: its opset (ONNX), input and outputs."""
    dims = "batch, {c}, height, width" if target.layout == "NCHW" else "batch, height, width, {c}"
    text = f"input {INPUT_NAME} float32 ({dims.format(c=num_channels)}); outputs {names[0]}"
    if len(names) > 1:
        text += f", {names[1]} ... {names[-1]}"
    return (f"opset {opset}, " if target.name == "onnx" and opset is not None else "") + text
