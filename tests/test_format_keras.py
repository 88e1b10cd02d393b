"""``keras``: Keras 3 .weights.h5 read and written with h5py alone, checked against Keras' own files and loader."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from regnet_core import build_model_spec, random_state
from regnet_core.checkpoint import load_state, save_checkpoint
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError
from regnet_core.formats import detect_format, get_format
from regnet_core.formats.keras_native import CONFIG_ATTRIBUTE, ROOT_NAMES, h5_layer_groups, native_table
from regnet_core.tensors import bfloat16_bits_to_float32, float32_to_bfloat16_bits
from regnet_core.weights import BN_COUNT, parameter_table

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent
HAS_TF = importlib.util.find_spec("tensorflow") is not None
requires_tf = pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed")
CASES = {  # name -> (config changes, with_head)
    "x": ({"layer_type": "x"}, True),
    "y": ({"layer_type": "y"}, True),
    "y-trunk": ({"layer_type": "y"}, False),
    "x-trunk": ({"layer_type": "x"}, False),
}


def _hf_dir(directory: Path, layer_type: str = "y", with_head: bool = True, seed: int = 0, **changes) -> Path:
    config = tiny_config(layer_type, **changes)
    state = random_state(build_model_spec(config), seed, with_head)
    architecture = "RegNetForImageClassification" if with_head else "RegNetModel"
    save_checkpoint(directory, config, state, architecture=architecture)
    return directory


def _weights(directory: Path) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in load_state(directory).items() if "num_batches" not in name}


def _tree(path: Path) -> dict[str, tuple]:
    """Every group and dataset of an HDF5 file: kind, attributes, shape, dtype, layout and bytes."""
    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as handle:
        out["/"] = ("group", {k: str(v) for k, v in handle.attrs.items()})

        def visit(name: str, item) -> None:
            attrs = {k: str(v) for k, v in item.attrs.items()}
            if isinstance(item, h5py.Dataset):
                out[name] = ("dataset", attrs, item.shape, str(item.dtype), item.chunks, item[()].tobytes())
            else:
                out[name] = ("group", attrs)

        handle.visititems(visit)
    return out


# ----------------------------------------------------------------------------- numpy + h5py only


@pytest.mark.parametrize("case", list(CASES))
def test_write_and_read_back_is_bit_exact(tmp_path, case):
    changes, with_head = CASES[case]
    source = _hf_dir(tmp_path / "hf", with_head=with_head, **changes)
    target = tmp_path / "model.weights.h5"
    write_checkpoint(read_checkpoint(source), target, progress=False)
    fmt, _ = detect_format(target)
    assert fmt.name == "keras"
    back = read_checkpoint(target)
    assert back.format == "keras" and back.config_origin == "checkpoint"
    assert back.config.architectures == (["RegNetForImageClassification"] if with_head else ["RegNetModel"])
    state = back.canonical_state()
    expected = _weights(source)
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert state[name].dtype == "float32" and np.array_equal(state[name].load(), value), name
    with h5py.File(target) as handle:
        assert json.loads(handle.attrs[CONFIG_ATTRIBUTE])["depths"] == [1, 2, 2]
        # conv kernels are HWIO, stored at the group Keras derives from the model's attributes
        group = "layers/stage_1/blocks/bottleneck/conv_b/convolution/vars"
        if with_head:
            group = "layers/reg_net_model/" + group
        assert handle[group].attrs["name"] == "conv" and handle[f"{group}/0"].shape == (3, 3, 8, 16)


def test_every_hdf5_storage_layout_reads_the_same_values(tmp_path):
    """Contiguous data is read from its byte offset; chunked, compressed, big-endian and compact data all agree."""
    source = _hf_dir(tmp_path / "hf")
    plain = tmp_path / "plain.weights.h5"
    write_checkpoint(read_checkpoint(source), plain, progress=False)
    varied = tmp_path / "varied.weights.h5"
    with h5py.File(plain, "r") as src, h5py.File(varied, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        datasets = []
        src.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
        for name, item in src.items():
            src.copy(item, dst, name=name)
        layouts = ["big-endian", "gzip", "compact", "plain"]
        for index, name in enumerate(datasets):
            values, attrs = src[name][()], dict(src[name].attrs)
            layout = layouts[index % len(layouts)]
            del dst[name]
            if layout == "big-endian":
                made = dst.create_dataset(name, data=values.astype(values.dtype.newbyteorder(">")))
            elif layout == "gzip":
                made = dst.create_dataset(name, data=values, chunks=True, compression="gzip")
            elif layout == "compact" and values.nbytes < 60000:
                space = h5py.h5s.create_simple(values.shape)
                plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                plist.set_layout(h5py.h5d.COMPACT)
                made = h5py.Dataset(
                    h5py.h5d.create(dst.id, name.encode(), h5py.h5t.py_create(values.dtype), space, plist)
                )
                made[...] = values
            else:
                made = dst.create_dataset(name, data=values)
            for key, value in attrs.items():
                made.attrs[key] = value
    expected = read_checkpoint(plain).canonical_state()
    got = read_checkpoint(varied).canonical_state()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        value = got[name].load()
        assert value.dtype == np.float32 and np.array_equal(value, tensor.load()), name
    with h5py.File(varied, "r") as handle:  # the four layouts are really there
        found = set()
        handle.visititems(
            lambda name, item: (
                found.add((item.chunks is not None, item.dtype.byteorder, item.id.get_offset() is None))
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    assert (True, "<", True) in found or (True, "=", True) in found  # chunked: no single offset
    assert any(order == ">" for _, order, _ in found)


def test_native_paths_and_h5_groups_follow_the_model_attributes():
    spec = build_model_spec(tiny_config("y"))
    table = native_table(spec)
    assert table["regnet/stage_1/block_1/se/reduce/kernel"] == (1, 1, 16, 4)
    assert h5_layer_groups("regnet/stage_2/block_1/se/expand", True)[-3:] == [
        ("layers/reg_net_model/layers/stage_2/blocks/bottleneck_1", "block_1"),
        ("layers/reg_net_model/layers/stage_2/blocks/bottleneck_1/squeeze_excitation", "se"),
        ("layers/reg_net_model/layers/stage_2/blocks/bottleneck_1/squeeze_excitation/expand", "expand"),
    ]
    assert h5_layer_groups("stem/bn", False) == [
        ("layers/conv_norm_act", "stem"),
        ("layers/conv_norm_act/normalization", "bn"),
    ]
    assert h5_layer_groups("classifier", True) == [("classifier", "classifier")]
    fmt = get_format("keras")
    names = [path for path in native_table(spec)]
    mapped, unknown = fmt.to_neutral([*names, "regnet/stage_1/block_0/z/conv/kernel"])
    assert unknown == ["regnet/stage_1/block_0/z/conv/kernel"]
    assert mapped["regnet/stage_1/block_1/se/reduce/bias"] == "s1.b1.se.reduce.bias"
    assert mapped["regnet/stage_0/block_0/projection/bn/moving_variance"] == "s0.b0.proj.bn.running_var"
    assert fmt.from_neutral(list(mapped.values())) == {v: k for k, v in mapped.items()}
    counted = [t for t in parameter_table(spec) if t.kind != BN_COUNT]
    assert len(mapped) == len(counted)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_narrow_dtypes_round_trip(tmp_path, dtype):
    source = _hf_dir(tmp_path / "hf", "x")
    target = tmp_path / f"{dtype}.weights.h5"
    write_checkpoint(read_checkpoint(source), target, dtype=dtype, progress=False)
    with h5py.File(target) as handle:
        stem = handle["layers/reg_net_model/layers/conv_norm_act/convolution/vars/0"]
        if dtype == "bfloat16":  # Keras' convention: 2-byte opaque values marked with the attribute dtype
            assert stem.dtype.kind == "V" and stem.dtype.itemsize == 2 and stem.attrs["dtype"] == "bfloat16"
        else:
            assert stem.dtype == np.float16
    back = read_checkpoint(target).canonical_state()
    expected = _weights(source)
    for name, value in expected.items():
        assert back[name].dtype == dtype, name
        if dtype == "bfloat16":
            rounded = bfloat16_bits_to_float32(float32_to_bfloat16_bits(value))
        else:
            rounded = value.astype(np.float16)
        assert np.array_equal(back[name].load(), rounded), name
    # and from the float16 / bfloat16 source on, unchanged
    again = tmp_path / f"again-{dtype}"
    write_checkpoint(read_checkpoint(target), again, progress=False)
    again_state = load_state(again)
    assert all(np.array_equal(np.asarray(again_state[n]), back[n].load()) for n in expected)


def test_damaged_files_raise_checkpoint_errors(tmp_path):
    source = _hf_dir(tmp_path / "hf")
    good = tmp_path / "good.weights.h5"
    write_checkpoint(read_checkpoint(source), good, progress=False)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is not an HDF5 file .* or is damaged"):
        read_checkpoint(truncated, "keras")
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="is not an HDF5 file"):
        read_checkpoint(garbage, "keras")
    other = tmp_path / "other.weights.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="holds no Keras layer variables"):
        read_checkpoint(other, "keras")
    # a dataset whose bytes are cut after the file was opened: the lazy read names the tensor
    tensors = get_format("keras").open(good).tensors
    good.write_bytes(data[:4096])
    # (its bytes are read from their place in the file, as safetensors' are)
    with pytest.raises(CheckpointError, match=r"good.weights.h5 ended while reading \w+/\w+: was it truncated"):
        next(iter(tensors.values())).load()


def test_convert_runs_with_tensorflow_blocked(tmp_path):
    source = _hf_dir(tmp_path / "hf", "y")
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None; sys.modules['keras'] = None  # any import of them fails\n"
        "from regnet_core.cli import main\n"
        f"assert main(['convert', {str(source)!r}, {str(tmp_path / 'a.weights.h5')!r}, '--quiet']) == 0\n"
        f"assert main(['convert', {str(tmp_path / 'a.weights.h5')!r}, {str(tmp_path / 'out')!r}, '--quiet']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras') "
        "and sys.modules[m] is not None))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    original, back = _weights(source), _weights(tmp_path / "out")
    assert original.keys() == back.keys()
    assert all(np.array_equal(original[name], back[name]) for name in original)


# ----------------------------------------------------------------------------- against Keras itself


def _keras_model(config, with_head, state):
    from regnet_tf import RegNetForImageClassification, RegNetModel

    model = (RegNetForImageClassification if with_head else RegNetModel)(
        config, _skip_init=True, name=ROOT_NAMES[with_head]
    )
    return model.load_canonical_state(state)


@requires_tf
@pytest.mark.parametrize("case", list(CASES))
def test_tree_is_identical_to_the_one_keras_writes(tmp_path, case):
    from regnet_tf import save_native

    changes, with_head = CASES[case]
    source = _hf_dir(tmp_path / "hf", with_head=with_head, **changes)
    checkpoint = read_checkpoint(source)
    ours = tmp_path / "ours.weights.h5"
    write_checkpoint(checkpoint, ours, progress=False)
    theirs = save_native(_keras_model(checkpoint.config, with_head, _weights(source)), tmp_path / "keras.weights.h5")
    assert _tree(ours) == _tree(theirs)


@requires_tf
@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_keras_load_weights_reads_our_file(tmp_path, layer_type):
    from regnet_tf import RegNetForImageClassification, load_native

    source = _hf_dir(tmp_path / "hf", layer_type, seed=3)
    checkpoint = read_checkpoint(source)
    for dtype in (None, "bfloat16"):
        path = tmp_path / f"{dtype}.weights.h5"
        write_checkpoint(checkpoint, path, dtype=dtype, progress=False)
        model = RegNetForImageClassification(checkpoint.config)
        model.load_weights(path)  # Keras' own loader, by the file's tree
        expected = read_checkpoint(path).canonical_state()
        got = model.canonical_state()
        for name, value in expected.items():
            assert np.array_equal(got[name], value.load()), name
        ours = load_native(None, path)  # the strict loader (core reader)
        images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
        np.testing.assert_array_equal(ours(images).logits, model(images).logits)


@requires_tf
def test_optimizer_state_in_keras_files_is_ignored(tmp_path):
    import keras

    from regnet_tf import save_native

    source = _hf_dir(tmp_path / "hf", "x")
    checkpoint = read_checkpoint(source)
    model = _keras_model(checkpoint.config, True, _weights(source))
    model.compile(optimizer=keras.optimizers.Adam())
    model.optimizer.build(model.trainable_variables)
    path = save_native(model, tmp_path / "compiled.weights.h5")
    with h5py.File(path) as handle:
        assert "optimizer" in handle
    back = read_checkpoint(path)
    assert any("optimizer state" in entry for entry in back.foreign.ignored)
    expected = _weights(source)
    assert all(np.array_equal(back.canonical_state()[n].load(), v) for n, v in expected.items())


@requires_tf
def test_load_native_lists_every_problem_at_once(tmp_path):
    from regnet_core.weights import CheckpointMismatchError
    from regnet_tf import load_native

    source = _hf_dir(tmp_path / "hf", "y")
    path = tmp_path / "edited.weights.h5"
    write_checkpoint(read_checkpoint(source), path, progress=False)
    block = "layers/reg_net_model/layers/stage_1/blocks/bottleneck_1"
    with h5py.File(path, "r+") as handle:
        del handle[f"{block}/conv_a/normalization/vars/3"]  # moving_variance gone
        handle[f"{block}/conv_b/convolution/vars/5"] = np.zeros(2, np.float32)  # an extra variable
        del handle[f"{block}/conv_c/convolution/vars/0"]
        handle[f"{block}/conv_c/convolution/vars/0"] = np.zeros((1, 1, 16, 15), np.float32)  # wrong shape
    with pytest.raises(CheckpointMismatchError) as error:
        load_native(None, path)
    assert error.value.missing == ["regnet/stage_1/block_1/a/bn/moving_variance"]
    assert error.value.unexpected == ["regnet/stage_1/block_1/b/conv/vars/5"]
    assert error.value.mismatched == [
        "regnet/stage_1/block_1/c/conv/kernel (expected (1, 1, 16, 16), got (1, 1, 16, 15))"
    ]
    assert "does not hold the weights of this RegNetForImageClassification" in str(error.value)


@requires_tf
def test_verify_uses_keras_own_loading_as_the_reference(tmp_path):
    from regnet_core.convert import convert

    source = _hf_dir(tmp_path / "hf", "y", seed=5)
    path = tmp_path / "model.weights.h5"
    write_checkpoint(read_checkpoint(source), path, progress=False)
    report = convert(path, tmp_path / "out", verify=True, verify_frameworks=["tf"], progress=False).verify
    assert report.passed and not report.skipped, report.format()
    assert [row.reference for row in report.rows] == ["Keras (regnet_tf)"]
