"""Figures from outside this repository that our specs must reproduce.

The parity tests compare our three backends with each other, so a mistake in the specs
would pass them. Here every expected number is a literal taken from a public source named
beside it (or computed at test time by another project's code), never recomputed with our
own formulas.
"""

import pytest

from regnet_core import build_model_spec, get_config, list_models, model_complexity, parameter_table
from tests.peers import peer

# Stage widths, stage depths and group width of every SEER network in the zoo.
SEER_STAGES = {
    # transformers' convert_regnet_to_pytorch.py (names_to_config["regnet-y-320-seer"]); timm's
    # hub config timm/regnety_320.seer says num_features 3712.
    "regnet-y-320-seer": ([232, 696, 1392, 3712], [2, 5, 12, 1], 232),
    # huggingface.co/facebook/regnet-y-640-seer config.json (hidden_sizes, depths, groups_width).
    "regnet-y-640-seer": ([328, 984, 1968, 4920], [2, 5, 12, 1], 328),
    # huggingface.co/facebook/regnet-y-1280-seer config.json; torchvision's regnet_y_128gf builds the same.
    "regnet-y-1280-seer": ([528, 1056, 2904, 7392], [2, 7, 17, 1], 264),
    # timm's regnety_2560 (timm 1.0.31), the model that loads vissl's seer_regnet256 checkpoints
    # (feature_info num_chs of the stages and blocks per stage, checked live below when timm is
    # installed). transformers' conversion script lists [640, 1696, 2544, 5088] / [3, 7, 16, 1] /
    # 640 for this name: that is ClassyVision's regnet_y_256gf (w_0 640, w_a 124.47, w_m 2.04,
    # group width 848, "Output size: 5088 feature maps"), a different network from SEER's
    # (w_a 230.83, w_m 2.53, group width 373 in vissl's docs); see docs/RELIABILITY.md.
    "regnet-y-2560-seer": ([746, 1492, 4103, 10444], [2, 7, 17, 1], 373),
    # transformers' convert_regnet_to_pytorch.py (names_to_config["regnet-y-10b-seer"]).
    "regnet-y-10b-seer": ([2020, 4040, 11110, 28280], [2, 7, 17, 1], 1010),
}

SEER_NAMES = [name for name in list_models() if "seer" in name]


def test_every_seer_model_of_the_zoo_has_an_outside_reference():
    assert {name.removesuffix("-in1k") for name in SEER_NAMES} == set(SEER_STAGES)


@pytest.mark.parametrize("name", SEER_NAMES)
def test_seer_stage_widths_equal_the_published_ones(name):
    widths, depths, group_width = SEER_STAGES[name.removesuffix("-in1k")]
    spec = build_model_spec(get_config(name))
    assert [stage.width for stage in spec.stages] == widths
    assert [stage.depth for stage in spec.stages] == depths
    assert [stage.group_width for stage in spec.stages] == [group_width] * 4
    assert spec.head.num_labels == (1000 if name.endswith("-in1k") else 0)


# timm's model cards (huggingface.co/timm/<name>, "Model Stats"): Params (M) and Activations (M)
# at the card's image size, each rounded to 0.1M; the -in1k models include the 1000-class head.
TIMM_MODEL_CARDS = {
    "regnet-y-320-seer": ("regnety_320.seer", 224, 141.3, 30.3),
    "regnet-y-640-seer": ("regnety_640.seer", 224, 276.5, 42.5),
    "regnet-y-640-seer-in1k": ("regnety_640.seer_ft_in1k", 384, 281.4, 124.8),
    "regnet-y-1280-seer": ("regnety_1280.seer", 224, 637.4, 71.6),
    "regnet-y-2560-seer-in1k": ("regnety_2560.seer_ft_in1k", 384, 1282.6, 296.5),
}


@pytest.mark.parametrize("name", list(TIMM_MODEL_CARDS))
def test_seer_parameters_and_activations_equal_timm_model_cards(name):
    _, image_size, params_m, acts_m = TIMM_MODEL_CARDS[name]
    report = model_complexity(build_model_spec(get_config(name)), image_size)
    assert round(report.params / 1e6, 1) == params_m
    assert round(report.acts / 1e6, 1) == acts_m


def test_seer_320_with_a_head_has_torchvision_regnet_y_32gf_parameter_count():
    # torchvision's documented num_params of regnet_y_32gf (the same design, 1000 classes).
    assert model_complexity(build_model_spec(get_config("regnet-y-320-seer-in1k"))).params == 145_046_770


@pytest.mark.parametrize(
    "name, timm_name",
    [
        ("regnet-y-320-seer", "regnety_320"),
        ("regnet-y-640-seer", "regnety_640"),
        ("regnet-y-1280-seer", "regnety_1280"),
        ("regnet-y-2560-seer", "regnety_2560"),
    ],
)
def test_seer_stage_widths_equal_timms_own_construction(name, timm_name):
    """timm builds its regnety_* from its own code; the feature channels and block counts must be ours."""
    timm = peer("timm")
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # nothing is allocated, even for the 1.3B-parameter model
        model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    widths = [info["num_chs"] for info in model.feature_info][1:]
    depths = [len(list(getattr(model, f"s{index}").children())) for index in range(1, 5)]
    spec = build_model_spec(get_config(name))
    assert widths == [stage.width for stage in spec.stages]
    assert depths == [stage.depth for stage in spec.stages]


@pytest.mark.parametrize(
    "name, design",
    [
        # torchvision's regnet_y_32gf and regnet_y_128gf BlockParams arguments
        ("regnet-y-320-seer", dict(depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232)),
        ("regnet-y-1280-seer", dict(depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264)),
    ],
)
def test_seer_stage_widths_equal_torchvisions_own_construction(name, design):
    torchvision = peer("torchvision")
    params = torchvision.models.regnet.BlockParams.from_init_params(se_ratio=0.25, **design)
    spec = build_model_spec(get_config(name))
    assert list(params.widths) == [stage.width for stage in spec.stages]
    assert list(params.depths) == [stage.depth for stage in spec.stages]
    assert list(params.group_widths) == [stage.group_width for stage in spec.stages]


_UNIQUE_ZOO = [name for name in list_models() if not name.endswith("-in1k")]


@pytest.mark.parametrize("name", _UNIQUE_ZOO)
def test_every_tensor_shape_equals_transformers_module(name):
    """transformers' RegNetModel, built on the meta device from the same config, has our names and shapes.

    This is the outside reference for every SE width (transformers: round(block input / 4)),
    group count, projection and BatchNorm of the whole zoo.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = get_config(name)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("se_ratio", "bottleneck_ratio", "model_type")}
    with torch.device("meta"):
        model = transformers.RegNetModel(transformers.RegNetConfig(**fields))
    theirs = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    ours = {tensor.name: tensor.shape for tensor in parameter_table(build_model_spec(config), with_head=False)}
    assert ours == theirs
