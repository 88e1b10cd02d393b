"""Checkpoints: transformers-layout directories shared with PyTorch, Keras .weights.h5, SavedModel, .keras."""

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import h5py  # noqa: E402
import keras  # noqa: E402

from regnet_core import CheckpointMismatchError, build_model_spec, random_state  # noqa: E402
from regnet_core.checkpoint import load_state, save_checkpoint  # noqa: E402
from regnet_tf import RegNetForImageClassification, RegNetModel, load_native, save_native  # noqa: E402
from regnet_tf import backend as tf_backend  # noqa: E402
from regnet_tf.native import CONFIG_ATTRIBUTE  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

IMAGES = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
OTHER_SIZE = np.random.default_rng(1).normal(size=(3, 40, 48, 3)).astype(np.float32)


def _model(layer_type="y", seed=0, with_head=True, **changes):
    config = tiny_config(layer_type, **changes)
    return tf_backend.from_canonical(config, random_state(build_model_spec(config), seed, with_head), with_head)


def _same_weights(a, b):
    state_a, state_b = a.canonical_state(), b.canonical_state()
    return list(state_a) == list(state_b) and all(np.array_equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_save_pretrained_round_trip_is_identical(tmp_path, layer_type):
    model = _model(layer_type)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["RegNetForImageClassification"]
    state = load_state(tmp_path)
    counter = state["regnet.embedder.embedder.normalization.num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64  # PyTorch's buffer, written for transformers
    assert state["regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"].shape == (16, 8, 3, 3)  # OIHW
    loaded = RegNetForImageClassification.from_pretrained(tmp_path)
    assert _same_weights(model, loaded)
    np.testing.assert_array_equal(model(IMAGES).logits, loaded(IMAGES).logits)


def test_sharded_save_loads_back(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path, max_shard_size="8KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert _same_weights(model, RegNetForImageClassification.from_pretrained(tmp_path))


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_directories_cross_load_with_pytorch(tmp_path, layer_type):
    torch = pytest.importorskip("torch")
    from regnet_pt import RegNetForImageClassification as TorchClassifier

    config = tiny_config(layer_type)
    torch_model = TorchClassifier(config)
    torch_model.load_canonical_state(random_state(build_model_spec(config), 1))
    torch_model.save_pretrained(tmp_path / "from_pt")
    tf_model = RegNetForImageClassification.from_pretrained(tmp_path / "from_pt")
    with torch.no_grad():
        expected = torch_model.eval()(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).logits.numpy()
    got = tf_model(IMAGES).logits.numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()

    tf_model.save_pretrained(tmp_path / "from_tf")
    back = TorchClassifier.from_pretrained(tmp_path / "from_tf")
    for name, tensor in torch_model.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # Keras keeps no batch counter: written as 0
            assert torch.equal(tensor, back.state_dict()[name]), name


def test_trunk_loads_a_classifier_checkpoint_and_reinit_head_changes_the_labels(tmp_path):
    classifier = _model()
    classifier.save_pretrained(tmp_path)
    trunk = RegNetModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(trunk(IMAGES).pooler_output, classifier(IMAGES).pooler_output)
    keras.utils.set_random_seed(0)
    fresh = RegNetForImageClassification.from_pretrained(tmp_path, reinit_head=True, num_labels=10)
    assert fresh(IMAGES).logits.shape == (2, 10)
    np.testing.assert_array_equal(fresh(IMAGES).pooler_output, classifier(IMAGES).pooler_output)
    assert abs(float(np.std(fresh.classifier.kernel.numpy())) - 0.01) < 0.003  # pycls head init
    with pytest.raises(CheckpointMismatchError, match="classifier.1.weight"):
        RegNetForImageClassification.from_pretrained(tmp_path, num_labels=10)


def test_strict_load_lists_every_problem_at_once(tmp_path):
    config = tiny_config()
    state = random_state(build_model_spec(config), 0)
    del state["regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"]
    state["regnet.encoder.stages.9.layers.0.extra.weight"] = np.zeros(3, np.float32)
    state["classifier.1.weight"] = np.zeros((7, 24), np.float32)
    save_checkpoint(tmp_path, config, state)
    with pytest.raises(CheckpointMismatchError) as error:
        RegNetForImageClassification.from_pretrained(tmp_path)
    assert error.value.missing == ["regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"]
    assert error.value.unexpected == ["regnet.encoder.stages.9.layers.0.extra.weight"]
    assert error.value.mismatched == ["classifier.1.weight (expected (5, 24), got (7, 24))"]


# ----------------------------------------------------------------------------- native .weights.h5


def test_native_weights_round_trip_with_the_config_inside(tmp_path):
    model = _model()
    path = tmp_path / "regnet.weights.h5"
    save_native(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regnet.weights.h5"]  # no temporary left behind
    with h5py.File(path) as handle:
        stored = json.loads(handle.attrs[CONFIG_ATTRIBUTE])
    assert stored["architectures"] == ["RegNetForImageClassification"] and stored["depths"] == [1, 2, 2]
    loaded = load_native(None, path)
    assert _same_weights(model, loaded)
    np.testing.assert_array_equal(model(IMAGES).logits, loaded(IMAGES).logits)
    plain = RegNetForImageClassification(model.config)  # a plain Keras load_weights reads it too
    plain.load_weights(path)
    assert _same_weights(model, plain)


def test_backend_native_round_trip_of_a_trunk(tmp_path):
    trunk = _model(with_head=False)
    path = str(tmp_path / "trunk.weights.h5")
    assert tf_backend.NATIVE_FORMAT == "keras"
    tf_backend.save_native(trunk, path)
    loaded = tf_backend.load_native(None, path, with_head=False)
    assert isinstance(loaded, RegNetModel) and _same_weights(trunk, loaded)


def test_native_load_of_another_model_names_the_difference(tmp_path):
    path = tmp_path / "deeper.weights.h5"
    save_native(_model(depths=[1, 2, 3]), path)
    with pytest.raises(
        ValueError, match="holds another RegNet: depths: expected \\[1, 2, 2\\], file has \\[1, 2, 3\\]"
    ):
        load_native(tiny_config("y"), path)
    with pytest.raises(ValueError, match="holds a RegNetForImageClassification, expected RegNetModel"):
        load_native(None, path, with_head=False)


def test_native_load_without_a_config_attribute_is_still_strict(tmp_path):
    # A deeper model's file: Keras' load_weights alone would ignore the extra block and load the rest.
    path = tmp_path / "bare.weights.h5"
    _model(depths=[1, 2, 3]).save_weights(path)
    with pytest.raises(ValueError, match="does not hold the weights of this RegNetForImageClassification"):
        load_native(tiny_config("y"), path)
    with pytest.raises(ValueError, match="carries no 'regnet_config' attribute"):
        load_native(None, path)
    not_hdf5 = tmp_path / "text.weights.h5"
    not_hdf5.write_text("not a weights file")
    with pytest.raises(ValueError, match="is not an HDF5"):
        load_native(tiny_config("y"), not_hdf5)
    with pytest.raises(ValueError, match="must end with .weights.h5"):
        save_native(_model(), tmp_path / "weights.h5")


def test_native_load_of_a_file_with_the_right_shapes_in_the_wrong_places_fails(tmp_path):
    # The inventory of shapes matches, but two kernels trade places: Keras' own check must fire.
    model = _model("x")
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    with h5py.File(path, "r+") as handle:
        datasets = {}

        def first_of_each_shape(name, item):
            if isinstance(item, h5py.Dataset):
                datasets.setdefault(item.shape, name)  # visititems stops at a callback's first non-None

        handle.visititems(first_of_each_shape)
        stem, pointwise = datasets[(3, 3, 3, 8)], datasets[(1, 1, 8, 8)]
        stem_value, pointwise_value = handle[stem][()], handle[pointwise][()]
        del handle[stem], handle[pointwise]
        handle[stem], handle[pointwise] = pointwise_value, stem_value
    with pytest.raises(ValueError, match="does not fit this RegNetForImageClassification"):
        load_native(model.config, path)


# ----------------------------------------------------------------------------- SavedModel and .keras


def test_saved_model_export_serves_the_same_logits(tmp_path):
    model = _model()
    batches = (IMAGES, OTHER_SIZE)  # the signature takes any batch and image size
    expected = [model(images).logits.numpy() for images in batches]
    model.export(tmp_path / "saved", verbose=False)
    del model  # the artifact stands alone
    loaded = tf.saved_model.load(str(tmp_path / "saved"))  # keep a reference: it owns the variables
    for images, logits in zip(batches, expected, strict=True):
        served = loaded.serve(tf.constant(images))
        assert sorted(served) == ["last_hidden_state", "logits", "pooler_output"]
        np.testing.assert_allclose(served["logits"], logits, rtol=1e-5, atol=1e-6)


def test_keras_archive_round_trip(tmp_path):
    model = _model("x")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, RegNetForImageClassification) and loaded.config == model.config
    np.testing.assert_array_equal(loaded(IMAGES).logits, model(IMAGES).logits)
