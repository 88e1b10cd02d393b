"""``hf-tf``: transformers' TF checkpoints (tf_model.h5, sharded or not), read and written with h5py alone.

The optional part runs transformers' own TFRegNet* (it needs TensorFlow and tf-keras): files
it writes are read, files we write are loaded by its from_pretrained, and logits agree at
1e-5 relative with the random BatchNorm statistics of ``random_state``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from regnet_core import build_model_spec, random_state
from regnet_core.checkpoint import load_state, save_checkpoint
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError, FormatError
from regnet_core.formats import detect_format, get_format
from regnet_core.formats.hf_tf import (
    MODEL_NAMES,
    TF_INDEX_NAME,
    TF_WEIGHTS_NAME,
    canonical_name,
    read_names,
    tf_name,
    write_names,
)
from regnet_core.weights import BN_COUNT, parameter_table

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent
PIXELS = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
HF_FILES = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"}


def _hf_dir(directory: Path, layer_type: str = "y", with_head: bool = True, seed: int = 0) -> Path:
    config = tiny_config(layer_type)
    state = random_state(build_model_spec(config), seed, with_head)
    architecture = "RegNetForImageClassification" if with_head else "RegNetModel"
    save_checkpoint(directory, config, state, architecture=architecture)
    return directory


def _weights(directory: Path) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in load_state(directory).items() if "num_batches" not in name}


def _close(expected: np.ndarray, got: np.ndarray) -> None:
    expected, got = np.asarray(expected).reshape(len(PIXELS), -1), np.asarray(got).reshape(len(PIXELS), -1)
    assert expected.shape == got.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


# ----------------------------------------------------------------------------- numpy + h5py only


@pytest.mark.parametrize("layer_type", ["x", "y"])
@pytest.mark.parametrize("with_head", [True, False])
def test_tf_names_are_canonical_names_with_keras_variables(layer_type, with_head):
    names = [
        t.name for t in parameter_table(build_model_spec(tiny_config(layer_type)), with_head) if t.kind != BN_COUNT
    ]
    for name in names:
        assert canonical_name(tf_name(name)) == name
    assert tf_name("regnet.encoder.stages.1.layers.0.layer.1.convolution.weight") == (
        "regnet/encoder/stages.1/layers.0/layer.1/convolution/kernel:0"
    )
    assert tf_name("regnet.embedder.embedder.normalization.running_var") == (
        "regnet/embedder/embedder/normalization/moving_variance:0"
    )
    assert tf_name("classifier.1.bias") == "classifier.1/bias:0"
    assert canonical_name("regnet/encoder/stages.0/layers.0/layer.2/attention.0/bias:0") == (
        "regnet.encoder.stages.0.layers.0.layer.2.attention.0.bias"
    )
    assert canonical_name("regnet/embedder/embedder/normalization/bias:0") is None  # BN's shift is "beta"
    assert canonical_name("regnet/embedder/embedder/convolution/kernel") is None  # no ":0"
    fmt = get_format("hf-tf")
    # TFRegNetModel keeps its "regnet" main layer: TF names always start with regnet/ or classifier.1/
    tf_names = [tf_name(n if n.startswith(("regnet.", "classifier.")) else f"regnet.{n}") for n in names]
    mapped, unknown = fmt.to_neutral([*tf_names, "regnet/extra/kernel:0"])
    assert unknown == ["regnet/extra/kernel:0"] and len(mapped) == len(names)
    assert fmt.from_neutral(list(mapped.values())) == {v: k for k, v in mapped.items()}


@pytest.mark.parametrize(
    "layer_type, with_head, shard", [("x", True, None), ("y", True, "2KB"), ("y", False, None), ("x", False, "3KB")]
)
def test_write_and_read_back_is_bit_exact(tmp_path, layer_type, with_head, shard):
    source = _hf_dir(tmp_path / "hf", layer_type, with_head)
    target = tmp_path / "tf"
    write_checkpoint(read_checkpoint(source), target, "hf-tf", max_shard_size=shard or "5GB", progress=False)
    files = {path.name for path in target.iterdir()}
    assert not files & HF_FILES  # nothing transformers would prefer over tf_model.h5
    config = json.loads((target / "config.json").read_text())
    assert config["architectures"] == ["RegNetForImageClassification" if with_head else "RegNetModel"]
    model_name = MODEL_NAMES[with_head]
    if shard is None:
        assert files == {TF_WEIGHTS_NAME, "config.json", "preprocessor_config.json"}
        with h5py.File(target / TF_WEIGHTS_NAME) as handle:
            layers = read_names(handle, "layer_names")
            assert layers == (["regnet", "flatten", "classifier.1"] if with_head else ["regnet"])
            assert handle.attrs["backend"] == "tensorflow"
            weights = read_names(handle["regnet"], "weight_names")
            assert all(name.startswith(f"{model_name}/regnet/") and name.endswith(":0") for name in weights)
            kernel = handle[f"regnet/{model_name}/regnet/encoder/stages.1/layers.0/layer.1/convolution/kernel:0"]
            assert kernel.shape == (3, 3, 8, 16) and kernel.chunks is None  # HWIO, contiguous
    else:
        index = json.loads((target / TF_INDEX_NAME).read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 2 and shards[0] == f"tf_model-00001-of-{len(shards):05d}.h5"
        assert all(name.startswith(f"{model_name}/regnet/") for name in index["weight_map"] if "classifier" not in name)
        with h5py.File(target / shards[0]) as handle:
            names = read_names(handle, "layer_names")
            assert names == sorted(names) and all(isinstance(handle[name], h5py.Dataset) for name in names)
    back = read_checkpoint(target, "hf-tf")
    assert back.format == "hf-tf" and back.config_origin == "checkpoint"
    expected, state = _weights(source), back.canonical_state()
    assert set(state) == set(expected)
    assert all(np.array_equal(state[name].load(), value) for name, value in expected.items())


def test_directories_and_bare_files_are_detected(tmp_path):
    source = _hf_dir(tmp_path / "hf", "y")
    checkpoint = read_checkpoint(source)
    write_checkpoint(checkpoint, tmp_path / "tf", "hf-tf", progress=False)
    write_checkpoint(checkpoint, tmp_path / "sharded", "hf-tf", max_shard_size="2KB", progress=False)
    for directory in (tmp_path / "tf", tmp_path / "sharded"):
        fmt, notes = detect_format(directory)
        assert (fmt.name, notes) == ("hf-tf", [])
    bare = read_checkpoint(tmp_path / "tf" / TF_WEIGHTS_NAME)  # no config.json beside it: inferred
    assert bare.format == "hf-tf" and bare.config_origin == "inferred"
    assert build_model_spec(bare.config) == build_model_spec(tiny_config("y"))
    both = tmp_path / "both"  # transformers reads model.safetensors first; so do we
    write_checkpoint(checkpoint, both, progress=False)
    (both / TF_WEIGHTS_NAME).write_bytes((tmp_path / "tf" / TF_WEIGHTS_NAME).read_bytes())
    fmt, notes = detect_format(both)
    assert fmt.name == "hf" and "hf-tf also there" in notes[0]


def test_long_name_lists_are_split_as_keras_does(tmp_path):
    names = [f"model/regnet/layer_{i:04d}/kernel:0" for i in range(50)]
    with h5py.File(tmp_path / "names.h5", "w") as handle:
        write_names(handle, "weight_names", names, limit=400)
        write_names(handle, "short", names[:2], limit=400)
        write_names(handle, "empty", [])
    with h5py.File(tmp_path / "names.h5") as handle:
        assert "weight_names" not in handle.attrs and "weight_names0" in handle.attrs
        assert all(handle.attrs[k].nbytes <= 400 for k in handle.attrs if k.startswith("weight_names"))
        assert read_names(handle, "weight_names") == names
        assert read_names(handle, "short") == names[:2] and read_names(handle, "empty") == []
        assert read_names(handle, "absent") is None


def test_narrow_dtypes(tmp_path):
    source = _hf_dir(tmp_path / "hf", "x")
    checkpoint = read_checkpoint(source)
    write_checkpoint(checkpoint, tmp_path / "f16", "hf-tf", dtype="float16", progress=False)
    back = read_checkpoint(tmp_path / "f16", "hf-tf")
    assert back.source_dtypes() == {"float16": len(back.tensors)}
    expected = _weights(source)
    state = back.canonical_state()
    assert all(np.array_equal(state[name].load(), value.astype(np.float16)) for name, value in expected.items())
    write_checkpoint(back, tmp_path / "f16-hf", progress=False)  # a float16 source stays float16
    written = load_state(tmp_path / "f16-hf")
    # The hf writer adds the BatchNorm batch counters (int64 zeros) that TensorFlow files do not keep.
    assert {str(value.dtype) for name, value in written.items() if "num_batches_tracked" not in name} == {"float16"}
    assert {str(value.dtype) for name, value in written.items() if "num_batches_tracked" in name} == {"int64"}
    with pytest.raises(FormatError, match="hf-tf stores float32 or float16 arrays.*got bfloat16"):
        write_checkpoint(checkpoint, tmp_path / "bf16", "hf-tf", dtype="bfloat16", progress=False)
    assert not (tmp_path / "bf16").exists()


def test_damaged_and_foreign_files_raise_checkpoint_errors(tmp_path):
    source = _hf_dir(tmp_path / "hf", "y")
    checkpoint = read_checkpoint(source)
    write_checkpoint(checkpoint, tmp_path / "single", "hf-tf", progress=False)
    data = (tmp_path / "single" / TF_WEIGHTS_NAME).read_bytes()
    (tmp_path / "single" / TF_WEIGHTS_NAME).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="is not an HDF5 file .* or is damaged"):
        read_checkpoint(tmp_path / "single", "hf-tf")
    (tmp_path / "single" / TF_WEIGHTS_NAME).write_bytes(b"not an hdf5 file at all")
    with pytest.raises(CheckpointError, match="tf_model.h5 is not an HDF5 file"):
        read_checkpoint(tmp_path / "single", "hf-tf")

    write_checkpoint(checkpoint, tmp_path / "sharded", "hf-tf", max_shard_size="4KB", progress=False)
    index_path = tmp_path / "sharded" / TF_INDEX_NAME
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    (tmp_path / "x.h5").write_bytes(b"")
    index["weight_map"][first] = "../x.h5"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="refusing to read outside the checkpoint directory"):
        read_checkpoint(tmp_path / "sharded", "hf-tf")
    index["weight_map"][first] = "tf_model-00001-of-00099.h5"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lists the shard tf_model-00001-of-00099.h5, which is missing"):
        read_checkpoint(tmp_path / "sharded", "hf-tf")

    keras_file = tmp_path / "model.weights.h5"
    write_checkpoint(checkpoint, keras_file, progress=False)
    with pytest.raises(CheckpointError, match="expected the root attribute 'layer_names'.*--from keras"):
        read_checkpoint(keras_file, "hf-tf")


def test_without_h5py_the_error_says_what_to_install(tmp_path):
    source = _hf_dir(tmp_path / "hf", "x")
    write_checkpoint(read_checkpoint(source), tmp_path / "tf", "hf-tf", progress=False)
    code = (
        "import sys\n"
        "sys.modules['h5py'] = None\n"
        "from regnet_core.convert import read_checkpoint\n"
        "from regnet_core.errors import CheckpointError\n"
        "try:\n"
        f"    read_checkpoint({str(tmp_path / 'tf')!r}, 'hf-tf')\n"
        "except CheckpointError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "needs h5py, which is not installed" in result.stdout and "pip install h5py" in result.stdout


# ----------------------------------------------------------------------------- against transformers' TF classes


@pytest.fixture(scope="module")
def transformers_tf():
    """transformers with its TF classes (TensorFlow and tf-keras), or skip."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    try:
        transformers.TFRegNetForImageClassification  # noqa: B018
    except Exception as error:  # noqa: BLE001  (any import failure of the optional TF stack)
        pytest.skip(f"transformers' TF classes do not import: {error}")
    transformers.utils.logging.set_verbosity_error()
    return transformers


@pytest.fixture(scope="module")
def written_by_transformers(transformers_tf, tmp_path_factory):
    """Directories TFRegNet* wrote (single and sharded), converted by transformers from random PT weights.

    Returns {key: (directory, NCHW logits or pooled features of the TF model)}.
    """
    root = tmp_path_factory.mktemp("transformers_tf")
    out = {}
    for layer_type in ("x", "y"):
        source = _hf_dir(root / f"hf-{layer_type}", layer_type, seed=7)
        model = transformers_tf.TFRegNetForImageClassification.from_pretrained(source, from_pt=True)
        logits = model(pixel_values=PIXELS, training=False).logits.numpy()
        model.save_pretrained(root / f"{layer_type}-single")
        model.save_pretrained(root / f"{layer_type}-sharded", max_shard_size="2KB")
        out[f"{layer_type}-single"] = (root / f"{layer_type}-single", logits)
        out[f"{layer_type}-sharded"] = (root / f"{layer_type}-sharded", logits)
    trunk = transformers_tf.TFRegNetModel.from_pretrained(root / "hf-y", from_pt=True)
    trunk.save_pretrained(root / "y-trunk")
    out["y-trunk"] = (root / "y-trunk", trunk(pixel_values=PIXELS, training=False).pooler_output.numpy())
    assert (root / "y-sharded" / TF_INDEX_NAME).is_file() and (root / "y-single" / TF_WEIGHTS_NAME).is_file()
    return out


def _pt_reference(transformers, directory: Path, with_head: bool = True) -> np.ndarray:
    import torch

    model_class = transformers.RegNetForImageClassification if with_head else transformers.RegNetModel
    model = model_class.from_pretrained(directory).eval()
    with torch.no_grad():
        outputs = model(torch.from_numpy(PIXELS))
    return (outputs.logits if with_head else outputs.pooler_output).numpy()


@pytest.mark.parametrize("key", ["x-single", "x-sharded", "y-single", "y-sharded", "y-trunk"])
def test_files_transformers_wrote_read_with_equal_logits(tmp_path, transformers_tf, written_by_transformers, key):
    directory, expected = written_by_transformers[key]
    checkpoint = read_checkpoint(directory, "hf-tf")
    assert checkpoint.config_origin == "checkpoint" and checkpoint.with_head == (key != "y-trunk")
    assert all(tensor.dtype == "float32" for tensor in checkpoint.tensors.values())
    write_checkpoint(checkpoint, tmp_path / "hf", progress=False)
    _close(expected, _pt_reference(transformers_tf, tmp_path / "hf", checkpoint.with_head))


# A few shards: transformers' loader runs gc.collect() after each one, slow beside TF and PyTorch.
@pytest.mark.parametrize("layer_type, shard", [("x", None), ("y", None), ("x", "16KB"), ("y", "20KB")])
def test_our_output_loads_in_transformers_tf(tmp_path, transformers_tf, layer_type, shard):
    source = _hf_dir(tmp_path / "hf", layer_type, seed=11)
    target = tmp_path / "tf"
    write_checkpoint(read_checkpoint(source), target, "hf-tf", max_shard_size=shard or "5GB", progress=False)
    if shard is not None:
        assert len(json.loads((target / TF_INDEX_NAME).read_text())["weight_map"]) > 20
        assert 2 <= len(list(target.glob("tf_model-*.h5"))) <= 4
    model, info = transformers_tf.TFRegNetForImageClassification.from_pretrained(target, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):  # the weightless flatten layer's name varies
        assert not [name for name in info[kind] if not str(name).startswith("flatten")], info
    got = model(pixel_values=PIXELS, training=False).logits.numpy()
    _close(_pt_reference(transformers_tf, source), got)


def test_split_name_attributes_load_in_transformers_tf(tmp_path, transformers_tf, monkeypatch):
    from regnet_core.formats import hf_tf

    monkeypatch.setattr(hf_tf, "HDF5_OBJECT_HEADER_LIMIT", 600)  # as a regnet-y-10b's list would be split
    source = _hf_dir(tmp_path / "hf", "y", seed=12)
    write_checkpoint(read_checkpoint(source), tmp_path / "tf", "hf-tf", progress=False)
    with h5py.File(tmp_path / "tf" / TF_WEIGHTS_NAME) as handle:
        assert "weight_names" not in handle["regnet"].attrs and "weight_names3" in handle["regnet"].attrs
    model, info = transformers_tf.TFRegNetForImageClassification.from_pretrained(
        tmp_path / "tf", output_loading_info=True
    )
    assert not [name for name in info["missing_keys"] if not name.startswith("flatten")]
    _close(_pt_reference(transformers_tf, source), model(pixel_values=PIXELS, training=False).logits.numpy())


def test_float16_output_loads_in_transformers_tf(tmp_path, transformers_tf):
    source = _hf_dir(tmp_path / "hf", "y", seed=13)
    checkpoint = read_checkpoint(source)
    write_checkpoint(checkpoint, tmp_path / "tf16", "hf-tf", dtype="float16", progress=False)
    write_checkpoint(checkpoint, tmp_path / "hf16", dtype="float16", progress=False)  # the same rounding, PyTorch
    model = transformers_tf.TFRegNetForImageClassification.from_pretrained(tmp_path / "tf16")
    assert all(weight.dtype == "float32" for weight in model.weights)
    reference = _pt_reference(transformers_tf, tmp_path / "hf16")
    _close(reference, model(pixel_values=PIXELS, training=False).logits.numpy())
    # and read as a float16 source: float16 tensors, the same network
    back = read_checkpoint(tmp_path / "tf16", "hf-tf")
    assert back.source_dtypes() == {"float16": len(back.tensors)}
    write_checkpoint(back, tmp_path / "back", progress=False)
    _close(reference, _pt_reference(transformers_tf, tmp_path / "back"))


def test_backends_load_a_tf_directory_directly(transformers_tf, written_by_transformers):
    from regnet_core.backends import get_backend

    directory, expected = written_by_transformers["y-sharded"]
    import regnet_flax
    import regnet_pt
    import regnet_tf

    for framework, package in (("pt", regnet_pt), ("tf", regnet_tf), ("flax", regnet_flax)):
        model = package.RegNetForImageClassification.from_pretrained(directory)
        _close(expected, get_backend(framework).run(model, PIXELS, output_hidden_states=False)["logits"])


def test_cli_convert_to_and_from_hf_tf_with_verify(tmp_path, capsys, transformers_tf, written_by_transformers):
    source = _hf_dir(tmp_path / "hf", "x", seed=14)
    assert main(["convert", str(source), str(tmp_path / "tf"), "--to", "hf-tf", "--verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "verify: PASS" in out and "vs transformers" in out
    directory, _ = written_by_transformers["y-single"]
    assert main(["convert", str(directory), str(tmp_path / "from-tf"), "--verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "(hf-tf)" in out and "transformers (TensorFlow)" in out and "verify: PASS" in out
