"""save_pretrained / from_pretrained: transformers' layout, sharding, strict loading, no half writes."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from regnet_core import CheckpointError, CheckpointMismatchError, build_model_spec, random_state  # noqa: E402
from regnet_core.checkpoint import load_state, save_checkpoint  # noqa: E402
from regnet_pt import RegNetForImageClassification, RegNetModel  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def _model(layer_type="y", seed=0, **changes):
    config = tiny_config(layer_type, **changes)
    model = RegNetForImageClassification(config)
    model.load_canonical_state(random_state(build_model_spec(config), seed))
    return model.eval()


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_round_trip_gives_identical_logits(tmp_path, layer_type):
    model = _model(layer_type)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    loaded = RegNetForImageClassification.from_pretrained(tmp_path)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["RegNetForImageClassification"]


def test_buffers_keep_their_shapes_and_dtypes_on_disk(tmp_path):
    _model().save_pretrained(tmp_path)
    state = load_state(tmp_path)
    counter = state["regnet.embedder.embedder.normalization.num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64
    assert state["regnet.embedder.embedder.normalization.running_var"].dtype == np.float32


def test_sharded_save_writes_an_index_and_loads_back(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path, max_shard_size="8KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert not (tmp_path / "model.safetensors").exists()
    loaded = RegNetForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    # saving again unsharded (overwrite=True) removes the stale shards and index
    model.save_pretrained(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]


def test_strict_load_lists_every_missing_unexpected_and_misshaped_key(tmp_path):
    config = tiny_config()
    state = random_state(build_model_spec(config), 0)
    del state["regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"]
    del state["regnet.embedder.embedder.normalization.running_var"]
    state["regnet.encoder.stages.9.layers.0.extra.weight"] = np.zeros(3, np.float32)
    state["classifier.1.weight"] = np.zeros((7, 24), np.float32)
    save_checkpoint(tmp_path, config, state)
    with pytest.raises(CheckpointMismatchError) as error:
        RegNetForImageClassification.from_pretrained(tmp_path)
    message = str(error.value)
    assert "2 missing" in message and "stages.1.layers.0.layer.1.convolution.weight" in message
    assert "embedder.embedder.normalization.running_var" in message
    assert "1 unexpected: regnet.encoder.stages.9.layers.0.extra.weight" in message
    assert "classifier.1.weight (expected (5, 24), got (7, 24))" in message
    assert str(tmp_path) in message


def test_missing_batch_counters_are_accepted(tmp_path):
    config = tiny_config()
    state = {k: v for k, v in random_state(build_model_spec(config), 0).items() if "num_batches_tracked" not in k}
    save_checkpoint(tmp_path, config, state)
    model = RegNetForImageClassification.from_pretrained(tmp_path)
    assert int(model.regnet.embedder.embedder.normalization.num_batches_tracked) == 0


def test_classifier_checkpoint_loads_into_a_trunk_and_trunk_needs_reinit_head(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "cls")
    trunk = RegNetModel.from_pretrained(tmp_path / "cls")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trunk(x).pooler_output, model(x).pooler_output)
    trunk.save_pretrained(tmp_path / "trunk")
    with pytest.raises(CheckpointMismatchError, match="2 missing: classifier.1.weight, classifier.1.bias"):
        RegNetForImageClassification.from_pretrained(tmp_path / "trunk")
    fine_tune = RegNetForImageClassification.from_pretrained(tmp_path / "trunk", reinit_head=True, num_labels=3)
    with torch.no_grad():
        out = fine_tune(x)
        assert torch.equal(out.pooler_output, trunk(x).pooler_output)
    assert out.logits.shape == (1, 3)
    assert fine_tune.classifier[1].weight.device.type == "cpu"


def test_changing_num_labels_without_reinit_head_is_refused(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(
        CheckpointMismatchError, match="classifier.1.weight \\(expected \\(3, 24\\), got \\(5, 24\\)\\)"
    ):
        RegNetForImageClassification.from_pretrained(tmp_path, num_labels=3)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    first = _model(seed=0)
    first.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import regnet_core.checkpoint

    def broken(path, tensors, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(regnet_core.checkpoint, "write_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        _model(seed=1).save_pretrained(tmp_path, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "no checkpoint at .*: no such file or directory"),
        (lambda d: d.mkdir(), "cannot tell the format of .*: saw a directory holding nothing"),
        (
            lambda d: (d.mkdir(), tiny_config().save_pretrained(d)),
            "expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or .* found config.json",
        ),
        (
            lambda d: (d.mkdir(), tiny_config().save_pretrained(d), (d / "model.safetensors").write_bytes(b"junk")),
            "model.safetensors is not a valid safetensors file",
        ),
        (
            lambda d: (
                d.mkdir(),
                tiny_config().save_pretrained(d),
                (d / "model.safetensors.index.json").write_text(
                    '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'
                ),
            ),
            "lists the shard model-00001-of-00002.safetensors, which is missing",
        ),
        (lambda d: (d.mkdir(), (d / "config.json").write_text("{not json")), "is not valid JSON"),
    ],
)
def test_unreadable_checkpoints_say_what_was_expected(tmp_path, setup, message):
    directory = tmp_path / "ckpt"
    setup(directory)
    with pytest.raises((CheckpointError, ValueError), match=message):
        RegNetForImageClassification.from_pretrained(directory)


def test_max_shard_size_is_validated(tmp_path):
    with pytest.raises(ValueError, match="max_shard_size must be bytes or a size like"):
        _model().save_pretrained(tmp_path, max_shard_size="lots")


def test_loaded_weights_do_not_share_memory_with_the_callers_state():
    config = tiny_config()
    state = random_state(build_model_spec(config), 0)
    before = {k: v.copy() for k, v in state.items()}
    model = RegNetForImageClassification(config).load_canonical_state(state)
    model.train()(torch.randn(4, 3, 32, 32))  # updates running statistics in place
    with torch.no_grad():
        model.regnet.embedder.embedder.convolution.weight.add_(1.0)
    assert all(np.array_equal(state[k], before[k]) for k in state)
