"""RegNetConfig: transformers' fields and defaults, JSON round trips, validation."""

import json

import pytest

from regnet_core import RegNetConfig
from tests.helpers import tiny_config


def test_defaults_are_transformers_defaults():
    config = RegNetConfig()
    assert config.num_channels == 3
    assert config.embedding_size == 32
    assert config.hidden_sizes == [128, 192, 512, 1088]
    assert config.depths == [2, 6, 12, 2]
    assert config.groups_width == 64
    assert config.layer_type == "y"
    assert config.hidden_act == "relu"
    assert config.downsample_in_first_stage is True
    assert config.num_labels == 2 and config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert config.problem_type is None
    assert config.se_ratio == 0.25 and config.bottleneck_ratio == 1.0
    assert RegNetConfig(layer_type="x").se_ratio == 0.0


def test_json_round_trip_keeps_unknown_keys(tmp_path):
    config = tiny_config(id2label={0: "cat", 1: "dog"}, num_labels=None, problem_type="single_label_classification")
    config.extra["torch_dtype"] = "float32"
    config.extra["my_note"] = {"nested": [1, 2]}
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "regnet"
    assert data["id2label"] == {"0": "cat", "1": "dog"}
    assert data["my_note"] == {"nested": [1, 2]}
    again = RegNetConfig.from_pretrained(tmp_path)
    assert again == config
    assert again.label2id == {"cat": 0, "dog": 1}
    assert again.extra["my_note"] == {"nested": [1, 2]}


def test_missing_keys_take_transformers_defaults():
    config = RegNetConfig.from_dict(
        {"model_type": "regnet", "hidden_sizes": [32, 64, 96, 128], "depths": [1, 1, 1, 1], "groups_width": 16}
    )
    assert (config.embedding_size, config.layer_type, config.num_labels) == (32, "y", 2)


def test_other_model_types_are_refused():
    with pytest.raises(ValueError, match="model_type 'regnet', got 'resnet'"):
        RegNetConfig.from_dict({"model_type": "resnet"})


def test_num_labels_and_id2label_stay_consistent():
    config = RegNetConfig(num_labels=4)
    assert config.id2label == {i: f"LABEL_{i}" for i in range(4)}
    config.num_labels = 3
    assert len(config.id2label) == 3 and len(config.label2id) == 3
    with pytest.raises(ValueError, match="num_labels=3 but id2label has 2"):
        RegNetConfig(num_labels=3, id2label={0: "a", 1: "b"})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden_sizes": [8, 0, 24]}, "hidden_sizes must hold positive integers"),
        ({"depths": [1, -2, 1]}, "depths must hold positive integers"),
        ({"depths": [1, 2]}, "one entry per stage"),
        ({"hidden_sizes": []}, "non-empty list"),
        ({"layer_type": "z"}, "layer_type must be one of"),
        ({"hidden_act": "mish"}, "hidden_act must be one of"),
        ({"embedding_size": 0}, "embedding_size must be a positive integer"),
        ({"num_channels": 2.5}, "num_channels must be a positive integer"),
        ({"groups_width": 5}, "group width 5 does not divide the bottleneck width 8"),
        ({"hidden_sizes": [8, 16, 28]}, "group width 8 does not divide the bottleneck width 28"),
        ({"layer_type": "x", "se_ratio": 0.25}, "X blocks have no squeeze-and-excitation"),
        ({"se_ratio": 0.0}, "Y blocks need 0 < se_ratio"),
        ({"bottleneck_ratio": 0}, "bottleneck_ratio must be a number > 0"),
        ({"problem_type": "ranking"}, "problem_type must be None or one of"),
        ({"num_labels": -1}, "num_labels must be an integer >= 0"),
    ],
)
def test_invalid_configs_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as error:
        tiny_config(embedding_size=0, layer_type="q", depths=[1])
    text = str(error.value)
    assert "embedding_size" in text and "layer_type" in text and "one entry per stage" in text


def test_copy_changes_fields_and_revalidates():
    config = tiny_config()
    assert config.copy(num_labels=3).num_labels == 3
    assert config.copy(layer_type="x").se_ratio == 0.0
    with pytest.raises(ValueError):
        config.copy(groups_width=7)


def test_transformers_reads_our_config_and_we_read_theirs(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = tiny_config(layer_type="x", id2label={0: "a", 1: "b", 2: "c"}, num_labels=None)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.RegNetConfig.from_pretrained(tmp_path / "ours")
    for field in (
        "num_channels",
        "embedding_size",
        "hidden_sizes",
        "depths",
        "groups_width",
        "layer_type",
        "hidden_act",
    ):
        assert getattr(theirs, field) == getattr(ours, field), field
    assert theirs.num_labels == 3 and theirs.id2label == {0: "a", 1: "b", 2: "c"}

    hf = transformers.RegNetConfig(hidden_sizes=[16, 32], depths=[1, 3], groups_width=16, layer_type="y", num_labels=4)
    hf.save_pretrained(tmp_path / "theirs")
    read = RegNetConfig.from_pretrained(tmp_path / "theirs")
    assert (read.hidden_sizes, read.depths, read.groups_width, read.num_labels) == ([16, 32], [1, 3], 16, 4)
    assert read.extra["transformers_version"] == transformers.__version__
