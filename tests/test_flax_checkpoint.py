"""Flax checkpoints: the shared transformers layout (cross-loading with PyTorch) and msgpack export."""

import json

import numpy as np
import pytest

pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402

import regnet_flax  # noqa: E402
from regnet_core import CheckpointError, CheckpointMismatchError, build_model_spec, random_state  # noqa: E402
from regnet_core.backends import get_backend  # noqa: E402
from regnet_core.checkpoint import load_state  # noqa: E402
from regnet_flax import RegNetForImageClassification, RegNetModel  # noqa: E402
from regnet_flax.weights import flatten_variables  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

IMAGES = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)


def _model(layer_type="y", seed=0, with_head=True, **changes):
    config = tiny_config(layer_type, **changes)
    return regnet_flax.from_canonical(config, random_state(build_model_spec(config), seed, with_head), with_head)


def _assert_same_variables(a, b):
    flat_a, flat_b = flatten_variables(a), flatten_variables(b)
    assert set(flat_a) == set(flat_b)
    for path, value in flat_a.items():
        assert np.array_equal(np.asarray(value), np.asarray(flat_b[path])), path


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_round_trip_gives_identical_variables_and_logits(tmp_path, layer_type):
    module, variables = _model(layer_type)
    regnet_flax.save_pretrained(module, variables, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["RegNetForImageClassification"]
    loaded, loaded_variables = regnet_flax.from_pretrained(tmp_path)
    assert isinstance(loaded, RegNetForImageClassification)
    assert loaded.config == module.config.copy(architectures=["RegNetForImageClassification"])
    _assert_same_variables(variables, loaded_variables)
    assert np.array_equal(module.apply(variables, IMAGES).logits, loaded.apply(loaded_variables, IMAGES).logits)


def test_saved_tensors_are_canonical(tmp_path):
    module, variables = _model()
    regnet_flax.save_pretrained(module, variables, tmp_path)
    state = load_state(tmp_path)
    assert set(state) == set(random_state(build_model_spec(module.config)))
    assert state["regnet.encoder.stages.1.layers.1.layer.1.convolution.weight"].shape == (16, 8, 3, 3)
    assert state["classifier.1.weight"].shape == (5, 24)
    counter = state["regnet.embedder.embedder.normalization.num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64


def test_pytorch_checkpoints_load_with_the_same_logits_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    pt = get_backend("pt")
    config = tiny_config("y")
    pt_model = pt.from_canonical(config, random_state(build_model_spec(config), seed=4))
    pt_model.save_pretrained(tmp_path / "from_pt")
    module, variables = regnet_flax.from_pretrained(tmp_path / "from_pt")
    with torch.no_grad():
        expected = pt_model(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).logits.numpy()
    np.testing.assert_allclose(module.apply(variables, IMAGES).logits, expected, rtol=1e-5, atol=1e-5)
    regnet_flax.save_pretrained(module, variables, tmp_path / "from_flax")
    from regnet_pt import RegNetForImageClassification as TorchClassifier

    reloaded = TorchClassifier.from_pretrained(tmp_path / "from_flax")
    for name, tensor in pt_model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_sharded_save_loads_back(tmp_path):
    module, variables = _model()
    regnet_flax.save_pretrained(module, variables, tmp_path, max_shard_size="8KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (tmp_path / "model.safetensors").exists()
    _, loaded_variables = regnet_flax.from_pretrained(tmp_path)
    _assert_same_variables(variables, loaded_variables)


def test_trunks_and_heads_load_as_the_checkpoint_says(tmp_path):
    module, variables = _model("x", with_head=False)
    regnet_flax.save_pretrained(module, variables, tmp_path / "trunk")
    assert json.loads((tmp_path / "trunk" / "config.json").read_text())["architectures"] == ["RegNetModel"]
    trunk, trunk_variables = regnet_flax.from_pretrained(tmp_path / "trunk")
    assert isinstance(trunk, RegNetModel)
    _assert_same_variables(variables, trunk_variables)
    with pytest.raises(CheckpointMismatchError, match="missing: classifier.1.weight, classifier.1.bias"):
        RegNetForImageClassification.from_pretrained(tmp_path / "trunk")
    classifier, classifier_variables = _model("x")
    regnet_flax.save_pretrained(classifier, classifier_variables, tmp_path / "head")
    as_trunk, as_trunk_variables = RegNetModel.from_pretrained(tmp_path / "head")
    assert isinstance(as_trunk, RegNetModel)
    _assert_same_variables(classifier_variables["params"]["regnet"], as_trunk_variables["params"])


def test_reinit_head_keeps_the_trunk_and_draws_a_new_classifier(tmp_path):
    module, variables = _model("y")
    regnet_flax.save_pretrained(module, variables, tmp_path)
    with pytest.raises(
        CheckpointMismatchError, match="classifier.1.weight \\(expected \\(10, 24\\), got \\(5, 24\\)\\)"
    ):
        regnet_flax.from_pretrained(tmp_path, num_labels=10)
    tuned, tuned_variables = regnet_flax.from_pretrained(tmp_path, reinit_head=True, num_labels=10, seed=1)
    assert tuned.config.num_labels == 10
    _assert_same_variables(variables["params"]["regnet"], tuned_variables["params"]["regnet"])
    _assert_same_variables(variables["batch_stats"], tuned_variables["batch_stats"])
    head = tuned_variables["params"]["classifier_1"]
    assert head["kernel"].shape == (24, 10) and np.count_nonzero(head["bias"]) == 0
    assert 0.005 < float(jnp.std(head["kernel"])) < 0.015  # pycls N(0, 0.01)
    assert tuned.apply(tuned_variables, IMAGES).logits.shape == (2, 10)
    _, again = regnet_flax.from_pretrained(tmp_path, reinit_head=True, num_labels=10, seed=1)
    assert np.array_equal(again["params"]["classifier_1"]["kernel"], head["kernel"])  # seeded


def test_msgpack_export_round_trips(tmp_path):
    module, variables = _model("y")
    path = regnet_flax.save_native((module, variables), tmp_path / "model.msgpack")
    assert [p.name for p in tmp_path.iterdir()] == ["model.msgpack"]  # no temporary left behind
    loaded, loaded_variables = regnet_flax.load_native(module.config, path)
    assert isinstance(loaded, RegNetForImageClassification)
    assert set(loaded_variables) == {"params", "batch_stats"}
    _assert_same_variables(variables, loaded_variables)
    assert np.array_equal(module.apply(variables, IMAGES).logits, loaded.apply(loaded_variables, IMAGES).logits)
    backend = get_backend("flax")
    assert backend.NATIVE_FORMAT == "flax"
    trunk = _model("y", with_head=False)
    backend.save_native(trunk, tmp_path / "trunk.msgpack")
    _, trunk_variables = backend.load_native(module.config, tmp_path / "trunk.msgpack", with_head=False)
    _assert_same_variables(trunk[1], trunk_variables)
    # A classifier's file loads as a trunk, its classifier dropped, as checkpoint directories do.
    as_trunk, as_trunk_variables = regnet_flax.load_native(module.config, path, with_head=False)
    assert isinstance(as_trunk, RegNetModel)
    _assert_same_variables(variables["batch_stats"]["regnet"], as_trunk_variables["batch_stats"])
    _assert_same_variables(variables["params"]["regnet"], as_trunk_variables["params"])


def test_msgpack_of_another_model_is_rejected_with_every_problem(tmp_path):
    module, variables = _model("y")
    regnet_flax.save_native((module, variables), tmp_path / "y.msgpack")
    with pytest.raises(CheckpointMismatchError) as error:
        regnet_flax.load_native(tiny_config("x"), tmp_path / "y.msgpack")
    message = str(error.value)
    assert str(tmp_path / "y.msgpack") in message
    assert "unexpected: " in message and "attention_0/kernel" in message  # SE layers an X model lacks
    assert "missing: " in message and "layer_2/normalization/scale" in message
    trunk = _model("y", with_head=False)
    regnet_flax.save_native(trunk, tmp_path / "trunk.msgpack")
    with pytest.raises(
        CheckpointMismatchError, match="2 missing: params/classifier_1/kernel, params/classifier_1/bias$"
    ):
        regnet_flax.load_native(module.config, tmp_path / "trunk.msgpack", with_head=True)


def test_unreadable_msgpack_files_are_named(tmp_path):
    config = tiny_config("y")
    (tmp_path / "junk.msgpack").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(CheckpointError, match="cannot read .*junk.msgpack as a Flax msgpack file"):
        regnet_flax.load_native(config, tmp_path / "junk.msgpack")
    (tmp_path / "list.msgpack").write_bytes(b"\x93\x01\x02\x03")  # a valid msgpack list
    with pytest.raises(ValueError, match="expected a Flax variables dict .* got list"):
        regnet_flax.load_native(config, tmp_path / "list.msgpack")
    with pytest.raises(CheckpointError, match="no such path"):
        regnet_flax.load_native(config, tmp_path / "missing.msgpack")


def test_saving_a_mismatched_pair_writes_nothing(tmp_path):
    module, variables = _model("y")
    del variables["params"]["classifier_1"]
    with pytest.raises(CheckpointMismatchError, match="to save"):
        regnet_flax.save_native((module, variables), tmp_path / "bad.msgpack")
    with pytest.raises(CheckpointMismatchError):
        regnet_flax.save_pretrained(module, variables, tmp_path / "bad")
    assert not (tmp_path / "bad.msgpack").exists() and not (tmp_path / "bad").exists()
