"""Keras 2 Applications RegNet .h5 files: real tf_keras files and hand-written ones, read, converted, verified.

Keras' model divides its input by 255 itself; the converted model takes the image already
divided by 255 (its preprocessor rescales). Keras pads its stride-2 3x3 convolutions
"same" ((0, 1) on an even side), the converted model (1, 1): the two agree exactly only
when every stride-2 input is odd, i.e. at sizes = 1 (mod 32) such as 65, and differ at 64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config
from regnet_core import convert as convert_module
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError, FormatError
from regnet_core.formats import detect_format, get_format
from regnet_core.formats.base import ReferenceUnavailable

from . import foreign_seer_keras as fk
from . import foreign_torch as ft
from .helpers import requires, tiny_config

pytestmark = [requires("torch"), requires("h5py")]

KERAS_APPS = get_format("keras-applications")


def _converted_model(checkpoint, tmp_path: Path):
    from regnet_pt import RegNetForImageClassification, RegNetModel

    out = tmp_path / "hf"
    write_checkpoint(checkpoint, out, progress=False)
    model_class = RegNetForImageClassification if checkpoint.with_head else RegNetModel
    return model_class.from_pretrained(out), out


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Real tf_keras RegNetX002 (with top, 10 classes) and RegNetY002 (no top) files with random weights and BN stats."""
    tf_keras = pytest.importorskip("tf_keras")
    directory = tmp_path_factory.mktemp("keras")
    files = {}
    for key, include_top, seed in (("x002", True, 1), ("y002_notop", False, 2)):
        constructor = getattr(tf_keras.applications, f"RegNet{key[:4].upper()}")
        model = constructor(
            weights=None,
            include_top=include_top,
            classes=10,
            pooling=None if include_top else "avg",
            input_tensor=tf_keras.Input(shape=(None, None, 3)),  # any size (include_top alone fixes 224x224)
        )
        fk.randomise_keras_model(model, seed)
        path = directory / f"regnet{key}.h5"
        model.save_weights(str(path))
        files[key] = (model, path)
    return files


def _keras_logits(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False)).reshape(images.shape[0], -1)


# ----------------------------------------------------------------------------- real tf_keras files


def test_tf_keras_files_are_detected_and_their_architecture_inferred(keras_files):
    _, path = keras_files["x002"]
    fmt, _ = detect_format(path)
    assert fmt.name == "keras-applications"
    checkpoint = read_checkpoint(path)
    names = list(checkpoint.foreign.tensors)
    assert names[0] == "regnetx002_stem_conv/kernel:0"
    assert [name for name in names if name.endswith("head_dense/kernel:0")]  # its number depends on the session
    assert checkpoint.foreign.extra["model_name"] == "regnetx002"
    assert build_model_spec(checkpoint.config) == build_model_spec(get_config("regnet-x-002").copy(num_labels=10))
    preprocessor = checkpoint.foreign.extra["preprocessor"]
    assert preprocessor["rescale_factor"] == 1 / 255 and preprocessor["do_normalize"] is False
    assert preprocessor["image_mean"] == [0.0, 0.0, 0.0] and preprocessor["image_std"] == [1.0, 1.0, 1.0]
    assert any("divide them by 255" in note for note in checkpoint.notes)
    assert any("1 more than a multiple of 32" in note and "224x224" in note for note in checkpoint.notes)


def test_converted_x002_equals_tf_keras_at_65_and_differs_at_64(keras_files, tmp_path: Path):
    keras_model, path = keras_files["x002"]
    checkpoint = read_checkpoint(path)
    model, out = _converted_model(checkpoint, tmp_path)
    written = json.loads((out / "preprocessor_config.json").read_text())
    assert written["do_normalize"] is False and written["rescale_factor"] == 1 / 255
    images = fk.keras_images(65)
    expected = _keras_logits(keras_model, images)
    ft.assert_close(ft.run_model(model, fk.converted_input(images)), expected)
    # Keras' "same" pads an even side (0, 1), ours (1, 1): at 64 every stride-2 grid is shifted by one pixel.
    images = fk.keras_images(64)
    difference = _relative(ft.run_model(model, fk.converted_input(images)), _keras_logits(keras_model, images))
    assert difference > 1e-2, difference


def test_converted_y002_notop_equals_tf_keras_pooled_features(keras_files, tmp_path: Path):
    keras_model, path = keras_files["y002_notop"]
    checkpoint = read_checkpoint(path)
    assert not checkpoint.with_head
    assert build_model_spec(checkpoint.config) == build_model_spec(get_config("regnet-y-002").copy(num_labels=0))
    model, _ = _converted_model(checkpoint, tmp_path)
    for size in (33, 97):
        images = fk.keras_images(size, seed=size)
        ft.assert_close(ft.run_model(model, fk.converted_input(images)), _keras_logits(keras_model, images))


def test_the_reference_runs_tf_keras_on_the_converted_models_input_times_255(keras_files, tmp_path: Path):
    keras_model, path = keras_files["x002"]
    checkpoint = read_checkpoint(path)
    reference = KERAS_APPS.reference_logits(checkpoint.foreign, checkpoint.config)
    images = fk.keras_images(65, seed=4)
    x = fk.converted_input(images)  # what the converted model takes
    ft.assert_close(reference(x), _keras_logits(keras_model, images))
    model, _ = _converted_model(checkpoint, tmp_path)
    ft.assert_close(ft.run_model(model, x), reference(x))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_a_whole_model_h5_reads_its_model_weights(keras_files, tmp_path: Path):
    keras_model, _ = keras_files["y002_notop"]
    path = tmp_path / "regnety002_model.h5"
    keras_model.save(str(path))
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "keras-applications"
    assert any("model_weights" in note for note in checkpoint.notes)
    model, _ = _converted_model(checkpoint, tmp_path)
    images = fk.keras_images(65)
    ft.assert_close(ft.run_model(model, fk.converted_input(images)), _keras_logits(keras_model, images))


def test_regnet_convert_verify_runs_tf_keras_as_the_reference(keras_files, tmp_path: Path, capsys, monkeypatch):
    _, path = keras_files["x002"]
    monkeypatch.setattr(convert_module, "installed_frameworks", lambda: ["pt"])  # TF / Flax read hf elsewhere
    code = main(["convert", str(path), str(tmp_path / "out"), "--verify", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(keras-applications)" in out and "this is regnet-x-002" not in out  # 10 classes: no zoo model
    assert "(2, 3, 65, 65)" in out and "vs tf_keras" in out and "verify: PASS" in out


# ----------------------------------------------------------------------------- hand-written files (no tf_keras)


@pytest.mark.parametrize(
    ("layer_type", "num_labels", "suffix", "as_bytes"),
    [("y", 5, ":0", True), ("x", 0, ":0", False), ("y", 0, "", False)],
    ids=["y-top-keras2-bytes", "x-notop-strings", "y-notop-keras3-legacy-names"],
)
def test_hand_written_keras_files_convert_with_the_source_logits(
    tmp_path: Path, layer_type: str, num_labels: int, suffix: str, as_bytes: bool
):
    config = tiny_config(layer_type, num_labels=num_labels, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])
    canonical = ft.canonical_state(config, seed=7)
    layers = fk.keras_layers(config, canonical, model_name="my_regnet", head_uid="7")
    path = fk.write_keras_h5(
        tmp_path / "weights.h5", layers, suffix=suffix, as_bytes=as_bytes, weightless=("input_1", "7_head_gap")
    )
    fmt, _ = detect_format(path)
    assert fmt.name == "keras-applications"
    checkpoint = read_checkpoint(path)
    assert build_model_spec(checkpoint.config) == build_model_spec(config)
    assert checkpoint.foreign.extra["model_name"] == "my_regnet"
    model, _ = _converted_model(checkpoint, tmp_path)
    x = ft.pixels(33)
    ft.assert_close(ft.run_model(model, x), ft.reference_logits(config, canonical, x))


def test_keras_applications_files_are_told_from_transformers_tf_and_keras_3_files(tmp_path: Path):
    config = tiny_config("y", num_labels=5, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])
    path = fk.write_keras_h5(tmp_path / "regnety.h5", fk.keras_layers(config, ft.canonical_state(config)))
    checkpoint = read_checkpoint(path)
    write_checkpoint(checkpoint, tmp_path / "hf-tf", "hf-tf", progress=False)  # Keras 2 HDF5 too: tf_model.h5
    write_checkpoint(checkpoint, tmp_path / "model.weights.h5", "keras", progress=False)
    expected = {
        path: "keras-applications",
        tmp_path / "hf-tf" / "tf_model.h5": "hf-tf",
        tmp_path / "model.weights.h5": "keras",
    }
    for file, name in expected.items():
        assert detect_format(file)[0].name == name, file
    with pytest.raises(CheckpointError, match="holds two weights named 'kernel:0'"):
        KERAS_APPS.open(tmp_path / "hf-tf" / "tf_model.h5")


def test_keras_names_match_by_suffix_not_by_model_name_or_head_number():
    names = [
        "my_model_Stage_2_YBlock_3_squeeze_and_excite_excite/bias:0",
        "regnety320_Stage_0_YBlock_0_skip_bn/moving_variance:0",
        "12head_dense/kernel:0",
        "head_dense/bias",
        "regnetx002_stem_conv/kernel",
    ]
    mapped, unknown = KERAS_APPS.to_neutral(names)
    assert not unknown
    assert list(mapped.values()) == [
        "s2.b3.se.expand.bias",
        "s0.b0.proj.bn.running_var",
        "head.weight",
        "head.bias",
        "stem.conv.weight",
    ]
    others = [
        "regnetx002_Stage_0_XBlock_0_squeeze_and_excite_squeeze/kernel:0",  # X blocks have no SE
        "regnetx002_Stage_0_XBlock_0_conv_1x1_1_bn/num_batches_tracked:0",
        "1_head_gap/kernel:0",
        "regnetx002_stem_conv/kernel:0/extra",
        "model.stem.conv.weight",
    ]
    assert KERAS_APPS.to_neutral(others)[1] == others


def test_the_reference_refuses_an_architecture_keras_does_not_have(tmp_path: Path):
    pytest.importorskip("tf_keras")
    config = tiny_config("y", num_labels=5, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])
    canonical = ft.canonical_state(config)
    path = fk.write_keras_h5(tmp_path / "regnety002.h5", fk.keras_layers(config, canonical, "regnety002"))
    checkpoint = read_checkpoint(path)
    with pytest.raises(ReferenceUnavailable, match="no keras.applications RegNet has this architecture.*RegNetY002"):
        KERAS_APPS.reference_logits(checkpoint.foreign, checkpoint.config)


# ----------------------------------------------------------------------------- broken files


def test_corrupted_and_foreign_h5_files_are_refused_with_checkpoint_errors(tmp_path: Path):
    import h5py

    config = tiny_config("x", num_labels=0)
    good = fk.write_keras_h5(tmp_path / "good.h5", fk.keras_layers(config, ft.canonical_state(config)))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 50)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:3000])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file.create_dataset("weights", data=np.zeros(3))
        file.attrs["note"] = "not keras"
    for path, message in ((garbage, "HDF5"), (truncated, "HDF5"), (other, "layer_names.*found attributes: note")):
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(path, "keras-applications")
        with pytest.raises(FormatError):
            detect_format(path)
    missing = tmp_path / "missing.h5"
    with h5py.File(missing, "w") as file:
        file.attrs["layer_names"] = np.array([b"regnetx002_stem_conv"])
        file.create_group("regnetx002_stem_conv").attrs["weight_names"] = np.array([b"regnetx002_stem_conv/kernel:0"])
    with pytest.raises(CheckpointError, match="lists the weight 'regnetx002_stem_conv/kernel:0'.*not in the file"):
        read_checkpoint(missing, "keras-applications")
