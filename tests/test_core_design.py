"""The paper's design space: quantized linear widths, stage grouping, group compatibility."""

import pytest

from regnet_core import RegNetConfig, design_stages, get_config, quantized_block_widths
from regnet_core.design import adjust_for_groups, group_stages, stage_geometry


def test_quantization_rounds_half_to_even():
    # u = [8, 20]; 20 = 8 * 2.5^1 exactly; 20 / 8 = 2.5 rounds to 2 (half to even), so 16, not 24.
    assert quantized_block_widths(2, 8, 12, 2.5, quantum=8) == [8, 16]


def test_block_widths_of_regnet_x_200mf():
    widths = quantized_block_widths(13, 24, 36.44, 2.49)
    assert widths == [24] + [56] + [152] * 4 + [368] * 7
    assert group_stages(widths) == ([24, 56, 152, 368], [1, 1, 4, 7])


@pytest.mark.parametrize(
    "name, widths, depths",
    [
        # stage widths and depths of the published transformers configs (facebook/NAME)
        ("regnet-y-040", [128, 192, 512, 1088], [2, 6, 12, 2]),
        ("regnet-x-002", [24, 56, 152, 368], [1, 1, 4, 7]),
        ("regnet-y-320", [232, 696, 1392, 3712], [2, 5, 12, 1]),
        ("regnet-y-640-seer", [328, 984, 1968, 4920], [2, 5, 12, 1]),
        ("regnet-y-1280-seer", [528, 1056, 2904, 7392], [2, 7, 17, 1]),
        ("regnet-y-10b-seer", [2020, 4040, 11110, 28280], [2, 7, 17, 1]),
    ],
)
def test_zoo_stage_widths_match_published_configs(name, widths, depths):
    config = get_config(name)
    assert config.hidden_sizes == widths
    assert config.depths == depths


def test_group_width_is_capped_at_the_bottleneck_width():
    widths, group_widths, bottlenecks = adjust_for_groups([24, 56, 152], 1.0, 64)
    assert group_widths == [24, 56, 64]
    assert widths == [24, 56, 128]  # 152 / 64 = 2.375 -> 2 groups


def test_bottleneck_rounds_to_a_multiple_of_the_group_width_half_to_even():
    widths, group_widths, _ = adjust_for_groups([24, 56], 1.0, 16)
    # 24 / 16 = 1.5 -> 2 groups (32); 56 / 16 = 3.5 -> 4 groups (64)
    assert widths == [32, 64]
    assert group_widths == [16, 16]


def test_bottleneck_ratio_scales_the_inner_width():
    design = design_stages(4, 64, 0.0, 2.0, 16, bottleneck_ratio=0.25)
    assert design.widths == (64,)
    assert design.bottleneck_widths == (16,)
    config = RegNetConfig.from_design(4, 64, 0.0, 2.0, 16, bottleneck_ratio=0.25)
    assert (config.hidden_sizes, config.depths, config.bottleneck_ratio) == ([64], [4], 0.25)


def test_from_design_sets_block_type_from_se_ratio():
    assert RegNetConfig.from_design(13, 24, 36.44, 2.49, 8).layer_type == "x"
    y = RegNetConfig.from_design(13, 24, 36.44, 2.49, 8, se_ratio=0.25, num_labels=7, stem_width=16)
    assert (y.layer_type, y.se_ratio, y.num_labels, y.embedding_size) == ("y", 0.25, 7, 16)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 24, 36.0, 2.5), "depth"),
        ((13, 20, 36.0, 2.5), "multiple of the quantum"),
        ((13, 24, -1.0, 2.5), "wa"),
        ((13, 24, 36.0, 1.0), "wm"),
        ((13, 0, 36.0, 2.5), "w0"),
    ],
)
def test_invalid_design_numbers_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        quantized_block_widths(*args)


def test_stage_geometry_rejects_a_group_width_that_does_not_divide():
    assert stage_geometry(48, 1.0, 16) == (48, 16, 3)
    assert stage_geometry(24, 1.0, 64) == (24, 24, 1)
    with pytest.raises(ValueError, match="does not divide the bottleneck width 40"):
        stage_geometry(40, 1.0, 16)
