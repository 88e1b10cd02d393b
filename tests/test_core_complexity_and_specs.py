"""Complexity equals pycls's published figures; specs keep their invariants for the whole zoo."""

import pytest

from regnet_core import build_model_spec, get_config, get_entry, list_models, model_complexity, parameter_table
from regnet_core.weights import count_parameters
from tests.helpers import REFERENCE, REFERENCE_ZOO, tiny_config


@pytest.mark.parametrize("name", list(REFERENCE_ZOO))
def test_complexity_at_224_equals_pycls_figures(name):
    report = model_complexity(build_model_spec(get_config(name)), 224)
    assert report.as_dict() == REFERENCE_ZOO[name]["pycls_at_224"]


@pytest.mark.parametrize("name", list(REFERENCE_ZOO))
def test_zoo_design_numbers_equal_the_reference(name):
    entry, reference = get_entry(name), REFERENCE_ZOO[name]
    for field in ("depth", "w0", "wa", "wm", "group_width", "se_ratio"):
        assert getattr(entry, field) == reference[field], field
    assert entry.paper_name == reference["paper_name"]
    assert get_entry(reference["timm_name"]).name == name


@pytest.mark.parametrize("large", REFERENCE["large"], ids=lambda e: e["name"])
def test_seer_design_numbers_equal_the_reference(large):
    for name in (large["name"], large["name"] + "-in1k"):
        entry = get_entry(name)
        for field in ("depth", "w0", "wa", "wm", "group_width", "se_ratio"):
            assert getattr(entry, field) == large[field], (name, field)
    assert get_entry(large["name"]).is_trunk and not get_entry(large["name"] + "-in1k").is_trunk


def test_complexity_parts_add_up_and_scale_with_resolution():
    spec = build_model_spec(get_config("regnet-y-016"))
    report = model_complexity(spec, 224)
    assert sum(part["flops"] for part in report.parts.values()) == report.flops
    assert sum(part["params"] for part in report.parts.values()) == report.params
    small = model_complexity(spec, 112)
    assert small.params == report.params
    assert small.flops < report.flops / 3.5
    assert model_complexity(spec, (224, 224)).as_dict() == report.as_dict()


def test_head_size_follows_num_labels():
    with_head = model_complexity(build_model_spec(get_config("regnet-y-320-seer-in1k")))
    trunk = model_complexity(build_model_spec(get_config("regnet-y-320-seer")))
    assert with_head.params - trunk.params == 3712 * 1000 + 1000
    assert with_head.flops - trunk.flops == 3712 * 1000 + 1000


def test_known_parameter_count_of_regnet_y_128gf():
    # torchvision's regnet_y_128gf (same design, 1000 classes) has 644,812,894 parameters.
    assert model_complexity(build_model_spec(get_config("regnet-y-1280-seer-in1k"))).params == 644_812_894


def test_seer_10b_is_ten_billion_parameters_without_allocating():
    spec = build_model_spec(get_config("regnet-y-10b-seer"))
    assert [stage.width for stage in spec.stages] == [2020, 4040, 11110, 28280]
    params = count_parameters(parameter_table(spec, with_head=False))
    assert params == model_complexity(spec).params
    assert 9e9 < params < 1.1e10


@pytest.mark.parametrize("name", list_models())
def test_spec_invariants_hold_for_every_zoo_model(name):
    entry = get_entry(name)
    config = get_config(name)
    spec = build_model_spec(config)
    assert sum(stage.depth for stage in spec.stages) == entry.depth
    widths = [stage.width for stage in spec.stages]
    assert widths == sorted(widths)
    assert spec.stem.width == 32 and spec.stem.stride == 2
    previous = spec.stem.width
    for stage in spec.stages:
        assert stage.input_width == previous
        assert stage.stride == 2
        assert stage.group_width <= stage.bottleneck_width
        assert stage.group_width == min(entry.group_width, stage.bottleneck_width)
        assert stage.bottleneck_width % stage.group_width == 0
        assert stage.bottleneck_width == stage.width  # bottleneck ratio 1 in the whole zoo
        for index, block in enumerate(stage.blocks):
            assert block.stride == (2 if index == 0 else 1)
            assert block.input_width == (previous if index == 0 else stage.width)
            assert block.groups * block.group_width == block.bottleneck_width
            assert block.has_se == (entry.se_ratio > 0)  # SE widths: the literal test below and test_outside_references
            assert block.has_projection == (index == 0)
        previous = stage.width
    assert spec.head.num_labels == (0 if entry.is_trunk else 1000)
    with_head = not entry.is_trunk
    assert count_parameters(parameter_table(spec, with_head)) == model_complexity(spec).params


def test_first_stage_without_downsampling_keeps_resolution():
    spec = build_model_spec(tiny_config(downsample_in_first_stage=False))
    assert spec.stages[0].stride == 1 and spec.stages[1].stride == 2
    assert spec.stride == 2 * 1 * 2 * 2


def test_se_width_is_rounded_from_the_block_input_width():
    spec = build_model_spec(tiny_config(hidden_sizes=[8, 16, 24], embedding_size=10, se_ratio=0.25))
    first = spec.stages[0].blocks[0]
    assert first.input_width == 10 and first.se_width == 2  # round(2.5) = 2, half to even
    assert spec.stages[1].blocks[1].se_width == 4


def test_se_widths_of_regnet_y_002_worked_out_by_hand():
    # Stem 32, stages 24 / 56 / 152 / 368 wide, 1 / 1 / 4 / 7 deep; SE width = block input / 4:
    # stage 1: 32/4 = 8; stage 2: 24/4 = 6; stage 3: 56/4 = 14, then 152/4 = 38 three times;
    # stage 4: 152/4 = 38, then 368/4 = 92 six times.
    spec = build_model_spec(get_config("regnet-y-002"))
    assert [[block.se_width for block in stage.blocks] for stage in spec.stages] == [
        [8],
        [6],
        [14, 38, 38, 38],
        [38, 92, 92, 92, 92, 92, 92],
    ]


def test_table_names_follow_transformers():
    table = {t.name: t for t in parameter_table(build_model_spec(tiny_config()))}
    assert table["regnet.embedder.embedder.convolution.weight"].shape == (8, 3, 3, 3)
    assert table["regnet.encoder.stages.0.layers.0.shortcut.normalization.running_var"].shape == (8,)
    assert table["regnet.encoder.stages.1.layers.1.layer.2.attention.0.weight"].shape == (4, 16, 1, 1)
    assert table["regnet.encoder.stages.1.layers.1.layer.1.convolution.weight"].shape == (16, 8, 3, 3)
    assert table["classifier.1.weight"].shape == (5, 24)
    assert "regnet.encoder.stages.1.layers.1.shortcut.convolution.weight" not in table
    x_table = {t.name for t in parameter_table(build_model_spec(tiny_config("x")), with_head=False)}
    assert "encoder.stages.1.layers.1.layer.2.convolution.weight" in x_table
    assert not any("attention" in name or name.startswith("classifier") for name in x_table)
