"""vissl / ClassyVision SEER checkpoints: detection, the container's nesting, heads, the 10B part level, backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config
from regnet_core.checkpoint import save_checkpoint
from regnet_core.convert import read_checkpoint, write_checkpoint
from regnet_core.errors import CheckpointError, FormatError
from regnet_core.formats import detect_format, get_format
from regnet_core.formats.base import ReferenceUnavailable
from regnet_core.formats.infer import infer_config
from regnet_core.safetensors_io import write_safetensors
from regnet_core.weights import parameter_table

from . import foreign_seer_keras as fk
from . import foreign_torch as ft
from .helpers import requires, tiny_config

pytestmark = requires("torch")

VISSL = get_format("vissl")
PARTS = [[1], [2], [1, 3], []]  # the 10B's stage_checkpoints [[2], [7], [9, 17], []], scaled to a tiny trunk


def _four_stage(num_labels: int = 5, layer_type: str = "y"):
    return tiny_config(layer_type, num_labels=num_labels, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 3, 1])


def _converted_logits(checkpoint, tmp_path: Path, x: np.ndarray) -> np.ndarray:
    from regnet_pt import RegNetForImageClassification, RegNetModel

    out = tmp_path / "hf"
    write_checkpoint(checkpoint, out, progress=False)
    model_class = RegNetForImageClassification if checkpoint.with_head else RegNetModel
    return ft.run_model(model_class.from_pretrained(out), x)


def _nested_file(tmp_path: Path, config, name: str = "model_final_checkpoint_phase78.torch", **kwargs) -> tuple:
    canonical = ft.canonical_state(config)
    trunk = fk.vissl_trunk(config, canonical, kwargs.pop("parts", None))
    heads = fk.in1k_heads(canonical) if config.num_labels else {}
    path = fk.save(fk.vissl_checkpoint(trunk, heads, **kwargs), tmp_path / name)
    return path, canonical


# ----------------------------------------------------------------------------- detection


def test_vissl_files_are_told_from_torchvision_timm_pycls_and_hf(tmp_path: Path):
    config = tiny_config("y")
    canonical = ft.canonical_state(config)
    trunk = fk.vissl_trunk(config, canonical)
    files = {
        "vissl": _nested_file(tmp_path, config)[0],
        "vissl-bare": fk.save(trunk, tmp_path / "trunk.pth"),
        "vissl-no-feature-blocks": fk.save(
            {k.removeprefix("_feature_blocks."): v for k, v in trunk.items()}, tmp_path / "trunk_short.pth"
        ),
        "torchvision": ft.save_torch(ft.build("torchvision", config)[0], tmp_path / "torchvision.pth"),
        "timm": ft.save_torch(ft.build("timm", config)[0], tmp_path / "timm.pth"),
        "pycls": ft.pycls_checkpoint(ft.build("pycls", config)[0], config, tmp_path / "pycls.pyth"),
    }
    hf_dir = tmp_path / "hf"
    save_checkpoint(hf_dir, config, canonical, architecture="RegNetForImageClassification")
    files["hf"] = hf_dir
    for label, path in files.items():
        fmt, _ = detect_format(path)
        assert fmt.name == label.split("-")[0], label
    # torchvision shares the ``f.a.0`` / ``proj`` leaves; no torchvision name maps in the vissl table, nor back
    torchvision_names = list(ft.build("torchvision", config)[0])
    assert VISSL.to_neutral(torchvision_names)[0] == {}
    assert get_format("torchvision").to_neutral(list(trunk))[0] == {}


def test_names_that_break_vissls_numbering_do_not_map():
    names = [
        "_feature_blocks.res3.block1-0.f.a.0.weight",  # res{S+1} must go with block{S}
        "_feature_blocks.res2.block2-part0.block1-0.f.a.0.weight",  # a part of another stage
        "_feature_blocks.res2.block1-0.f.a_bn.weight",  # pycls leaf
        "_feature_blocks.res2.block1-0.f.c.0.weight",  # torchvision leaf
        "heads.0.projection_head.0.weight",
    ]
    mapped, unknown = VISSL.to_neutral(names)
    assert mapped == {} and unknown == names
    good = [
        "_feature_blocks.res2.block1-part0.block1-1.f.se.excitation.2.bias",
        "trunk._feature_blocks.res5.block4-0.f.final_bn.running_var",
        "trunk.conv1.stem.1.num_batches_tracked",
        "res4.block3-16.bn.weight",
        "heads.0.clf.0.weight",
    ]
    assert VISSL.to_neutral(good)[0] == dict(
        zip(
            good,
            [
                "s0.b1.se.expand.bias",
                "s3.b0.c.bn.running_var",
                "stem.bn.num_batches_tracked",
                "s2.b16.proj.bn.weight",
                "head.weight",
            ],
            strict=True,
        )
    )


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("form", "num_labels"),
    [
        ("nested", 5),
        ("nested", 0),
        ("nested-legacy", 5),
        ("consolidated-parts", 6),
        ("bare-trunk", 0),
        ("bare-no-feature-blocks", 0),
        ("model-state-dict", 4),
        ("module-prefixed", 0),
        ("linear-eval-prefixed", 0),
        ("bare-safetensors-without-bn-counts", 0),
    ],
)
def test_vissl_files_convert_to_hf_with_the_source_logits(tmp_path: Path, form: str, num_labels: int):
    config = _four_stage(num_labels) if form == "consolidated-parts" else tiny_config("y", num_labels=num_labels)
    canonical = ft.canonical_state(config, seed=3)
    parts = PARTS if form == "consolidated-parts" else None
    trunk = fk.vissl_trunk(config, canonical, parts)
    heads = fk.in1k_heads(canonical) if num_labels else {}
    path = tmp_path / "model.torch"
    if form.startswith("nested"):
        fk.save(fk.vissl_checkpoint(trunk, heads), path, legacy=form.endswith("legacy"))
    elif form == "consolidated-parts":
        fk.save(fk.vissl_checkpoint(trunk, heads, consolidated=True), path)
    elif form == "bare-trunk":
        fk.save(trunk, path)
    elif form == "bare-no-feature-blocks":
        fk.save({k.removeprefix("_feature_blocks."): v for k, v in trunk.items()}, path)
    elif form == "model-state-dict":  # BaseSSLMultiInputOutputModel.state_dict()
        state = {f"trunk.{k}": v for k, v in trunk.items()} | {f"heads.{k}": v for k, v in heads.items()}
        fk.save(state, path)
    elif form == "module-prefixed":
        fk.save({f"module.trunk.{k}": v for k, v in trunk.items()}, path)
    elif form == "linear-eval-prefixed":  # vissl's FeatureExtractorModel keeps the trunk as base_model
        fk.save({f"base_model.{k}": v for k, v in trunk.items()}, path)
    else:  # num_batches_tracked is optional (vissl's WEIGHTS_INIT skips it)
        path = tmp_path / "trunk.safetensors"
        write_safetensors(path, {k: v.numpy() for k, v in trunk.items() if not k.endswith("num_batches_tracked")})
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "vissl" and checkpoint.config_origin == "inferred"
    assert build_model_spec(checkpoint.config) == build_model_spec(config)
    assert checkpoint.with_head == (num_labels > 0)
    if form == "nested":
        assert "phase_idx (int)" in checkpoint.foreign.ignored
        assert "classy_state_dict.optimizer (dict)" in checkpoint.foreign.ignored
        assert "classy_state_dict.base_model.meta (dict)" in checkpoint.foreign.ignored
        assert any("classy_state_dict.base_model.model" in note for note in checkpoint.notes)
    if form == "consolidated-parts":
        assert any("consolidated" in note for note in checkpoint.notes)
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), ft.reference_logits(config, canonical, x))


def test_ssl_heads_are_set_aside_with_a_note_and_the_trunk_converts(tmp_path: Path):
    config = tiny_config("y", num_labels=0)
    canonical = ft.canonical_state(config)
    trunk = fk.vissl_trunk(config, canonical)
    heads = fk.swav_heads(config.hidden_sizes[-1])
    path = fk.save(fk.vissl_checkpoint(trunk, heads), tmp_path / "model_iteration244000.torch")
    fmt, _ = detect_format(path)
    assert fmt.name == "vissl"
    checkpoint = read_checkpoint(path)
    assert not checkpoint.with_head
    assert any("0.projection_head.0.weight" in note and "without a classifier" in note for note in checkpoint.notes)
    assert any(entry.startswith("heads.0.prototypes0.weight") for entry in checkpoint.foreign.ignored)
    x = ft.pixels()
    ft.assert_close(_converted_logits(checkpoint, tmp_path, x), ft.reference_logits(config, canonical, x))


def test_a_linear_head_on_other_features_is_not_taken_for_the_classifier(tmp_path: Path):
    import torch

    config = tiny_config("x", num_labels=0)
    canonical = ft.canonical_state(config)
    heads = {"0.clf.0.weight": torch.ones(5, 16), "0.clf.0.bias": torch.zeros(5)}  # 16 != the trunk's 24
    path = fk.save(fk.vissl_checkpoint(fk.vissl_trunk(config, canonical), heads), tmp_path / "eval.torch")
    checkpoint = read_checkpoint(path)
    assert not checkpoint.with_head
    assert any("24-wide trunk output" in note for note in checkpoint.notes)


def test_vissl_files_without_a_trunk_are_refused_saying_what_was_expected(tmp_path: Path):
    path = fk.save({"classy_state_dict": {"base_model": {"model": {"heads": {}}}}}, tmp_path / "empty.torch")
    with pytest.raises(CheckpointError, match="expected the tensors of a vissl RegNet trunk"):
        read_checkpoint(path, "vissl")
    path = fk.save({"classy_state_dict": {"base_model": [1, 2]}}, tmp_path / "odd.torch")
    with pytest.raises(CheckpointError, match="classy_state_dict.base_model is a list"):
        read_checkpoint(path, "vissl")
    with pytest.raises(FormatError):
        detect_format(path)


def test_the_vissl_reference_says_it_does_not_run(tmp_path: Path):
    path, _ = _nested_file(tmp_path, tiny_config("y"))
    checkpoint = read_checkpoint(path)
    with pytest.raises(ReferenceUnavailable, match="vissl"):
        VISSL.reference_logits(checkpoint.foreign, checkpoint.config)


# ----------------------------------------------------------------------------- the 10B trunk, names and shapes only


@pytest.mark.parametrize("zoo_name", ["regnet-y-10b-seer", "regnet-y-2560-seer", "regnet-y-320-seer"])
def test_the_vissl_table_covers_every_seer_trunk_tensor_without_values(zoo_name: str):
    config = get_config(zoo_name)
    parts = [[2], [7], [9, 17], []] if "10b" in zoo_name else None
    layout = fk.vissl_layout(config, parts)
    names = [name for name, _, _ in layout]
    if parts is not None:
        assert "_feature_blocks.res4.block3-part1.block3-9.f.c.weight" in names
    mapped, unknown = VISSL.to_neutral(names)
    assert not unknown and len(set(mapped.values())) == len(names)
    shapes = {mapped[name]: shape for name, _, shape in layout}
    inferred = infer_config(shapes)
    assert build_model_spec(inferred.config) == build_model_spec(config)
    assert zoo_name in inferred.zoo_matches
    table = {t.name: t.shape for t in parameter_table(build_model_spec(config), with_head=False)}
    assert {canonical: shape for _, canonical, shape in layout} == table


# ----------------------------------------------------------------------------- every backend


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_from_pretrained_reads_a_vissl_file_in_every_backend(tmp_path: Path, framework: str):
    pytest.importorskip({"pt": "torch", "tf": "tensorflow", "flax": "flax"}[framework])
    from regnet_core.backends import get_backend

    config = tiny_config("y", num_labels=3)
    path, canonical = _nested_file(tmp_path, config)
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
