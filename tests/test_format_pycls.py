"""pycls .pyth checkpoints: zip and legacy files, what is set aside, EMA, BGR input, refused configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config
from regnet_core import convert as convert_module
from regnet_core.cli import main
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import FormatError
from regnet_core.formats import detect_format

from . import foreign_torch as ft
from .helpers import requires, tiny_config

pytestmark = requires("torch")

BGR_NOTE = "pycls weights expect BGR input; pass --bgr-to-rgb for an RGB model"


def _converted_logits(checkpoint, directory: Path, x: np.ndarray) -> np.ndarray:
    from regnet_pt import RegNetForImageClassification, RegNetModel

    write_checkpoint(checkpoint, directory, progress=False)
    model_class = RegNetForImageClassification if checkpoint.with_head else RegNetModel
    return ft.run_model(model_class.from_pretrained(directory), x)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_pyth_files_read_in_both_serialisations(tmp_path: Path, legacy: bool, layer_type: str):
    config = tiny_config(layer_type)
    state, canonical = ft.build("pycls", config)
    path = ft.pycls_checkpoint(state, config, tmp_path / "model_epoch_0100.pyth", legacy=legacy)
    assert path.read_bytes()[:4] == (b"\x80\x02\x8a\x0a" if legacy else b"PK\x03\x04")
    assert detect_format(path)[0].name == "pycls"
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "pycls" and build_model_spec(checkpoint.config) == build_model_spec(config)
    assert BGR_NOTE in checkpoint.notes
    ignored = " ".join(checkpoint.foreign.ignored)
    assert "optimizer_state" in ignored and "epoch" in ignored and "cfg" in ignored
    assert checkpoint.foreign.extra["cfg"]["REGNET"]["DEPTH"] == 13
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), ft.reference_logits(config, canonical, x))


def test_a_bare_state_dict_pyth_and_a_pth_with_pycls_names_read(tmp_path: Path):
    config = tiny_config("y", num_labels=3)
    state, canonical = ft.build("pycls", config)
    x = ft.pixels()
    expected = ft.reference_logits(config, canonical, x)
    for name in ("bare.pyth", "bare.pth"):
        path = ft.save_torch(state, tmp_path / name)
        assert detect_format(path)[0].name == "pycls"
        checkpoint = read_checkpoint(path)
        ft.assert_close(_converted_logits(checkpoint, tmp_path / f"hf-{name.replace('.', '-')}", x), expected)


def test_the_zoo_architecture_is_inferred_from_a_pycls_checkpoint(tmp_path: Path):
    config = get_config("regnet-x-002")
    state, canonical = ft.build("pycls", config)
    checkpoint = read_checkpoint(ft.pycls_checkpoint(state, config, tmp_path / "RegNetX-200MF.pyth"))
    assert "regnet-x-002" in checkpoint.inferred.zoo_matches
    x = ft.pixels(48)
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), ft.reference_logits(config, canonical, x))


def test_bgr_to_rgb_gives_an_rgb_model_equal_to_pycls_on_bgr_input(tmp_path: Path):
    config = tiny_config("y")
    state, canonical = ft.build("pycls", config)
    path = ft.pycls_checkpoint(state, config, tmp_path / "model.pyth")
    rgb = ft.pixels()
    bgr = np.ascontiguousarray(rgb[:, ::-1])
    pycls_on_bgr = ft.reference_logits(config, canonical, bgr)
    flipped = read_checkpoint(path, bgr_to_rgb=True)
    assert any("BGR to RGB" in note for note in flipped.notes)
    ft.assert_close(_converted_logits(flipped, tmp_path / "rgb", rgb), pycls_on_bgr)
    as_is = read_checkpoint(path)
    ft.assert_close(_converted_logits(as_is, tmp_path / "bgr", bgr), pycls_on_bgr)
    assert not np.allclose(_converted_logits(as_is, tmp_path / "bgr2", rgb), pycls_on_bgr, rtol=1e-3)


@pytest.mark.parametrize(
    ("test_err", "ema_err", "taken"),
    [(24.0, 23.5, "ema_state"), (23.5, 24.0, "model_state"), (24.0, 24.0, "model_state"), (None, 30.0, "ema_state")],
    ids=["ema-better", "model-better", "tie", "no-test-err"],
)
def test_pycls_main_ema_checkpoints_take_the_state_pycls_would(tmp_path: Path, test_err, ema_err, taken):
    config = tiny_config("x")
    state, canonical = ft.build("pycls", config, seed=1)
    ema_state, ema_canonical = ft.build("pycls", config, seed=2)
    path = ft.pycls_checkpoint(state, config, tmp_path / "ema.pyth", ema=ema_state, test_err=test_err, ema_err=ema_err)
    if test_err is None:  # pycls takes a missing error as 100
        import torch

        data = torch.load(path, weights_only=True)
        del data["test_err"]
        torch.save(data, path)
    checkpoint = read_checkpoint(path)
    assert any(note.startswith(f"took {taken}") for note in checkpoint.notes), checkpoint.notes
    other = "model_state" if taken == "ema_state" else "ema_state"
    assert any(entry.startswith(other) for entry in checkpoint.foreign.ignored)
    x = ft.pixels()
    expected = ft.reference_logits(config, ema_canonical if taken == "ema_state" else canonical, x)
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), expected)


def test_a_zero_row_head_is_no_head(tmp_path: Path):
    config = tiny_config("y", num_labels=0)
    state, canonical = ft.build("pycls", config)
    assert state["head.fc.weight"].shape == (0, 24)
    checkpoint = read_checkpoint(ft.pycls_checkpoint(state, config, tmp_path / "trunk.pyth"))
    assert not checkpoint.with_head and checkpoint.config.num_labels == 0
    assert any("head.fc.weight and head.fc.bias have no rows" in note for note in checkpoint.notes)
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path / "hf", x), ft.reference_logits(config, canonical, x))


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"model_type": "resnet"}, "pycls resnet checkpoint"), ({"eps": "0.001"}, "BN.EPS is 0.001")],
)
def test_a_cfg_describing_another_network_is_refused(tmp_path: Path, changes, message):
    config = tiny_config("x")
    state, _ = ft.build("pycls", config)
    path = ft.pycls_checkpoint(state, config, tmp_path / "other.pyth", **changes)
    with pytest.raises(FormatError, match=message):
        read_checkpoint(path, "pycls")


def test_regnet_convert_bgr_to_rgb_verify_passes(tmp_path: Path, capsys, monkeypatch):
    config = tiny_config("y")
    state, canonical = ft.build("pycls", config)
    path = ft.pycls_checkpoint(state, config, tmp_path / "model.pyth", legacy=True)
    monkeypatch.setattr(convert_module, "installed_frameworks", lambda: ["pt"])
    code = main(["convert", str(path), str(tmp_path / "out"), "--bgr-to-rgb", "--verify", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    # With the flag given, the reminder to give it is dropped and the flip is reported instead.
    assert "(pycls)" in out and BGR_NOTE not in out and "flipped from BGR to RGB" in out
    assert "verify: PASS" in out and "pycls's own model code is not run here" in out
    rgb = ft.pixels()
    from regnet_pt import RegNetForImageClassification

    got = ft.run_model(RegNetForImageClassification.from_pretrained(tmp_path / "out"), rgb)
    ft.assert_close(got, ft.reference_logits(config, canonical, np.ascontiguousarray(rgb[:, ::-1])))
