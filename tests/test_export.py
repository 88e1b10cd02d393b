"""Serving artefacts: ONNX (onnxruntime), SavedModel (tf.saved_model.load), TFLite (tf.lite), StableHLO (jax.export).

Each artefact is written, loaded back with its own runtime and run at batch 1 and larger
batches (and another image size): its outputs must equal the source model's at the parity
tolerance. Exports are slowish (ONNX ~10 s), so each is made once per module.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config, random_state, save_checkpoint
from regnet_core.backends import get_backend
from regnet_core.cli import main
from regnet_core.export import (
    FEATURES_NAME,
    INPUT_NAME,
    LOGITS_NAME,
    SERIALIZATION_LIMIT,
    TARGETS,
    compare_artefact_outputs,
    output_names,
    weight_bytes,
)
from regnet_core.parity import random_input
from tests.helpers import tiny_config

# (config, with_head, output_hidden_states): an X block with SiLU, a Y block (SE) with ReLU, and a
# trunk with GELU (exact erf) exported with its hidden states. All have grouped convolutions.
CASES = {
    "x": (tiny_config("x", hidden_act="silu"), True, False),
    "y": (tiny_config("y"), True, False),
    "trunk": (tiny_config("y", hidden_act="gelu"), False, True),
}
# Runtimes each target needs (beyond its framework).
NEEDS = {
    "onnx": ("torch", "onnx", "onnxscript", "onnxruntime"),
    "savedmodel": ("tensorflow",),
    "tflite": ("tensorflow",),
}
NEEDS["stablehlo"] = ("jax", "flax")
# (batch, image size) of the checks: batch 1, then a larger batch at another size (dynamic batch and size).
CHECKS = ((1, 32), (3, 48))


def _skip_unless(target: str):
    missing = [name for name in NEEDS[target] if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


TARGET_PARAMS = [pytest.param(target, marks=_skip_unless(target)) for target in TARGETS]


class Exports:
    """Source models and their artefacts, each made on first use and kept for the module."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.models: dict[tuple[str, str], object] = {}
        self.paths: dict[tuple[str, str], Path] = {}

    def model(self, framework: str, case: str) -> object:
        """The source model of a case in one framework (canonical random weights, seed 0)."""
        if (framework, case) not in self.models:
            config, with_head, _ = CASES[case]
            state = random_state(build_model_spec(config), 0, with_head)
            self.models[framework, case] = get_backend(framework).from_canonical(config, state, with_head)
        return self.models[framework, case]

    def path(self, target: str, case: str) -> Path:
        """The artefact of a case, written by the target's exporter."""
        if (target, case) not in self.paths:
            spec = TARGETS[target]
            module = importlib.import_module(spec.module)
            path = self.directory / f"{case}.{target}"
            write = getattr(module, spec.write)
            result = write(self.model(spec.framework, case), path, output_hidden_states=CASES[case][2])
            assert result == path and path.exists()
            self.paths[target, case] = path
        return self.paths[target, case]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("exports"))


def _layout_input(target: str, pixel_values: np.ndarray) -> np.ndarray:
    if TARGETS[target].layout == "NCHW":
        return pixel_values
    return np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_artefact_reloads_and_matches_the_source_model(exports, target, case):
    spec = TARGETS[target]
    config, with_head, hidden_states = CASES[case]
    module = importlib.import_module(spec.module)
    loaded = getattr(module, spec.load)(exports.path(target, case))
    backend = get_backend(spec.framework)
    model = exports.model(spec.framework, case)
    expected_names = output_names(len(config.hidden_sizes), with_head, hidden_states)
    for seed, (batch, size) in enumerate(CHECKS):
        pixel_values = random_input(batch, size, 3, seed)
        reference = backend.run(model, pixel_values, output_hidden_states=hidden_states)
        produced = getattr(module, spec.run)(loaded, _layout_input(target, pixel_values))
        assert sorted(produced) == sorted(expected_names)
        main = produced[LOGITS_NAME if with_head else FEATURES_NAME]
        assert main.shape == (batch, config.num_labels if with_head else config.hidden_sizes[-1])
        for difference in compare_artefact_outputs(reference, produced, spec.layout, with_head):
            assert difference.passed, (target, case, batch, size, difference)


# ----------------------------------------------------------------------------- per-format properties
@_skip_unless("onnx")
def test_onnx_file_states_its_opset_and_dynamic_axes(exports):
    import onnx

    model = onnx.load(str(exports.path("onnx", "y")))
    assert {entry.domain: entry.version for entry in model.opset_import}[""] == 20
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert [o.name for o in model.graph.output] == [LOGITS_NAME]
    assert not model.graph.input[1:]  # the weights are initializers inside the file, not inputs
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", "Sigmoid", "Mul", "ReduceMean"} <= ops  # SE survives export
    groups = {a.i for node in model.graph.node if node.op_type == "Conv" for a in node.attribute if a.name == "group"}
    assert {2, 3} <= groups  # grouped 3x3 convolutions stay grouped


@_skip_unless("savedmodel")
def test_saved_model_serving_signature(exports):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exports.path("savedmodel", "trunk")))
    signature = loaded.signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == [INPUT_NAME]
    assert inputs[INPUT_NAME].shape.as_list() == [None, None, None, 3] and inputs[INPUT_NAME].dtype == tf.float32
    outputs = signature.structured_outputs
    assert sorted(outputs) == sorted(output_names(3, with_head=False, output_hidden_states=True))
    assert outputs[FEATURES_NAME].shape.as_list() == [None, 24]
    assert outputs["hidden_states_0"].shape.as_list() == [None, None, None, 8]  # NHWC


@_skip_unless("tflite")
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_keeps_dynamic_shapes_and_builtin_ops(exports):
    import tensorflow as tf

    path = exports.path("tflite", "y")
    interpreter = tf.lite.Interpreter(model_path=str(path))
    (details,) = interpreter.get_input_details()
    assert details["shape_signature"].tolist() == [-1, -1, -1, 3]
    assert list(interpreter.get_signature_list()["serving_default"]["inputs"]) == [INPUT_NAME]
    assert b"FlexConv" not in path.read_bytes() and b"Flex" not in path.read_bytes()  # no TF (select) ops


@_skip_unless("stablehlo")
def test_stablehlo_is_self_contained_and_shape_polymorphic(exports):
    from regnet_flax.export import PLATFORMS, load_stablehlo

    exported = load_stablehlo(exports.path("stablehlo", "y"))
    (aval,) = exported.in_avals  # the only argument is the image batch: the weights are constants inside
    assert [str(d) for d in aval.shape] == ["batch", "height", "width", "3"]
    assert str(exported.out_avals[0].shape[0]) == "batch"
    assert tuple(exported.platforms) == PLATFORMS
    text = exported.mlir_module()
    precisions = set(re.findall(r"precision (\w+)>", text))
    assert precisions == {"HIGHEST"}  # no TF32 on GPUs


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = tiny_config("y")
    directory = tmp_path_factory.mktemp("ckpt") / "y"
    save_checkpoint(
        directory, config, random_state(build_model_spec(config), 0), architecture="RegNetForImageClassification"
    )
    return directory


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("target", TARGET_PARAMS)
def test_cli_writes_checks_and_prints_the_difference(tmp_path, capsys, checkpoint, target):
    out_path = tmp_path / f"model.{target}"
    extra = ["--opset", "18"] if target == "onnx" else []
    code, out, err = _run(
        capsys, "export", checkpoint, "--to", target, out_path, "--image-size", 32, "--batch", 3, *extra
    )
    assert code == 0, err
    assert out_path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [out_path.name]  # no temporaries left
    match = re.search(r"PASS: max difference ([0-9.e+-]+) \(logits", out)
    assert match and float(match.group(1)) <= 1e-4
    assert "(3, 3, 32, 32)" in out if target == "onnx" else "(3, 32, 32, 3)" in out
    if target == "onnx":
        import onnx

        assert "opset 18" in out
        assert {e.domain: e.version for e in onnx.load(str(out_path)).opset_import}[""] == 18


@_skip_unless("stablehlo")
def test_cli_keeps_an_existing_output_unless_overwrite(tmp_path, capsys, checkpoint):
    out_path = tmp_path / "model.stablehlo"
    out_path.write_bytes(b"keep me")
    code, out, err = _run(capsys, "export", checkpoint, "--to", "stablehlo", out_path, "--image-size", 32)
    assert code == 2 and err.count("\n") == 1 and "already exists; pass --overwrite" in err
    assert out_path.read_bytes() == b"keep me"
    code, out, err = _run(
        capsys, "export", checkpoint, "--to", "stablehlo", out_path, "--image-size", 32, "--overwrite"
    )
    assert code == 0 and "PASS" in out and out_path.read_bytes() != b"keep me"


@_skip_unless("stablehlo")
def test_cli_exits_1_when_the_artefact_differs(tmp_path, capsys, checkpoint, monkeypatch):
    import regnet_flax.export

    real_run = regnet_flax.export.run_stablehlo

    def perturbed(exported, pixel_values):
        outputs = real_run(exported, pixel_values)
        return {name: value + 1e-3 for name, value in outputs.items()}

    monkeypatch.setattr(regnet_flax.export, "run_stablehlo", perturbed)
    code, out, _ = _run(capsys, "export", checkpoint, "--to", "stablehlo", tmp_path / "m", "--image-size", 32)
    assert code == 1 and "ABOVE TOLERANCE" in out and "FAIL: max difference 1.000e-03" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--to", "pytorch"], "unknown export target 'pytorch'; expected one of onnx, savedmodel, tflite, stablehlo"),
        (["--to", "savedmodel", "--opset", "18"], "--opset applies to --to onnx only"),
        (["--to", "stablehlo", "--batch", "0"], "expected a positive integer"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(tmp_path, capsys, checkpoint, argv, message):
    out_path = tmp_path / "out"
    code, out, err = _run(capsys, "export", checkpoint, out_path, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("regnet: error: ")
    assert message in err and not out_path.exists()


@_skip_unless("onnx")
def test_cli_names_a_missing_runtime(tmp_path, capsys, checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    code, _, err = _run(capsys, "export", checkpoint, "--to", "onnx", tmp_path / "m.onnx")
    assert code == 2 and err.count("\n") == 1
    assert "needs onnxruntime, which is not installed; install it with: pip install onnx onnxscript onnxruntime" in err
    assert not (tmp_path / "m.onnx").exists()


@_skip_unless("onnx")
def test_cli_refuses_a_model_too_large_for_the_format_before_building_it(tmp_path, capsys):
    spec = build_model_spec(get_config("regnet-y-1280-seer"))
    assert weight_bytes(spec, with_head=False) > SERIALIZATION_LIMIT
    code, _, err = _run(capsys, "export", "regnet-y-1280-seer", "--to", "onnx", tmp_path / "m.onnx")
    assert code == 2 and "holds at most 2 GiB" in err and "--to savedmodel" in err
