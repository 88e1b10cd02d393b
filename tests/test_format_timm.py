"""timm RegNet checkpoints: detection, reading into every backend, writing, and refusing timm's other RegNets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config
from regnet_core import convert as convert_module
from regnet_core.checkpoint import save_checkpoint
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import FormatError
from regnet_core.formats import detect_format, get_format
from regnet_core.formats.timm import timm_variant
from regnet_core.safetensors_io import open_safetensors, write_safetensors

from . import foreign_torch as ft
from .helpers import requires, tiny_config
from .peers import peer

pytestmark = requires("torch")

TIMM = get_format("timm")


def _timm_file(tmp_path: Path, config, name: str = "model.safetensors", seed: int = 0, **save) -> tuple[Path, dict]:
    state, canonical = ft.build("timm", config, seed)
    path = tmp_path / name
    if name.endswith(".safetensors"):
        ft.save_safetensors(state, path, **save)
    else:
        ft.save_torch(state, path, **save)
    return path, canonical


def _converted_logits(checkpoint, tmp_path: Path, x: np.ndarray) -> np.ndarray:
    from regnet_pt import RegNetForImageClassification, RegNetModel

    out = tmp_path / "hf"
    write_checkpoint(checkpoint, out, progress=False)
    model_class = RegNetForImageClassification if checkpoint.with_head else RegNetModel
    return ft.run_model(model_class.from_pretrained(out), x)


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


# ----------------------------------------------------------------------------- detection


def test_timm_torchvision_pycls_and_hf_files_are_told_apart(tmp_path: Path):
    config = tiny_config("y")
    files = {}
    for library in ("timm", "torchvision"):
        state, _ = ft.build(library, config)
        files[library] = ft.save_torch(state, tmp_path / f"{library}.pth")
    state, _ = ft.build("pycls", config)
    files["pycls"] = ft.pycls_checkpoint(state, config, tmp_path / "pycls.pyth")
    files["pycls-as-pth"] = ft.save_torch(state, tmp_path / "pycls_state.pth")
    files["timm-safetensors"] = ft.save_safetensors(ft.build("timm", config)[0], tmp_path / "timm.safetensors")
    hf_dir = tmp_path / "hf"
    save_checkpoint(hf_dir, config, ft.canonical_state(config), architecture="RegNetForImageClassification")
    files["hf"] = hf_dir
    expected = {"pycls-as-pth": "pycls", "timm-safetensors": "timm"}
    for label, path in files.items():
        fmt, _ = detect_format(path)
        assert fmt.name == expected.get(label, label), label
    assert not TIMM.claims(hf_dir)  # a transformers directory (model_type regnet) is not timm's


def test_a_timm_hub_directory_is_timm_and_keeps_its_label_names(tmp_path: Path):
    config = tiny_config("x", num_labels=3)
    directory = tmp_path / "timm-hub"
    directory.mkdir()
    path, canonical = _timm_file(directory, config)
    labels = ["cat", "dog", "fish"]
    hub = {"architecture": "regnetx_002", "num_classes": 3, "num_features": 24, "label_names": labels}
    (directory / "config.json").write_text(json.dumps({**hub, "pretrained_cfg": {"mean": [0.485, 0.456, 0.406]}}))
    assert not get_format("hf").claims(directory)
    fmt, _ = detect_format(directory)
    assert fmt.name == "timm"
    checkpoint = read_checkpoint(directory)
    assert checkpoint.foreign.extra["architecture"] == "regnetx_002"
    assert checkpoint.config.id2label == dict(enumerate(labels))
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), ft.reference_logits(config, canonical, x))


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("layer_type", "num_labels", "name", "save"),
    [
        ("y", 5, "model.safetensors", {}),
        ("x", 5, "model.pth", {}),
        ("y", 0, "pytorch_model.bin", {}),
        ("x", 7, "checkpoint.pt", {"wrapper": "state_dict"}),
        ("y", 4, "checkpoint.pth", {"wrapper": "model"}),
    ],
    ids=["y-safetensors", "x-pth", "y-trunk-bin", "state_dict-wrapper", "model-wrapper"],
)
def test_timm_files_convert_to_hf_with_the_source_logits(tmp_path: Path, layer_type, num_labels, name, save):
    config = tiny_config(layer_type, num_labels=num_labels)
    path, canonical = _timm_file(tmp_path, config, name, **save)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "timm" and checkpoint.config_origin == "inferred"
    assert build_model_spec(checkpoint.config) == build_model_spec(config)
    assert checkpoint.with_head == (num_labels > 0)
    if "wrapper" in save:
        assert any("epoch" in entry for entry in checkpoint.foreign.ignored)
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), ft.reference_logits(config, canonical, x))


def test_a_dataparallel_module_prefix_is_removed(tmp_path: Path):
    config = tiny_config("x")
    state, canonical = ft.build("timm", config)
    path = ft.save_torch({f"module.{name}": value for name, value in state.items()}, tmp_path / "dp.pth")
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "timm" and any("'module.' prefix" in note for note in checkpoint.notes)
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), ft.reference_logits(config, canonical, x))


def test_a_timm_regnety_002_state_dict_infers_the_zoo_model(tmp_path: Path):
    config = get_config("regnet-y-002")
    path, canonical = _timm_file(tmp_path, config)
    checkpoint = read_checkpoint(path)
    assert checkpoint.inferred is not None and "regnet-y-002" in checkpoint.inferred.zoo_matches
    assert "regnet-y-002" in checkpoint.inferred.describe()
    x = ft.pixels(64)
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), ft.reference_logits(config, canonical, x))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_safetensors_load_as_they_are_stored(tmp_path: Path, dtype: str):
    config = tiny_config("y")
    path, canonical = _timm_file(tmp_path, config, dtype=dtype)
    checkpoint = read_checkpoint(path)
    assert checkpoint.source_dtypes()[dtype] > 0
    x = ft.pixels()
    expected = ft.reference_logits(config, ft.rounded(canonical, dtype), x)
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), expected)


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_from_pretrained_reads_a_timm_file_in_every_backend(tmp_path: Path, framework: str):
    pytest.importorskip({"pt": "torch", "tf": "tensorflow", "flax": "flax"}[framework])
    from regnet_core.backends import get_backend

    config = tiny_config("y")
    path, canonical = _timm_file(tmp_path, config)
    if framework == "pt":
        import regnet_pt

        model = regnet_pt.RegNetForImageClassification.from_pretrained(path)
    elif framework == "tf":
        import regnet_tf

        model = regnet_tf.RegNetForImageClassification.from_pretrained(path)
    else:
        import regnet_flax

        model = regnet_flax.from_pretrained(path)
    x = ft.pixels()
    got = get_backend(framework).run(model, x, output_hidden_states=False)["logits"]
    ft.assert_close(np.asarray(got).reshape(2, -1), ft.reference_logits(config, canonical, x))


# ----------------------------------------------------------------------------- refusing timm's other RegNets


def _write_names(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    write_safetensors(path, {name: np.zeros(shape, np.float32) for name, shape in shapes.items()})
    return path


# Key sets of timm 1.0's regnetv_040 (pre-activation) and byobnet regnetz_b16, shortened to their first block.
_REGNETV = {
    "stem.weight": (32, 3, 3, 3),
    "s1.b1.norm1.weight": (32,),
    "s1.b1.norm1.bias": (32,),
    "s1.b1.norm1.running_mean": (32,),
    "s1.b1.norm1.running_var": (32,),
    "s1.b1.conv1.weight": (64, 32, 1, 1),
    "s1.b1.downsample.weight": (64, 32, 1, 1),
    "head.fc.weight": (5, 64),
    "head.fc.bias": (5,),
}
_BYOBNET = {
    "stem.conv.weight": (32, 3, 3, 3),
    "stages.0.0.conv1_1x1.conv.weight": (48, 32, 1, 1),
    "stages.0.0.conv2_kxk.conv.weight": (48, 16, 3, 3),
    "stages.0.0.attn.fc1.weight": (8, 48, 1, 1),
    "head.fc.weight": (5, 48),
}


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("regnetv", "regnetv"), ("byobnet", "byobnet model"), ("regnetz", "regnetz"), ("sgn", "GroupNorm")],
)
def test_timm_variants_that_are_not_plain_regnets_are_refused_naming_tensors(tmp_path: Path, variant, expected):
    if variant == "regnetv":
        path = _write_names(tmp_path / "model.safetensors", _REGNETV)
        shown = "stem.weight"
    elif variant == "byobnet":
        path = _write_names(tmp_path / "model.safetensors", _BYOBNET)
        shown = "stages.0.0.conv1_1x1.conv.weight"
    else:
        state, _ = ft.build("timm", tiny_config("y"))
        if variant == "regnetz":  # regnetz_040: the plain Y key set without any shortcut projection
            state = {k: v for k, v in state.items() if ".downsample." not in k}
            shown = "s1.b1.conv1.conv.weight"
        else:  # regnety_040_sgn: GroupNorm, so no running statistics
            state = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked"))}
            shown = "stem.bn.weight"
        path = ft.save_safetensors(state, tmp_path / "model.safetensors")
    with pytest.raises(FormatError, match=expected) as caught:
        read_checkpoint(path)
    assert shown in str(caught.value)
    with pytest.raises(FormatError, match=f"{expected}.*{shown.replace('.', '[.]')}"):
        read_checkpoint(path, "timm")


def test_names_of_other_timm_regnets_do_not_map():
    others = ["final_conv.conv.weight", "s1.b1.downsample.1.conv.weight", "s1.b1.downsample.1.bn.running_var"]
    names = list(_REGNETV) + list(_BYOBNET) + others
    shared = {"stem.conv.weight", "head.fc.weight", "head.fc.bias"}  # the plain stem and classifier
    mapped, unknown = TIMM.to_neutral(names)
    assert set(mapped) == shared and set(unknown) == set(names) - shared


def test_timm_hub_directory_of_another_architecture_is_refused(tmp_path: Path):
    directory = tmp_path / "hub"
    directory.mkdir()
    _timm_file(directory, tiny_config("y"))
    (directory / "config.json").write_text(json.dumps({"architecture": "regnetz_040", "num_classes": 5}))
    with pytest.raises(FormatError, match="regnetz_040.*not a plain RegNetX / RegNetY"):
        read_checkpoint(directory)


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("name", ["out.safetensors", "out.pth", "out.bin"])
def test_timm_writes_one_file_that_reads_back_bit_exact(tmp_path: Path, name: str):
    config = tiny_config("y")
    path, canonical = _timm_file(tmp_path, config, "source.pth")
    checkpoint = read_checkpoint(path)
    written = write_checkpoint(checkpoint, tmp_path / name, "timm", progress=False)
    assert written == [tmp_path / name] and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    back = read_checkpoint(tmp_path / name)
    assert back.format == "timm" and list(back.tensors) == list(checkpoint.tensors)
    for neutral_name, tensor in checkpoint.tensors.items():
        assert np.array_equal(back.tensors[neutral_name].load(), tensor.load()), neutral_name
    with pytest.raises(FormatError, match="timm output is a file named"):
        write_checkpoint(checkpoint, tmp_path / "out.h5", "timm", progress=False)


def test_timm_writes_bfloat16_pickles_and_safetensors(tmp_path: Path):
    torch = pytest.importorskip("torch")
    config = tiny_config("x")
    path, canonical = _timm_file(tmp_path, config, "source.safetensors")
    checkpoint = read_checkpoint(path)
    write_checkpoint(checkpoint, tmp_path / "half.pth", "timm", dtype="bfloat16", progress=False)
    write_checkpoint(checkpoint, tmp_path / "half.safetensors", "timm", dtype="bfloat16", progress=False)
    pickled = torch.load(tmp_path / "half.pth", weights_only=True)
    assert pickled["stem.conv.weight"].dtype == torch.bfloat16
    assert pickled["stem.bn.num_batches_tracked"].dtype == torch.int64
    header = open_safetensors(tmp_path / "half.safetensors")
    assert header["stem.conv.weight"].dtype == "bfloat16"
    expected = ft.rounded(canonical, "bfloat16")
    for file in ("half.pth", "half.safetensors"):
        x = ft.pixels()
        ft.assert_close(
            _converted_logits(read_checkpoint(tmp_path / file), tmp_path / file.replace(".", "-"), x),
            ft.reference_logits(config, expected, x),
        )


# ----------------------------------------------------------------------------- against timm itself


@pytest.mark.parametrize(("model_name", "num_classes"), [("regnety_002", 1000), ("regnetx_002", 0)])
def test_our_timm_files_load_strictly_in_timm_with_equal_logits(tmp_path: Path, model_name: str, num_classes: int):
    timm = peer("timm")
    import torch
    from safetensors.torch import load_file

    zoo = "regnet-y-002" if model_name == "regnety_002" else "regnet-x-002"
    config = get_config(zoo).copy(num_labels=num_classes)
    state, canonical = ft.build("pycls", config, seed=5)
    source = ft.pycls_checkpoint(state, config, tmp_path / "source.pyth")
    checkpoint = read_checkpoint(source)
    x = ft.pixels(48)
    expected = ft.reference_logits(config, canonical, x)
    for name in ("out.safetensors", "out.pth"):
        write_checkpoint(checkpoint, tmp_path / name, "timm", progress=False)
        values = load_file(tmp_path / name) if name.endswith("safetensors") else torch.load(tmp_path / name)
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes).eval()
        model.load_state_dict(values, strict=True)
        ft.assert_close(_torch_logits(model, x), expected)


def test_a_timm_model_state_dict_converts_with_timms_logits(tmp_path: Path):
    timm = peer("timm")
    import torch

    model = timm.create_model("regnety_002", pretrained=False, num_classes=10, zero_init_last=False).eval()
    _randomise_bn(model, 1)
    torch.save(model.state_dict(), tmp_path / "regnety_002.pth")
    checkpoint = read_checkpoint(tmp_path / "regnety_002.pth")
    x = ft.pixels(64)
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), _torch_logits(model, x))
    reference = TIMM.reference_logits(checkpoint.foreign, checkpoint.config)
    assert np.array_equal(reference(x), _torch_logits(model, x))


def test_the_timm_reference_refuses_an_architecture_timm_does_not_have(tmp_path: Path):
    peer("timm")
    from regnet_core.formats.base import ReferenceUnavailable

    path, _ = _timm_file(tmp_path, tiny_config("y"))
    checkpoint = read_checkpoint(path)
    with pytest.raises(ReferenceUnavailable, match="no timm model has this architecture"):
        TIMM.reference_logits(checkpoint.foreign, checkpoint.config)


def test_key_sets_of_timms_other_regnets_are_told_from_plain_ones():
    timm = peer("timm")
    import torch

    def names(model_name: str) -> list[str]:
        with torch.device("meta"):
            return list(timm.create_model(model_name, pretrained=False).state_dict())

    for model_name in ("regnetv_040", "regnetv_064", "regnetz_005", "regnetz_040", "regnety_040_sgn", "regnetz_b16"):
        assert timm_variant(names(model_name)) is not None, model_name
    for model_name in ("regnetx_002", "regnety_008_tv"):
        plain = names(model_name)
        assert timm_variant(plain) is None and not TIMM.to_neutral(plain)[1], model_name


def test_regnet_convert_verify_runs_timm_as_the_reference(tmp_path: Path, capsys, monkeypatch):
    timm = peer("timm")
    import torch

    model = timm.create_model("regnetx_002", pretrained=False, zero_init_last=False).eval()
    _randomise_bn(model, 2)
    torch.save(model.state_dict(), tmp_path / "regnetx_002.pth")
    monkeypatch.setattr(convert_module, "installed_frameworks", lambda: ["pt"])  # TF / Flax are covered above
    code = main(["convert", str(tmp_path / "regnetx_002.pth"), str(tmp_path / "out"), "--verify", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(timm)" in out and "this is regnet-x-002" in out
    assert "vs timm" in out and "verify: PASS" in out
