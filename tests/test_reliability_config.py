"""Bad configs get ConfigError (a ValueError) naming the field, what was expected and what came.

Fields out of range or of the wrong type (bools, strings, inf, NaN), lists of inconsistent
length, JSON that is no RegNet config, unknown keywords (with the nearest field suggested),
absurd sizes; numpy scalars are accepted as numbers. The memory guard refuses a model whose
weights cannot fit before anything is allocated, in every backend, with an explicit override.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from regnet_core import RegNetConfig, resources
from regnet_core.config import MAX_BLOCKS, MAX_LABELS
from regnet_core.design import MAX_WIDTH
from regnet_core.errors import ConfigError, ConfigTypeError, ModelTooLargeError
from regnet_core.resources import ALLOW_LARGE_VARIABLE, check_memory, estimate_weight_bytes, weight_memory
from regnet_core.specs import build_model_spec
from regnet_core.zoo import ZOO
from tests.helpers import requires

TINY = dict(hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, embedding_size=8, num_labels=3)


def tiny(**changes) -> RegNetConfig:
    return RegNetConfig(**{**TINY, **changes})


# ----------------------------------------------------------------------------- fields
@pytest.mark.parametrize(
    "changes, message",
    [
        # bools where numbers belong
        ({"num_channels": True}, "num_channels must be a positive integer .* got True \\(bool\\)"),
        ({"embedding_size": False}, "embedding_size must be a positive integer"),
        ({"groups_width": True}, "groups_width must be a positive integer"),
        ({"hidden_sizes": [True, 16]}, "hidden_sizes must hold positive integers"),
        ({"depths": [1, True]}, "depths must hold positive integers"),
        ({"se_ratio": True}, "se_ratio must be a number \\(finite\\), got True \\(bool\\)"),
        ({"bottleneck_ratio": True}, "bottleneck_ratio must be a number > 0 \\(finite\\), got True \\(bool\\)"),
        ({"bottleneck_ratio": np.bool_(True)}, "bottleneck_ratio must be a number > 0"),
        ({"num_labels": True}, "num_labels must be an integer >= 0"),
        ({"downsample_in_first_stage": 1}, "downsample_in_first_stage must be a bool, got 1"),
        # strings
        ({"embedding_size": "8"}, "embedding_size must be a positive integer .* got '8' \\(str\\)"),
        ({"hidden_sizes": "8,16"}, "hidden_sizes must be a non-empty list"),
        ({"hidden_sizes": ["8", "16"]}, "hidden_sizes must hold positive integers"),
        ({"se_ratio": "0.25"}, "se_ratio must be a number"),
        ({"layer_type": "Y"}, "layer_type must be one of \\('x', 'y'\\), got 'Y'"),
        ({"layer_type": ["y"]}, "layer_type must be one of"),
        ({"hidden_act": None}, "hidden_act must be one of"),
        ({"problem_type": 3}, "problem_type must be None or one of"),
        ({"num_labels": "10"}, "num_labels must be an integer >= 0"),
        ({"architectures": "RegNetModel"}, "architectures must be None or a list of class names"),
        ({"architectures": [1]}, "architectures must be None or a list of class names"),
        # inf and NaN
        ({"bottleneck_ratio": math.inf}, "bottleneck_ratio must be a number > 0 \\(finite\\), got inf"),
        ({"bottleneck_ratio": -math.inf}, "bottleneck_ratio must be a number > 0"),
        ({"bottleneck_ratio": math.nan}, "bottleneck_ratio must be a number > 0 \\(finite\\), got nan"),
        ({"se_ratio": math.nan}, "se_ratio must be a number \\(finite\\), got nan"),
        ({"se_ratio": math.inf}, "se_ratio must be a number \\(finite\\)"),
        ({"embedding_size": math.inf}, "embedding_size must be a positive integer"),
        ({"hidden_sizes": [8.0, 16]}, "hidden_sizes must hold positive integers"),
        # out of range
        ({"hidden_sizes": [8, 0]}, "hidden_sizes must hold positive integers"),
        ({"depths": [1, -1]}, "depths must hold positive integers"),
        ({"num_labels": -1}, "num_labels must be an integer >= 0"),
        ({"se_ratio": 1.5}, "Y blocks need 0 < se_ratio <= 1, got 1.5"),
        ({"se_ratio": 0.01}, "gives an SE width of 0 in stage 0"),
        ({"layer_type": "x", "se_ratio": 0.25}, "X blocks have no squeeze-and-excitation"),
        ({"groups_width": 3}, "group width 3 does not divide the bottleneck width 8"),
        ({"bottleneck_ratio": 0.01}, "gives a bottleneck width of 0; expected at least 1"),
        # inconsistent lists
        ({"depths": [1, 1, 1]}, "one entry per stage, got 2 widths \\[8, 16\\] and 3 depths"),
        ({"hidden_sizes": []}, "hidden_sizes must be a non-empty list"),
        ({"depths": [[1], [1]]}, "depths must hold positive integers"),
        ({"id2label": {0: "a", 2: "b"}, "num_labels": None}, "id2label keys must be 0..1"),
        ({"id2label": ["a", "b"], "num_labels": None}, "id2label must map integer ids to names"),
        ({"id2label": {"x": "a"}, "num_labels": None}, "id2label must map integer ids to names"),
        ({"label2id": {"a": math.inf}}, "label2id must map names to integer ids"),
        # absurd sizes
        (
            {"hidden_sizes": [8, MAX_WIDTH + 1]},
            "hidden_sizes must hold positive integers only \\(at most 2147483647\\)",
        ),
        ({"embedding_size": 10**30}, "embedding_size must be a positive integer \\(at most"),
        ({"depths": [1, MAX_BLOCKS]}, f"depths must add up to at most {MAX_BLOCKS} blocks"),
        (
            {"num_labels": MAX_LABELS + 1},
            f"num_labels must be an integer >= 0 \\(0: no classifier; at most {MAX_LABELS}\\)",
        ),
        ({"bottleneck_ratio": 1e300}, "gives a bottleneck width of 8e\\+300; expected at most 2147483647"),
    ],
)
def test_bad_fields_raise_config_error_naming_them(changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        tiny(**changes)
    assert isinstance(error.value, ValueError)
    assert str(error.value).count("\n") == 0


def test_every_problem_at_once():
    with pytest.raises(ConfigError) as error:
        tiny(embedding_size="8", se_ratio=math.nan, layer_type="z", depths=[1])
    text = str(error.value)
    for field in ("embedding_size", "se_ratio", "layer_type", "one entry per stage"):
        assert field in text


def test_numpy_scalars_and_arrays_are_numbers():
    config = tiny(
        hidden_sizes=np.array([8, 16]),
        depths=(np.int64(1), np.int32(2)),
        groups_width=np.int16(8),
        embedding_size=np.uint8(8),
        se_ratio=np.float32(0.25),
        bottleneck_ratio=np.float64(1.0),
        downsample_in_first_stage=np.bool_(True),
        num_labels=np.int64(3),
    )
    assert config.hidden_sizes == [8, 16] and config.depths == [1, 2] and config.num_labels == 3
    assert all(
        type(v) is int for v in (*config.hidden_sizes, *config.depths, config.groups_width, config.embedding_size)
    )
    assert type(config.se_ratio) is float and config.downsample_in_first_stage is True
    again = RegNetConfig.from_dict(json.loads(config.to_json_string()))  # JSON-ready
    assert again == config and build_model_spec(again) == build_model_spec(tiny(depths=[1, 2]))


def test_numpy_values_set_after_construction_are_taken_too():
    config = tiny()
    config.hidden_sizes = [np.int64(8), np.int64(24)]
    config.groups_width = np.int64(8)
    spec = build_model_spec(config)
    assert [stage.width for stage in spec.stages] == [8, 24] and config.hidden_sizes == [8, 24]


# ----------------------------------------------------------------------------- unknown keywords
def test_unknown_keyword_to_the_constructor_suggests_the_field():
    with pytest.raises(
        ConfigError, match="RegNetConfig\\(\\) got an unknown keyword 'num_label' \\(did you mean 'num_labels'\\?\\)"
    ):
        RegNetConfig(num_label=10)
    with pytest.raises(
        ConfigError, match="'hidden_size' \\(did you mean 'hidden_sizes'\\?\\), 'depth' \\(did you mean 'depths'\\?\\)"
    ):
        RegNetConfig(hidden_size=[8], depth=[1])
    with pytest.raises(ConfigError, match="model_type 'regnet', got 'resnet'"):
        RegNetConfig(model_type="resnet")


def test_unknown_keyword_to_copy_suggests_the_field():
    with pytest.raises(
        ConfigError, match="copy\\(\\) got an unknown keyword 'group_width' \\(did you mean 'groups_width'\\?\\)"
    ):
        tiny().copy(group_width=8)


def test_unknown_keys_of_a_config_json_are_kept(tmp_path):
    data = {**tiny().to_dict(), "transformers_version": "4.57.6", "num_label": 7, "_name_or_path": "x"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = RegNetConfig.from_pretrained(tmp_path)
    assert config.extra == {"transformers_version": "4.57.6", "num_label": 7, "_name_or_path": "x"}
    assert config.num_labels == 3
    assert json.loads(config.to_json_string())["num_label"] == 7
    assert config.copy(num_labels=4).extra == config.extra


def test_a_mapping_where_a_config_belongs():
    with pytest.raises(ConfigTypeError, match="expected a RegNetConfig, got dict \\(RegNetConfig\\(\\*\\*fields\\)"):
        from regnet_core.config import require_config

        require_config({"depths": [1]}, "RegNetModel")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": math.inf}, "depth must be an integer"),
        ({"depth": True}, "depth must be an integer"),
        ({"w0": math.nan}, "w0 must be a finite number, got nan"),
        ({"wa": math.inf}, "wa must be a finite number"),
        ({"wm": "2"}, "wm must be a finite number, got '2' \\(str\\)"),
        ({"group_width": True}, "group_width must be a positive integer"),
        ({"se_ratio": "0.25"}, "se_ratio must be a finite number"),
        ({"bottleneck_ratio": math.inf}, "bottleneck_ratio must be a finite number > 0"),
    ],
)
def test_design_space_numbers_are_checked(kwargs, message):
    args = {"depth": 13, "w0": 24, "wa": 36.44, "wm": 2.49, "group_width": 8, **kwargs}
    with pytest.raises(ConfigError, match=message):
        RegNetConfig.from_design(**args)


# ----------------------------------------------------------------------------- JSON that is no RegNet config
@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "a RegNet config must be a JSON object, got list"),
        ('"regnet"', "a RegNet config must be a JSON object, got str"),
        ("3", "a RegNet config must be a JSON object, got int"),
        ('{"model_type": "vit"}', "expected a config with model_type 'regnet', got 'vit'"),
        ("{}", "not a RegNet config: expected model_type 'regnet' or RegNet fields"),
        (
            '{"do_resize": true, "image_mean": [0.5]}',
            "not a RegNet config: .* got keys \\['do_resize', 'image_mean'\\]",
        ),
        ('{"model_type": "regnet", "depths": [1, 2', "is not valid JSON"),
        ('{"model_type": "regnet", "hidden_sizes": "abc"}', "hidden_sizes must be a non-empty list"),
        ('{"model_type": "regnet", "se_ratio": NaN}', "se_ratio must be a number \\(finite\\), got nan"),
        ('{"model_type": "regnet", "embedding_size": 1e999}', "embedding_size must be a positive integer"),
        ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
    ],
)
def test_json_that_is_no_regnet_config(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        RegNetConfig.from_json_file(path)


def test_binary_file_and_directory_as_config(tmp_path):
    (tmp_path / "weights.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match="is not a JSON text file"):
        RegNetConfig.from_json_file(tmp_path / "weights.json")
    with pytest.raises(ConfigError, match="expected a config.json file, got the directory"):
        RegNetConfig.from_json_file(tmp_path)


# ----------------------------------------------------------------------------- backends: keywords and config types
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny classifier checkpoint written by the core alone (random weights)."""
    from regnet_core.checkpoint import save_checkpoint
    from regnet_core.weights import random_state

    directory = tmp_path_factory.mktemp("ckpt")
    config = tiny()
    save_checkpoint(
        directory, config, random_state(build_model_spec(config)), architecture="RegNetForImageClassification"
    )
    return directory


@requires("torch")
def test_pytorch_keywords_and_config_types(checkpoint):
    from regnet_pt import RegNetBackbone, RegNetForImageClassification, RegNetModel

    with pytest.raises(
        ConfigError, match="from_pretrained\\(\\) got an unknown keyword 'num_label' \\(did you mean 'num_labels'\\?\\)"
    ):
        RegNetForImageClassification.from_pretrained(checkpoint, num_label=10)
    with pytest.raises(ConfigError, match="'reinit_heads' \\(did you mean 'reinit_head'\\?\\)"):
        RegNetForImageClassification.from_pretrained(checkpoint, reinit_heads=True)
    with pytest.raises(ConfigError, match="'num_label'"):  # before anything is read: the path does not exist
        RegNetForImageClassification.from_pretrained(checkpoint / "missing", num_label=10)
    model = RegNetForImageClassification.from_pretrained(checkpoint, num_labels=10, reinit_head=True)
    assert model.classifier[1].out_features == 10
    with pytest.raises(ConfigTypeError, match="'num_labels' \\(a RegNetConfig field: set it on the config"):
        RegNetForImageClassification(tiny(), num_labels=10)
    with pytest.raises(ConfigTypeError, match="'zero_init_last_batchnorm' \\(did you mean 'zero_init_last_bn'\\?\\)"):
        RegNetModel(tiny(), zero_init_last_batchnorm=True)
    with pytest.raises(ConfigTypeError, match="RegNetBackbone\\(\\) got an unknown keyword 'out_indexes'"):
        RegNetBackbone(tiny(), out_indexes=[1])
    with pytest.raises(ConfigTypeError, match="RegNetModel expected a RegNetConfig, got dict") as error:
        RegNetModel(tiny().to_dict())
    assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)


@requires("tensorflow")
def test_tensorflow_keywords_and_config_types(checkpoint):
    from regnet_tf import RegNetForImageClassification, RegNetModel

    with pytest.raises(ConfigError, match="'num_label' \\(did you mean 'num_labels'\\?\\)"):
        RegNetForImageClassification.from_pretrained(checkpoint, num_label=10)
    with pytest.raises(ConfigTypeError, match="'num_labels' \\(a RegNetConfig field"):
        RegNetForImageClassification(tiny(), num_labels=10)
    with pytest.raises(ConfigTypeError, match="'nmae' \\(did you mean 'name'\\?\\)"):
        RegNetModel(tiny(), nmae="x")
    with pytest.raises(ConfigTypeError, match="expected a RegNetConfig, got dict"):
        RegNetModel(tiny().to_dict())
    model = RegNetModel(tiny(), name="trunk", trainable=False)  # Keras' own keywords pass
    assert model.name == "trunk"


@requires("flax")
def test_flax_keywords_and_config_types(checkpoint):
    import regnet_flax

    with pytest.raises(ConfigError, match="'num_label' \\(did you mean 'num_labels'\\?\\)"):
        regnet_flax.from_pretrained(checkpoint, num_label=10)
    with pytest.raises(
        ConfigTypeError, match="regnet_flax.init\\(\\) got an unknown keyword 'num_labels' \\(a RegNetConfig field"
    ):
        regnet_flax.init(tiny(), num_labels=10)
    with pytest.raises(ConfigTypeError, match="expected a RegNetConfig, got dict"):
        regnet_flax.init(tiny().to_dict())


@requires("flax")
def test_flax_module_constructors_name_the_nearest_field():
    from regnet_flax import RegNetForImageClassification, RegNetModel
    from regnet_flax.backbone import RegNetBackbone

    for module in (RegNetModel, RegNetForImageClassification):
        with pytest.raises(
            ConfigTypeError, match=f"{module.__name__}\\(\\) got an unknown keyword 'zero_init_lastbn' \\(did you mean"
        ):
            module(tiny(), zero_init_lastbn=True)
    with pytest.raises(ConfigTypeError, match="'out_indice' \\(did you mean 'out_indices'\\?\\)"):
        RegNetBackbone(tiny(), out_indice=(1,))
    # Known fields, positional or by name, and Linen's clone() still build the module.
    model = RegNetForImageClassification(tiny(), zero_init_last_bn=True, axis_name=None)
    assert model.clone(axis_name="batch").axis_name == "batch"
    assert RegNetBackbone(tiny(), (1,)).out_indices == (1,)


# ----------------------------------------------------------------------------- memory
def test_estimate_equals_the_full_table_for_every_zoo_model():
    for name, entry in ZOO.items():
        config = entry.config()
        for with_head in (True, False):
            spec = build_model_spec(config)
            assert estimate_weight_bytes(config, with_head) == weight_memory(spec, with_head)["float32"], name


def test_estimate_multiplies_repeated_blocks_without_building_them():
    deep = tiny(depths=[1, 5000])
    expected = weight_memory(build_model_spec(deep))["float32"]
    assert estimate_weight_bytes(deep) == expected


@requires("torch")
def test_estimate_equals_what_pytorch_allocates():
    import torch

    from regnet_pt import RegNetForImageClassification

    model = RegNetForImageClassification(tiny(layer_type="x", depths=[2, 3]))
    allocated = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert allocated == estimate_weight_bytes(model.config) and isinstance(allocated, int)
    assert torch.is_tensor(next(model.parameters()))


HUGE = dict(hidden_sizes=[8, 2**20], depths=[1, 4], groups_width=8, embedding_size=8, num_labels=3)  # ~17 TB


def _refused_quickly(build):
    start = time.perf_counter()
    with pytest.raises(ModelTooLargeError) as error:
        build()
    assert time.perf_counter() - start < 5  # refused from the table, nothing allocated
    message = str(error.value)
    assert "GB at float32" in message and "is available" in message and "allow_large=True" in message
    assert ALLOW_LARGE_VARIABLE in message and "--allow-large" in message
    assert isinstance(error.value, ConfigError)


def test_core_guard_names_the_estimate(monkeypatch):
    monkeypatch.delenv(ALLOW_LARGE_VARIABLE, raising=False)
    _refused_quickly(lambda: check_memory(RegNetConfig(**HUGE)))


@requires("torch")
def test_pytorch_refuses_a_model_that_cannot_fit(monkeypatch):
    from regnet_pt import RegNetBackbone, RegNetForImageClassification, RegNetModel

    monkeypatch.delenv(ALLOW_LARGE_VARIABLE, raising=False)
    for cls in (RegNetForImageClassification, RegNetModel, RegNetBackbone):
        _refused_quickly(lambda cls=cls: cls(RegNetConfig(**HUGE)))


@requires("tensorflow")
def test_tensorflow_refuses_a_model_that_cannot_fit(monkeypatch):
    from regnet_tf import RegNetForImageClassification, RegNetModel

    monkeypatch.delenv(ALLOW_LARGE_VARIABLE, raising=False)
    for cls in (RegNetForImageClassification, RegNetModel):
        _refused_quickly(lambda cls=cls: cls(RegNetConfig(**HUGE)))


@requires("flax")
def test_flax_refuses_a_model_that_cannot_fit(monkeypatch):
    import regnet_flax
    from regnet_flax.backbone import init_backbone

    monkeypatch.delenv(ALLOW_LARGE_VARIABLE, raising=False)
    _refused_quickly(lambda: regnet_flax.init(RegNetConfig(**HUGE)))
    _refused_quickly(lambda: regnet_flax.from_canonical(RegNetConfig(**HUGE), {}))
    _refused_quickly(lambda: init_backbone(RegNetConfig(**HUGE)))


@pytest.mark.parametrize(
    "framework",
    [pytest.param(f, marks=requires(m)) for f, m in (("pt", "torch"), ("tf", "tensorflow"), ("flax", "flax"))],
)
def test_the_override_lets_a_model_through(monkeypatch, framework):
    """With 1 kB 'available', a tiny model is refused; allow_large=True or the variable lets it build."""
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    monkeypatch.delenv(ALLOW_LARGE_VARIABLE, raising=False)
    config = tiny()
    if framework == "pt":
        from regnet_pt import RegNetForImageClassification as cls

        build = lambda **kw: cls(config, **kw)  # noqa: E731
    elif framework == "tf":
        from regnet_tf import RegNetForImageClassification as cls

        build = lambda **kw: cls(config, **kw)  # noqa: E731
    else:
        from regnet_core.weights import random_state
        from regnet_flax import from_canonical

        state = random_state(build_model_spec(config))
        build = lambda **kw: from_canonical(config, state, **kw)  # noqa: E731
    with pytest.raises(ModelTooLargeError, match="only 1e-06 GB of memory is available"):
        build()
    assert build(allow_large=True) is not None
    monkeypatch.setenv(ALLOW_LARGE_VARIABLE, "1")
    assert build() is not None


def test_available_memory_is_read():
    available = resources.available_memory()
    assert available is None or available > 0


def test_python_dicts_that_could_not_be_written_back():
    with pytest.raises(ConfigError, match="config keys must be strings, got 1"):
        RegNetConfig.from_dict({"model_type": "regnet", 1: 2})
    with pytest.raises(ConfigError, match="config key 'note' holds .*object.*, which is no JSON value"):
        RegNetConfig.from_dict({"model_type": "regnet", "note": object()})
    config = RegNetConfig.from_dict({"model_type": "regnet", "note": math.nan})
    assert config == RegNetConfig.from_dict(json.loads(config.to_json_string()))  # NaN kept, equal to itself
