"""Feature maps agree across PyTorch, TensorFlow and Flax, and with timm's ``features_only`` RegNets.

Weights are seeded random with randomised BN statistics (regnet_core.random_state), so a
wrong layout, padding or BN buffer shows up; the tolerance is the parity harness's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config, random_state
from regnet_core.convert import read_checkpoint
from regnet_core.parity import check_feature_parity, compare_feature_maps, format_report, random_input

from .helpers import requires, tiny_config
from .peers import peer

FRAMEWORKS = ("pt", "tf", "flax")


def _feature_parity(config, out_indices=None, image_size=32, seed=0, with_head=True):
    state = random_state(build_model_spec(config), seed, with_head)
    pixels = random_input(2, image_size, config.num_channels, seed)
    return check_feature_parity(config, state, FRAMEWORKS, pixels, out_indices, source="test", seed=seed)


@requires("torch")
@requires("tensorflow")
@requires("flax")
@pytest.mark.parametrize(
    ("config", "out_indices", "image_size"),
    [
        (tiny_config("x"), None, 32),
        (tiny_config("y"), (0, 1, 2, 3), 35),
        (tiny_config("y", hidden_act="silu", downsample_in_first_stage=False), (0, -2), 33),
        (get_config("regnet-x-002"), None, 64),
        (get_config("regnet-y-002"), (0, 2, 4), 64),
    ],
    ids=["tiny-x", "tiny-y-all", "tiny-y-silu-no-first-downsample", "x-002", "y-002"],
)
def test_feature_maps_match_across_frameworks(config, out_indices, image_size):
    report = _feature_parity(config, out_indices, image_size)
    assert report.passed, format_report(report)
    names = [o.name for o in report.pairs[0].outputs]
    assert len(report.pairs) == 3 and names[0].startswith("feature_maps[0] (")
    expected = len(out_indices) if out_indices else len(config.depths)
    assert len(names) == expected


@requires("torch")
@requires("tensorflow")
@requires("flax")
def test_trunk_weights_match_across_frameworks_and_the_report_reads():
    report = _feature_parity(tiny_config("y"), (-1,), with_head=False)
    text = format_report(report)
    assert report.passed, text
    assert "feature_maps[0] (stage3)" in text and "pt vs tf: agree (feature_maps[0] (stage3) max_abs" in text


def test_the_feature_comparison_notices_a_layout_or_value_difference():
    rng = np.random.default_rng(0)
    reference = [rng.standard_normal((2, 8, 4, 4)), rng.standard_normal((2, 16, 2, 2))]
    nudged = [reference[0], reference[1] * (1 + 1e-4)]
    transposed = [reference[0].transpose(0, 2, 3, 1), reference[1]]
    assert all(d.passed for d in compare_feature_maps(reference, reference, ["stage1", "stage2"]))
    assert [d.passed for d in compare_feature_maps(reference, nudged, ["stage1", "stage2"])] == [True, False]
    assert [d.passed for d in compare_feature_maps(reference, transposed, ["stage1", "stage2"])] == [False, True]
    assert [d.passed for d in compare_feature_maps(reference, reference[:1], ["stage1", "stage2"])] == [True, False]


# ----------------------------------------------------------------------------- against timm's features_only


def _randomise_bn(model, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))


@pytest.mark.parametrize("model_name", ["regnety_002", "regnetx_002"])
def test_pytorch_backbone_equals_timms_features_only_at_the_same_out_indices(tmp_path: Path, model_name: str):
    timm = peer("timm")
    import torch

    from regnet_pt import RegNetBackbone

    source = timm.create_model(model_name, pretrained=False, num_classes=10, zero_init_last=False).eval()
    _randomise_bn(source, 3)
    torch.save(source.state_dict(), tmp_path / f"{model_name}.pth")
    checkpoint = read_checkpoint(tmp_path / f"{model_name}.pth")  # our timm format reader
    x = torch.from_numpy(random_input(2, 64, 3, 1))
    # timm numbers the stem 0 and stages 1..4, as we do; its default is all five.
    for out_indices in [(0, 1, 2, 3, 4), (1, 3), (-1,)]:
        theirs = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=out_indices).eval()
        missing, _ = theirs.load_state_dict(source.state_dict(), strict=False)
        assert missing == []
        ours = RegNetBackbone(checkpoint.config, out_indices, _skip_init=True)
        ours.load_canonical_state(checkpoint.canonical_state()).eval()
        assert list(ours.channels) == theirs.feature_info.channels()
        assert list(ours.reductions) == theirs.feature_info.reduction()
        with torch.no_grad():
            expected, got = theirs(x), ours(x).feature_maps
        report = compare_feature_maps([e.numpy() for e in expected], [g.numpy() for g in got], ours.out_features)
        assert all(d.passed for d in report), report
