"""torchvision RegNet state dicts: reading, zero-row heads, the three odd-width models, torchvision as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regnet_core import RegNetConfig, build_model_spec
from regnet_core import convert as convert_module
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.formats import detect_format, get_format
from regnet_core.formats.base import ReferenceUnavailable

from . import foreign_torch as ft
from .helpers import requires, tiny_config
from .peers import peer

pytestmark = requires("torch")

TORCHVISION = get_format("torchvision")

# torchvision's three models whose widths differ from pycls's (torchvision rounds widths half up with a 0.9
# floor, pycls to the nearest multiple): (layer type, stage widths, depths, group width, design numbers).
ODD_WIDTHS = {
    "regnet_x_400mf": ("x", [32, 64, 160, 400], [1, 2, 7, 12], 16, dict(depth=22, w_0=24, w_a=24.48, w_m=2.54)),
    "regnet_y_800mf": ("y", [64, 144, 320, 784], [1, 3, 8, 2], 16, dict(depth=14, w_0=56, w_a=38.84, w_m=2.4)),
    "regnet_y_8gf": ("y", [224, 448, 896, 2016], [2, 4, 10, 1], 56, dict(depth=17, w_0=192, w_a=76.82, w_m=2.19)),
}
PYCLS_WIDTHS = {
    "regnet_x_400mf": [32, 64, 160, 384],
    "regnet_y_800mf": [64, 128, 320, 768],
    "regnet_y_8gf": [168, 448, 896, 2016],
}


def _odd_config(name: str, num_labels: int = 10) -> RegNetConfig:
    layer_type, widths, depths, group_width, _ = ODD_WIDTHS[name]
    return RegNetConfig(
        embedding_size=32,
        hidden_sizes=widths,
        depths=depths,
        groups_width=group_width,
        layer_type=layer_type,
        num_labels=num_labels,
    )


def _converted_logits(checkpoint, directory: Path, x: np.ndarray) -> np.ndarray:
    from regnet_pt import RegNetForImageClassification, RegNetModel

    write_checkpoint(checkpoint, directory, progress=False)
    model_class = RegNetForImageClassification if checkpoint.with_head else RegNetModel
    return ft.run_model(model_class.from_pretrained(directory), x)


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


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy().reshape(x.shape[0], -1)


def _meta_shapes(torchvision, name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """torchvision's own tensor shapes for one of its models: widths computed on the CPU, tensors on meta."""
    import torch

    layer_type, _, _, group_width, design = ODD_WIDTHS[name]
    regnet = torchvision.models.regnet
    params = regnet.BlockParams.from_init_params(
        group_width=group_width, se_ratio=0.25 if layer_type == "y" else None, **design
    )
    with torch.device("meta"):
        model = regnet.RegNet(params, num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("layer_type", "num_labels", "suffix"),
    [("y", 5, ".pth"), ("x", 5, ".safetensors"), ("y", 0, ".pth"), ("x", 0, ".safetensors")],
    ids=["y-pth", "x-safetensors", "y-trunk-pth", "x-trunk-safetensors"],
)
def test_torchvision_files_convert_to_hf_with_the_source_logits(tmp_path: Path, layer_type, num_labels, suffix):
    config = tiny_config(layer_type, num_labels=num_labels)
    state, canonical = ft.build("torchvision", config)
    path = tmp_path / f"weights{suffix}"
    ft.save_torch(state, path) if suffix == ".pth" else ft.save_safetensors(state, path)
    assert detect_format(path)[0].name == "torchvision"
    checkpoint = read_checkpoint(path)
    assert build_model_spec(checkpoint.config) == build_model_spec(config)
    if num_labels == 0:  # num_classes=0 keeps fc.weight [0, C] / fc.bias [0]: no classifier
        assert not checkpoint.with_head
        assert any("fc.weight and fc.bias have no rows" in note for note in checkpoint.notes)
        assert "fc.weight (empty classifier)" in checkpoint.foreign.ignored
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), ft.reference_logits(config, canonical, x))


def test_a_training_checkpoint_wrapper_is_unwrapped(tmp_path: Path):
    config = tiny_config("y")
    state, canonical = ft.build("torchvision", config)
    path = ft.save_torch(state, tmp_path / "checkpoint.pth", wrapper="model")
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "torchvision" and "epoch (int)" in checkpoint.foreign.ignored
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), ft.reference_logits(config, canonical, x))


@pytest.mark.parametrize("name", ["regnet_x_400mf", "regnet_y_800mf"])
def test_odd_width_models_convert_and_infer_their_own_widths(tmp_path: Path, name: str):
    config = _odd_config(name)
    state, canonical = ft.build("torchvision", config, seed=1)
    path = ft.save_torch(state, tmp_path / f"{name}.pth")
    checkpoint = read_checkpoint(path)
    layer_type, widths, depths, group_width, _ = ODD_WIDTHS[name]
    assert checkpoint.config.hidden_sizes == widths != PYCLS_WIDTHS[name]
    assert (checkpoint.config.depths, checkpoint.config.groups_width) == (depths, group_width)
    assert checkpoint.config.layer_type == layer_type and checkpoint.inferred.zoo_matches == ()
    x = ft.pixels(32)
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), ft.reference_logits(config, canonical, x))


def test_regnet_y_8gf_widths_are_inferred_and_convert(tmp_path: Path):
    config = _odd_config("regnet_y_8gf", num_labels=4)
    state, _ = ft.build("torchvision", config)
    path = ft.save_safetensors(state, tmp_path / "regnet_y_8gf.safetensors", dtype="float16")
    checkpoint = read_checkpoint(path)
    assert checkpoint.config.hidden_sizes == [224, 448, 896, 2016]
    assert checkpoint.config.depths == [2, 4, 10, 1] and checkpoint.config.groups_width == 56
    assert "no zoo model has this architecture" in checkpoint.inferred.describe()
    write_checkpoint(checkpoint, tmp_path / "hf", progress=False)
    back = read_checkpoint(tmp_path / "hf")
    assert back.config.hidden_sizes == [224, 448, 896, 2016] and back.source_dtypes() == checkpoint.source_dtypes()


# ----------------------------------------------------------------------------- against torchvision itself


@pytest.mark.parametrize("name", list(ODD_WIDTHS))
def test_the_documented_odd_widths_are_torchvisions(name: str):
    torchvision = peer("torchvision")
    state, _ = ft.build("torchvision", _odd_config(name, num_labels=1000))
    assert {k: tuple(np.shape(v)) for k, v in state.items()} == _meta_shapes(torchvision, name, 1000)


@pytest.mark.parametrize("name", ["regnet_x_400mf", "regnet_y_800mf"])
def test_torchvision_loads_our_fixture_and_agrees_with_the_conversion(tmp_path: Path, name: str):
    torchvision = peer("torchvision")
    config = _odd_config(name)
    state, _ = ft.build("torchvision", config, seed=2)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    model.load_state_dict(ft.to_torch(state), strict=True)
    checkpoint = read_checkpoint(ft.save_torch(state, tmp_path / "w.pth"))
    x = ft.pixels(32)
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), _torch_logits(model, x))
    reference = TORCHVISION.reference_logits(checkpoint.foreign, checkpoint.config)
    assert np.array_equal(reference(x), _torch_logits(model, x))


def test_a_torchvision_model_converts_with_torchvisions_logits(tmp_path: Path):
    torchvision = peer("torchvision")
    import torch

    model = torchvision.models.regnet_y_400mf(num_classes=10).eval()
    _randomise_bn(model, 3)
    torch.save(model.state_dict(), tmp_path / "regnet_y_400mf.pth")
    checkpoint = read_checkpoint(tmp_path / "regnet_y_400mf.pth")
    assert checkpoint.format == "torchvision"
    x = ft.pixels(64)
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), _torch_logits(model, x))


def test_the_torchvision_reference_refuses_an_architecture_it_does_not_have(tmp_path: Path):
    peer("torchvision")
    state, _ = ft.build("torchvision", tiny_config("x"))
    checkpoint = read_checkpoint(ft.save_torch(state, tmp_path / "w.pth"))
    with pytest.raises(ReferenceUnavailable, match="no torchvision constructor has this architecture"):
        TORCHVISION.reference_logits(checkpoint.foreign, checkpoint.config)


def test_regnet_convert_verify_runs_torchvision_as_the_reference_for_a_trunk(tmp_path: Path, capsys, monkeypatch):
    torchvision = peer("torchvision")
    import torch

    model = torchvision.models.regnet_x_400mf(num_classes=0).eval()  # fc.weight [0, 400], fc.bias [0]
    _randomise_bn(model, 4)
    torch.save(model.state_dict(), tmp_path / "trunk.pth")
    monkeypatch.setattr(convert_module, "installed_frameworks", lambda: ["pt"])  # TF / Flax: see test_format_timm
    code = main(["convert", str(tmp_path / "trunk.pth"), str(tmp_path / "out"), "--verify", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fc.weight and fc.bias have no rows" in out and "stage widths [32, 64, 160, 400]" in out
    assert "pooler_output" in out and "vs torchvision" in out and "verify: PASS" in out
