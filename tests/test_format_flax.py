"""``flax``: this package's Flax variables .msgpack files, read and written by the core without jax or flax."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, random_state
from regnet_core.checkpoint import save_checkpoint
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError, FormatError
from regnet_core.formats import detect_format, get_format, neutral
from regnet_core.formats.flax_native import canonical_name, native_module_path, variable_path
from regnet_core.msgpack_io import nest, read_msgpack, write_msgpack
from regnet_core.weights import parameter_table

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _hf_dir(tmp_path: Path, layer_type: str = "y", with_head: bool = True, seed: int = 3) -> tuple[Path, dict]:
    config = tiny_config(layer_type, num_labels=5 if with_head else 0)
    state = random_state(build_model_spec(config), seed=seed, with_head=with_head)
    save_checkpoint(tmp_path / "hf", config, state)
    return tmp_path / "hf", state


@pytest.mark.parametrize(("layer_type", "with_head"), [("y", True), ("x", False)])
def test_hf_to_flax_and_back_is_bit_exact_under_linen_names(tmp_path: Path, layer_type: str, with_head: bool):
    source, state = _hf_dir(tmp_path, layer_type, with_head)
    files = write_checkpoint(read_checkpoint(source), tmp_path / "w.msgpack", progress=False)
    assert files == [tmp_path / "w.msgpack"]
    contents = read_msgpack(tmp_path / "w.msgpack")
    prefix = "regnet/" if with_head else ""
    assert list(contents.tensors)[0] == f"params/{prefix}embedder/embedder/convolution/kernel"
    assert f"batch_stats/{prefix}encoder/stages_1/layers_1/layer_0/normalization/var" in contents.tensors
    assert all(name.split("/")[0] in ("params", "batch_stats") for name in contents.tensors)
    assert [n.split("/")[0] for n in contents.tensors] == sorted(
        (n.split("/")[0] for n in contents.tensors), reverse=True
    )
    assert contents.tensors[f"params/{prefix}encoder/stages_1/layers_0/layer_1/convolution/kernel"].shape == (
        3,
        3,
        8,
        16,
    )
    back = read_checkpoint(tmp_path / "w.msgpack")
    assert back.format == "flax" and back.config_origin == "inferred"
    assert build_model_spec(back.config) == build_model_spec(tiny_config(layer_type, num_labels=5 if with_head else 0))
    got = back.canonical_state()
    assert set(got) == {name for name in state if not name.endswith("num_batches_tracked")}
    for name, tensor in got.items():
        assert np.array_equal(tensor.load(), state[name]), name


def test_output_restores_in_flax_as_regnet_flax_variables(tmp_path: Path):
    pytest.importorskip("flax")
    from flax import serialization

    import regnet_flax
    from regnet_flax.weights import flatten_variables, to_native

    source, state = _hf_dir(tmp_path)
    write_checkpoint(read_checkpoint(source), tmp_path / "w.msgpack", progress=False)
    restored = serialization.msgpack_restore((tmp_path / "w.msgpack").read_bytes())
    expected = flatten_variables(to_native(state, build_model_spec(tiny_config())))
    got = flatten_variables(restored)
    assert set(got) == set(expected)
    assert all(np.array_equal(got[path], value) for path, value in expected.items())
    module, variables = regnet_flax.load_native(tiny_config(), tmp_path / "w.msgpack")
    assert set(flatten_variables(variables)) == set(expected)
    # save_native's files are this format too, read back by the core.
    regnet_flax.save_native((module, variables), tmp_path / "saved.msgpack")
    assert (tmp_path / "saved.msgpack").read_bytes() == serialization.to_bytes(
        {name: variables[name] for name in variables}
    )
    again = read_checkpoint(tmp_path / "saved.msgpack", config=tiny_config())
    for name, tensor in again.canonical_state().items():
        assert np.array_equal(tensor.load(), state[name]), name
    # bfloat16 variables: the same bytes as flax writes, and back as bfloat16.
    import jax
    import jax.numpy as jnp

    narrow = jax.tree_util.tree_map(lambda value: value.astype(jnp.bfloat16), variables)
    regnet_flax.save_native((module, narrow), tmp_path / "narrow.msgpack")
    assert (tmp_path / "narrow.msgpack").read_bytes() == serialization.to_bytes(narrow)
    _, loaded = regnet_flax.load_native(tiny_config(), tmp_path / "narrow.msgpack")
    for path, value in flatten_variables(narrow).items():
        got = flatten_variables(loaded)[path]
        assert got.dtype == jnp.bfloat16 and np.array_equal(np.asarray(got), np.asarray(value)), path


def test_bfloat16_output_is_flax_bfloat16(tmp_path: Path):
    pytest.importorskip("flax")
    from flax import serialization

    source, state = _hf_dir(tmp_path)
    write_checkpoint(read_checkpoint(source), tmp_path / "b.msgpack", dtype="bfloat16", progress=False)
    restored = serialization.msgpack_restore((tmp_path / "b.msgpack").read_bytes())
    kernel = restored["params"]["classifier_1"]["kernel"]
    assert str(kernel.dtype) == "bfloat16"
    back = read_checkpoint(tmp_path / "b.msgpack")
    head = back.tensors["head.weight"]
    assert head.dtype == "bfloat16"
    assert np.array_equal(head.load(), np.asarray(kernel, np.float32).T)
    np.testing.assert_allclose(head.load(), state["classifier.1.weight"], rtol=2**-8, atol=0)
    # bfloat16 in, bfloat16 out: the same bytes (the stored bits pass through).
    write_checkpoint(back, tmp_path / "again.msgpack", progress=False)
    assert (tmp_path / "again.msgpack").read_bytes() == (tmp_path / "b.msgpack").read_bytes()


def test_converting_msgpack_files_never_imports_jax(tmp_path: Path):
    source, _ = _hf_dir(tmp_path)
    script = f"""
import sys
from regnet_core.convert import convert
convert({str(source)!r}, {str(tmp_path / "w.msgpack")!r})
convert({str(tmp_path / "w.msgpack")!r}, {str(tmp_path / "again")!r}, to_format="hf-flax")
convert({str(tmp_path / "again")!r}, {str(tmp_path / "back")!r}, from_format="hf-flax")
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("jax", "flax", "jaxlib", "msgpack"))
print(loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "back" / "model.safetensors").is_file()


def test_regnet_convert_to_flax_verifies(tmp_path: Path, capsys, monkeypatch):
    source, _ = _hf_dir(tmp_path)
    # PyTorch and Flax run the result (TensorFlow, slow to import, is covered by the loading tests).
    monkeypatch.setattr("regnet_core.convert.installed_frameworks", lambda: ["pt", "flax"])
    code = main(["convert", str(source), str(tmp_path / "out.msgpack"), "--to", "flax", "--verify", "--quiet"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "verify: PASS" in output and "(flax)" in output
    assert detect_format(tmp_path / "out.msgpack")[0].name == "flax"


def test_names_map_only_when_they_map_back():
    fmt = get_format("flax")
    spec = build_model_spec(tiny_config())
    canonical = [t.name for t in parameter_table(spec, True)]
    to_neutral, _ = neutral.from_canonical(canonical)
    names = fmt.from_neutral(list(to_neutral.values()))
    assert len(names) == len(canonical) - 19  # num_batches_tracked has no Flax counterpart
    mapped, unknown = fmt.to_neutral(list(names.values()))
    assert not unknown and mapped == {path: name for name, path in names.items()}
    wrong = [
        "params/regnet/embedder/embedder/normalization/kernel",  # BatchNorm holds scale, not kernel
        "batch_stats/regnet/embedder/embedder/convolution/mean",
        "params/regnet/encoder/stages/0/layers/0/layer/0/convolution/kernel",  # transformers' (hf-flax) naming
        "params/regnet/embedder/embedder/convolution/weight",
        "opt_state/regnet/embedder/embedder/convolution/kernel",
    ]
    assert fmt.to_neutral(wrong) == ({}, wrong)
    hf_flax = get_format("hf-flax")
    assert hf_flax.to_neutral(["params/regnet/encoder/stages/0/layers/0/layer/0/convolution/kernel"])[0] == {
        "params/regnet/encoder/stages/0/layers/0/layer/0/convolution/kernel": "s0.b0.a.conv.weight"
    }
    assert canonical_name("params/classifier_1/kernel") == "classifier.1.weight"
    assert variable_path("encoder.stages.2.layers.0.layer.2.attention.0", "conv", linen_names=False) == (
        "params",
        *"encoder/stages/2/layers/0/layer/2/attention/0/kernel".split("/"),
    )


def test_regnet_flax_uses_the_core_naming_rule():
    pytest.importorskip("flax")
    from regnet_flax import weights

    assert weights.native_module_path is native_module_path
    spec = build_model_spec(tiny_config("y"))
    table = parameter_table(spec, True)
    to_neutral, _ = neutral.from_canonical([t.name for t in table])
    names = get_format("flax").from_neutral(list(to_neutral.values()))
    expected = [names[to_neutral[t.name]] for t in table if to_neutral[t.name] in names]
    assert list(weights.native_table(spec)) == expected


def test_missing_batch_stats_and_stray_entries_are_refused(tmp_path: Path):
    source, _ = _hf_dir(tmp_path)
    write_checkpoint(read_checkpoint(source), tmp_path / "w.msgpack", progress=False)
    tensors = read_msgpack(tmp_path / "w.msgpack").tensors
    params = {name: tensor.load() for name, tensor in tensors.items() if name.startswith("params/")}
    write_msgpack(tmp_path / "params_only.msgpack", nest(params))
    with pytest.raises(CheckpointError, match=r"missing: .*running_mean"):
        read_checkpoint(tmp_path / "params_only.msgpack", "flax", config=tiny_config())
    stray = {**{name: tensor.load() for name, tensor in tensors.items()}, "params/regnet/extra/kernel": np.ones(2)}
    write_msgpack(tmp_path / "stray.msgpack", nest(stray))
    with pytest.raises(CheckpointError, match=r"params/regnet/extra/kernel"):  # named as no RegNet tensor
        read_checkpoint(tmp_path / "stray.msgpack", "flax")
    (tmp_path / "junk.msgpack").write_bytes(b"\x93\x01\x02\x03")
    with pytest.raises(FormatError, match="expected a Flax variables dict"):
        read_checkpoint(tmp_path / "junk.msgpack")


def test_only_msgpack_files_are_claimed_and_outputs_must_be_named_so(tmp_path: Path):
    fmt = get_format("flax")
    (tmp_path / "a.msgpack").write_bytes(b"\x80")
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert fmt.claims(tmp_path / "a.msgpack") and not fmt.claims(tmp_path / "a.safetensors")
    assert not fmt.claims(tmp_path)
    source, _ = _hf_dir(tmp_path)
    with pytest.raises(FormatError, match=r"flax output is a file named \*\.msgpack"):
        write_checkpoint(read_checkpoint(source), tmp_path / "out.bin", "flax", progress=False)
