"""Feature maps for detection and segmentation: out_indices, feature_info, and RegNetBackbone in every backend.

Indices follow timm's features_only and transformers' backbones: 0 is the stem, 1..N the
stages. The core's figures are checked against the configs' own widths and the paper's
strides; each backend's backbone against its own full model's hidden states (the same
weights, the same layers), and checkpoints of every kind load into it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config, parameter_table, random_state
from regnet_core.checkpoint import save_checkpoint
from regnet_core.features import (
    BackboneOutput,
    FeatureInfo,
    FeatureSelectionError,
    backbone_spec,
    default_out_indices,
    feature_info,
    resolve_out_indices,
    select_backbone_state,
    stage_names,
)
from regnet_core.parity import compare_arrays
from regnet_core.tensors import LazyTensor
from regnet_core.weights import CheckpointMismatchError

from . import foreign_torch as ft
from .helpers import REFERENCE_ZOO, requires, tiny_config

FRAMEWORK_MODULES = {"pt": "torch", "tf": "tensorflow", "flax": "flax"}


def _needs(framework: str) -> None:
    pytest.importorskip(FRAMEWORK_MODULES[framework])


def _adapter(framework: str):
    _needs(framework)
    return importlib.import_module(f"regnet_{framework}.backbone")


def _full_hidden_states(config, state, x_nchw: np.ndarray) -> list[np.ndarray]:
    """Hidden states (stem, every stage; NCHW) of the whole PyTorch trunk: the reference for every backbone."""
    pytest.importorskip("torch")
    from regnet_core.backends import get_backend

    backend = get_backend("pt")
    model = backend.from_canonical(config, state, any(name.startswith("regnet.") for name in state))
    return backend.run(model, x_nchw, output_hidden_states=True)["hidden_states"]


def _assert_within_parity(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        difference = compare_arrays(f"feature_maps[{index}]", b, a)
        assert difference.passed, difference


# ----------------------------------------------------------------------------- core: names, indices, feature_info


@pytest.mark.parametrize("name", list(REFERENCE_ZOO))
def test_feature_info_of_zoo_models_is_the_stem_and_stage_widths_at_strides_2_to_32(name: str):
    config = get_config(name)
    spec = build_model_spec(config)
    every = feature_info(spec, range(len(config.depths) + 1))
    assert [info.name for info in every] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert [info.index for info in every] == [0, 1, 2, 3, 4]
    assert [info.num_chs for info in every] == [config.embedding_size, *config.hidden_sizes]
    assert [info.reduction for info in every] == [2, 4, 8, 16, 32]
    assert feature_info(config) == every[1:]  # default: every stage, no stem; a config is accepted too


def test_feature_info_of_regnety_002_is_timms():
    # timm 1.0's regnety_002 features_only: channels [32, 24, 56, 152, 368], reductions [2, 4, 8, 16, 32].
    info = feature_info(get_config("regnet-y-002"), (0, 1, 2, 3, 4))
    assert [i.num_chs for i in info] == [32, 24, 56, 152, 368]
    assert [i.reduction for i in info] == [2, 4, 8, 16, 32]


def test_reductions_follow_the_stage_strides():
    config = tiny_config("x", downsample_in_first_stage=False)
    assert [i.reduction for i in feature_info(config, (0, 1, 2, 3))] == [2, 2, 4, 8]
    assert stage_names(config) == ("stem", "stage1", "stage2", "stage3")


def test_out_indices_resolve_negative_and_named_outputs():
    spec = build_model_spec(get_config("regnet-x-002"))
    assert default_out_indices(spec) == (1, 2, 3, 4)
    assert resolve_out_indices(spec) == (1, 2, 3, 4)
    assert resolve_out_indices(spec, (-1,)) == (4,)
    assert resolve_out_indices(spec, [0, -3, -1]) == (0, 2, 4)
    assert resolve_out_indices(spec, np.array([1, 3])) == (1, 3)
    assert resolve_out_indices(spec, range(-2, 0)) == (3, 4)
    assert resolve_out_indices(spec, out_features=["stem", "stage3"]) == (0, 3)
    assert resolve_out_indices(spec, (2, 4), ("stage2", "stage4")) == (2, 4)
    assert feature_info(spec, out_features=("stage2",)) == (FeatureInfo("stage2", 2, 56, 8),)


@pytest.mark.parametrize(
    ("out_indices", "out_features", "expected"),
    [
        ((1, 5), None, r"ints in \[-5, 4\].*got 5 in \(1, 5\)"),
        ((-6,), None, r"ints in \[-5, 4\].*got -6"),
        ((1, 1), None, r"once.*entries 0 and 1 both name 'stage1'"),
        ((4, -1), None, r"once.*both name 'stage4'"),
        ((3, 1), None, r"forward order.*got \(3, 1\); expected \(1, 3\)"),
        ((), None, r"at least one output"),
        (2, None, r"got the int 2 .*pass \(2,\) for one output"),
        ((1.0,), None, r"got 1.0 \(float\)"),
        ((True,), None, r"got the bool True"),
        ("stage1", None, r"sequence of ints"),
        (None, ("stage5",), r"names among stem, stage1, stage2, stage3, stage4.*unknown 'stage5'"),
        (None, "stage1", r"for one output pass \('stage1',\)"),
        (None, ("stage2", "stage1"), r"forward order"),
        ((1,), ("stage2",), r"name different outputs \(stage1 vs stage2\)"),
    ],
)
def test_bad_out_indices_are_refused_naming_what_was_expected(out_indices, out_features, expected):
    with pytest.raises(FeatureSelectionError, match=expected) as error:
        resolve_out_indices(get_config("regnet-x-002"), out_indices, out_features)
    assert isinstance(error.value, ValueError)


def test_backbone_spec_stops_at_the_last_chosen_stage():
    spec = build_model_spec(get_config("regnet-x-002"))
    assert [s.width for s in backbone_spec(spec, (1, 2)).stages] == [24, 56]
    assert backbone_spec(spec, (0,)).stages == ()
    assert backbone_spec(spec).stages == spec.stages
    assert backbone_spec(spec, (0, 2)).head.num_labels == 0


def test_backbone_state_checks_the_whole_trunk_and_reads_only_what_is_built():
    config = tiny_config("y")
    spec = build_model_spec(config)
    state = random_state(spec, 0, with_head=True)
    read = []

    def lazy(name, value):
        return LazyTensor(
            value.shape, "float32" if value.dtype == np.float32 else "int64", lambda: read.append(name) or value
        )

    lazies = {name: lazy(name, value) for name, value in state.items()}
    selected = select_backbone_state(lazies, spec, (0, 1))
    expected = [t.name for t in parameter_table(backbone_spec(spec, (0, 1)), with_head=False)]
    assert list(selected) == expected  # RegNetModel names, no head, no stage 2 or 3
    assert all(name.startswith(("embedder.", "encoder.stages.0.")) for name in selected)
    assert read == []  # nothing read yet; the stages left out are never read
    for value in selected.values():
        value.load()
    assert not any(".stages.1." in name or ".stages.2." in name or "classifier" in name for name in read)
    # Strict against the whole trunk: a tensor missing from a stage the backbone does not build is still an error.
    broken = dict(state)
    del broken["regnet.encoder.stages.2.layers.1.layer.0.convolution.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"1 missing: encoder.stages.2.layers.1.layer.0"):
        select_backbone_state(broken, spec, (1,))


def test_backbone_output_is_a_model_output_with_feature_maps_first():
    output = BackboneOutput(feature_maps=("a", "b"), hidden_states=None)
    assert output.feature_maps == ("a", "b") and output.hidden_states is None
    assert output.to_tuple() == (("a", "b"),) and output[0] == ("a", "b")
    assert BackboneOutput(feature_maps=(1,), hidden_states=(0, 1)).to_tuple() == ((1,), (0, 1))
    with pytest.raises(TypeError, match="unknown output fields"):
        BackboneOutput(logits=1)


# ----------------------------------------------------------------------------- every backend: shapes, layouts, equality


def _build(framework: str, config, state, out_indices):
    return _adapter(framework).backbone_from_canonical(config, state, out_indices)


def _native_feature_maps(framework: str, model, x_nchw: np.ndarray) -> list[np.ndarray]:
    """The backbone's feature maps in its own layout (PyTorch NCHW, TensorFlow and Flax NHWC)."""
    if framework == "pt":
        import torch

        with torch.no_grad():
            return [f.numpy() for f in model(torch.from_numpy(x_nchw)).feature_maps]
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    if framework == "tf":
        return [np.asarray(f) for f in model(x_nhwc, training=False).feature_maps]
    module, variables = model
    return [np.asarray(f) for f in module.apply(variables, x_nhwc).feature_maps]


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_feature_maps_have_the_channels_and_reductions_of_feature_info_in_the_backends_layout(framework: str):
    config = get_config("regnet-x-002")
    model = _build(framework, config, random_state(build_model_spec(config), 0, False), None)
    maps = _native_feature_maps(framework, model, ft.pixels(64))
    module = model[0] if framework == "flax" else model
    assert module.out_indices == (1, 2, 3, 4) and module.out_features == ("stage1", "stage2", "stage3", "stage4")
    assert module.channels == (24, 56, 152, 368) and module.reductions == (4, 8, 16, 32)
    assert module.stage_names == ("stem", "stage1", "stage2", "stage3", "stage4")
    expected = [(2, c, 64 // r, 64 // r) for c, r in zip(module.channels, module.reductions, strict=True)]
    if framework != "pt":  # NHWC
        expected = [(b, h, w, c) for b, c, h, w in expected]
    assert [m.shape for m in maps] == expected


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (-1,), (0, 2)], ids=str)
def test_feature_maps_equal_the_full_models_hidden_states(framework: str, out_indices):
    config = tiny_config("y")
    state = random_state(build_model_spec(config), 3, with_head=True)
    x = ft.pixels(35)
    adapter = _adapter(framework)
    model = adapter.backbone_from_canonical(config, state, out_indices)
    got = adapter.run_backbone(model, x, output_hidden_states=True)
    full = _full_hidden_states(config, state, x)
    indices = resolve_out_indices(config, out_indices)
    _assert_within_parity(got["feature_maps"], [full[i] for i in indices])
    _assert_within_parity(got["hidden_states"], full[: indices[-1] + 1])  # stem and the stages it ran
    if framework == "pt":  # the same modules and weights as the full model: bit for bit
        assert all(np.array_equal(a, full[i]) for a, i in zip(got["feature_maps"], indices, strict=True))


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_stages_after_the_last_chosen_output_are_not_built(framework: str):
    config = tiny_config("x")
    state = random_state(build_model_spec(config), 0, with_head=False)
    model = _build(framework, config, state, (1,))
    if framework == "pt":
        names = list(model.state_dict())
    elif framework == "tf":
        names = [v.path for v in model.weights]
    else:
        from regnet_flax.weights import flatten_variables

        names = list(flatten_variables(model[1]))
    assert any("stage" in name and "0" in name for name in names)
    assert not any(marker in name for name in names for marker in ("stages.1", "stage_1", "stages_1", "stages_2"))
    outputs = _adapter(framework).run_backbone(model, ft.pixels(32), output_hidden_states=True)
    assert len(outputs["feature_maps"]) == 1 and len(outputs["hidden_states"]) == 2  # stem and stage 1 only
    stem_only = _build(framework, config, state, (0,))
    assert len(_adapter(framework).run_backbone(stem_only, ft.pixels(32))["feature_maps"]) == 1


# ----------------------------------------------------------------------------- loading checkpoints


def _from_pretrained(framework: str, source, out_indices):
    _needs(framework)
    if framework == "pt":
        from regnet_pt import RegNetBackbone
    elif framework == "tf":
        from regnet_tf import RegNetBackbone
    else:
        from regnet_flax import RegNetBackbone
    return RegNetBackbone.from_pretrained(source, out_indices=out_indices)


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
@pytest.mark.parametrize("with_head", [True, False], ids=["classifier", "trunk"])
def test_a_checkpoint_directory_loads_into_the_backbone(tmp_path: Path, framework: str, with_head: bool):
    config = tiny_config("y")
    state = random_state(build_model_spec(config), 1, with_head=with_head)
    save_checkpoint(
        tmp_path, config, state, architecture="RegNetForImageClassification" if with_head else "RegNetModel"
    )
    model = _from_pretrained(framework, tmp_path, (-2, -1))
    x = ft.pixels(32)
    full = _full_hidden_states(config, state, x)
    _assert_within_parity(_adapter(framework).run_backbone(model, x)["feature_maps"], full[2:])


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_a_timm_file_loads_into_the_backbone(tmp_path: Path, framework: str):
    pytest.importorskip("torch")
    config = tiny_config("y", num_labels=7)
    timm_state, canonical = ft.build("timm", config, seed=2)
    path = ft.save_safetensors(timm_state, tmp_path / "model.safetensors")
    model = _from_pretrained(framework, path, (0, 1, 3))
    x = ft.pixels(33)
    full = _full_hidden_states(config, canonical, x)
    _assert_within_parity(_adapter(framework).run_backbone(model, x)["feature_maps"], [full[0], full[1], full[3]])


@pytest.mark.parametrize("framework", ["pt", "tf", "flax"])
def test_weights_of_another_architecture_are_refused_even_in_stages_not_built(framework: str):
    state = random_state(build_model_spec(tiny_config("y")), 0, with_head=False)
    other = tiny_config("y", hidden_sizes=[8, 16, 32])  # only the last stage differs; a (1,) backbone never builds it
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: encoder.stages.2"):
        _adapter(framework).backbone_from_canonical(other, state, (1,))


@requires("torch")
def test_pytorch_backbone_saves_its_trunk_only_when_every_stage_is_built(tmp_path: Path):
    from regnet_pt import RegNetBackbone, RegNetModel

    config = tiny_config("x")
    state = random_state(build_model_spec(config), 4, with_head=True)
    backbone = RegNetBackbone(config, (0, -1), _skip_init=True).load_canonical_state(state).eval()
    backbone.save_pretrained(tmp_path / "trunk")
    trunk = RegNetModel.from_pretrained(tmp_path / "trunk")
    assert trunk.config.architectures == ["RegNetModel"]
    for name, value in trunk.state_dict().items():
        assert np.array_equal(value.numpy(), backbone.state_dict()[name].numpy()), name
    with pytest.raises(FeatureSelectionError, match=r"stops at stage2 of 3 stages.*reach the last stage"):
        RegNetBackbone(config, (2,)).save_pretrained(tmp_path / "partial")
    with pytest.raises(ValueError, match="no classifier"):
        backbone.load_canonical_state(state, reinit_head=True)


@requires("tensorflow")
def test_keras_backbone_saves_its_trunk_and_round_trips_its_keras_config(tmp_path: Path):
    from regnet_tf import RegNetBackbone, RegNetModel

    config = tiny_config("y")
    state = random_state(build_model_spec(config), 5, with_head=False)
    backbone = RegNetBackbone(config, (-1,), _skip_init=True).load_canonical_state(state)
    backbone.save_pretrained(tmp_path / "trunk")
    reloaded = RegNetModel.from_pretrained(tmp_path / "trunk").canonical_state()
    assert all(np.array_equal(reloaded[name], value) for name, value in backbone.canonical_state().items())
    clone = RegNetBackbone.from_config(RegNetBackbone(config, (0, 2)).get_config())
    assert clone.out_indices == (0, 2) and len(clone.stages) == 2
    with pytest.raises(FeatureSelectionError, match="stops at stage2"):
        clone.save_pretrained(tmp_path / "partial")


# ----------------------------------------------------------------------------- framework features keep working


@requires("torch")
def test_pytorch_return_dict_false_and_hidden_states_in_every_model():
    import torch

    from regnet_pt import RegNetBackbone, RegNetForImageClassification, RegNetModel

    config = tiny_config("y")
    x = torch.from_numpy(ft.pixels(32))
    torch.manual_seed(0)
    with torch.no_grad():
        for model in (RegNetModel(config).eval(), RegNetForImageClassification(config).eval()):
            as_dict = model(x, output_hidden_states=True)
            as_tuple = model(x, output_hidden_states=True, return_dict=False)
            assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict)
            assert len(as_dict.hidden_states) == 4 and as_tuple[-1][0].shape == (2, 8, 16, 16)
            assert all(torch.equal(a, b) for a, b in zip(as_tuple[:-1], list(as_dict.values())[:-1], strict=True))
            assert model(x, return_dict=False)[-1].shape[-1] in (1, 5)  # no hidden states unless asked
        backbone = RegNetBackbone(config, (1, 3)).eval()
        plain = backbone(x, return_dict=False)
        assert isinstance(plain, tuple) and len(plain) == 1 and len(plain[0]) == 2
        maps, hidden = backbone(x, output_hidden_states=True, return_dict=False)
        assert torch.equal(maps[0], hidden[1]) and torch.equal(maps[1], hidden[3]) and len(hidden) == 4


@requires("tensorflow")
def test_keras_backbone_runs_in_tf_function_with_xla_and_in_training_mode():
    import tensorflow as tf

    from regnet_tf import RegNetBackbone

    backbone = RegNetBackbone(tiny_config("y"), (0, 2))
    x = ft.pixels(32).transpose(0, 2, 3, 1).copy()
    eager = backbone(x, output_hidden_states=True)
    compiled = tf.function(lambda v: backbone(v)["feature_maps"], jit_compile=True)(x)
    assert [tuple(m.shape) for m in compiled] == [(2, 16, 16, 8), (2, 4, 4, 16)]
    assert len(eager.hidden_states) == 3
    before = [v.numpy().copy() for v in backbone.non_trainable_weights]
    backbone(x, training=True)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, backbone.non_trainable_weights, strict=True))


@requires("flax")
def test_flax_backbone_jits_and_updates_batch_statistics():
    import jax
    import jax.numpy as jnp

    from regnet_flax import RegNetBackbone, backbone_from_canonical, backbone_to_canonical, init_backbone

    config = tiny_config("y")
    module, variables = backbone_from_canonical(
        config, random_state(build_model_spec(config), 0, False), out_features=("stage1", "stage3")
    )
    assert module.out_indices == (1, 3) and module.clone().out_indices == (1, 3)
    x = jnp.asarray(ft.pixels(32).transpose(0, 2, 3, 1))
    maps = jax.jit(module.apply)(variables, x).feature_maps
    assert [m.shape for m in maps] == [(2, 8, 8, 8), (2, 2, 2, 24)]
    names = list(backbone_to_canonical((module, variables)))
    assert names == [t.name for t in parameter_table(module.spec, with_head=False)]
    # A fresh backbone (stem and stage 1 only) trains its BatchNorm statistics as the full model does.
    fresh, fresh_variables = init_backbone(config, (0, 1), seed=1)
    assert list(fresh_variables["params"]["encoder"]) == ["stages_0"]
    out, updates = jax.jit(lambda v, x: fresh.apply(v, x, train=True, mutable=["batch_stats"]))(fresh_variables, x)
    stem, stage1 = out.feature_maps
    assert stem.shape == (2, 16, 16, 8) and stage1.shape == (2, 8, 8, 8)
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == jax.tree_util.tree_structure(
        fresh_variables["batch_stats"]
    )
    with pytest.raises(TypeError, match="RegNetConfig"):
        RegNetBackbone({"depths": [1]})
