"""Checkpoints move both ways between transformers' RegNet and ours with identical logits.

Our models keep their weights channels_last (the fast layout on CPU); oneDNN computes a
convolution in another order in each memory format, so bit-for-bit comparisons run
transformers in the same memory format, and one test compares the NCHW defaults at the
parity tolerance and bit for bit once ours is moved to NCHW.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from regnet_core import build_model_spec, get_config, random_state  # noqa: E402
from regnet_pt import RegNetForImageClassification, RegNetModel  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def _hf_config(config):
    fields = {k: v for k, v in config.to_dict().items() if k not in ("se_ratio", "bottleneck_ratio", "model_type")}
    return transformers.RegNetConfig(**fields)


def _same_layout(hf_model):
    """transformers' model with its weights in our memory format (channels_last): the same oneDNN kernels."""
    return hf_model.to(memory_format=torch.channels_last)


def _randomise(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(
                    0.5 + noise if "running_var" in name or name.endswith("normalization.weight") else noise - 0.5
                )


@pytest.mark.parametrize(
    "config", [tiny_config("x"), tiny_config("y"), get_config("regnet-y-002")], ids=["x", "y", "y-002"]
)
def test_a_directory_saved_by_transformers_loads_with_identical_logits(tmp_path, config):
    hf_model = transformers.RegNetForImageClassification(_hf_config(config)).eval()
    _randomise(hf_model, 1)
    hf_model.save_pretrained(tmp_path)
    ours = RegNetForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    _same_layout(hf_model)
    with torch.no_grad():
        expected = hf_model(x, output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
    assert torch.equal(got.logits, expected.logits)
    for mine, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_our_directory_loads_in_transformers(tmp_path, layer_type):
    config = tiny_config(layer_type)
    ours = RegNetForImageClassification(config)
    ours.load_canonical_state(random_state(build_model_spec(config), 3))
    ours.eval().save_pretrained(tmp_path, max_shard_size="20KB")
    hf_model = transformers.RegNetForImageClassification.from_pretrained(tmp_path).eval()
    assert dict(hf_model.state_dict()).keys() == ours.state_dict().keys()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(_same_layout(hf_model)(x).logits, ours(x).logits)
        for name, tensor in ours.state_dict().items():
            assert torch.equal(hf_model.state_dict()[name], tensor), name


def test_transformers_trunk_loads_into_our_trunk(tmp_path):
    config = tiny_config("y")
    hf_model = transformers.RegNetModel(_hf_config(config)).eval()
    _randomise(hf_model, 2)
    hf_model.save_pretrained(tmp_path)
    ours = RegNetModel.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x).pooler_output, _same_layout(hf_model)(x).pooler_output)


def test_nchw_defaults_agree_and_are_identical_in_the_same_layout(tmp_path):
    config = tiny_config("y")
    hf_model = transformers.RegNetForImageClassification(_hf_config(config)).eval()  # NCHW weights
    _randomise(hf_model, 4)
    hf_model.save_pretrained(tmp_path)
    ours = RegNetForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = hf_model(x).logits
        fast = ours(x).logits
        torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        nchw = ours.to(memory_format=torch.contiguous_format)(x).logits
        assert torch.equal(nchw, expected)


# ----------------------------------------------------------------------------- every variant against transformers
#
# The parity tests compare our backends with each other; these compare each config variant
# that transformers' PyTorch RegNet can express with transformers itself: its weights
# (random, with randomised BN statistics and head) loaded into ours must give the same
# outputs bit for bit in the same memory format. TensorFlow and Flax follow from the parity
# tests, which run the same variants against our PyTorch model.

VARIANTS = {
    "x-relu": tiny_config("x"),
    "y-relu": tiny_config("y"),
    "silu": tiny_config("y", hidden_act="silu"),
    "swish": tiny_config("x", hidden_act="swish"),
    "gelu": tiny_config("y", hidden_act="gelu"),
    "tanh": tiny_config("x", hidden_act="tanh"),
    "sigmoid": tiny_config("y", hidden_act="sigmoid"),
    "no-first-downsampling": tiny_config("y", downsample_in_first_stage=False),
    "one-channel": tiny_config("x", num_channels=1),
    "one-label": tiny_config("y", num_labels=1),
    "featureless-head": tiny_config("y", num_labels=0),
}


def _hf_variant(config, trunk=False):
    """transformers' model for our config, with randomised weights and our downsampling choice."""
    hf_config = _hf_config(config)
    # transformers' RegNetConfig.__init__ overwrites downsample_in_first_stage with True
    # (pinned below); its modeling code honours the attribute, so set it afterwards.
    hf_config.downsample_in_first_stage = config.downsample_in_first_stage
    hf_class = transformers.RegNetModel if trunk else transformers.RegNetForImageClassification
    hf_model = hf_class(hf_config).eval()
    _randomise(hf_model, 7)
    return hf_model


@pytest.mark.parametrize("config", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_variant_equals_transformers(tmp_path, config):
    hf_model = _hf_variant(config)
    hf_model.save_pretrained(tmp_path)
    ours = RegNetForImageClassification.from_pretrained(tmp_path)
    assert ours.config.hidden_act == config.hidden_act
    assert ours.config.downsample_in_first_stage == config.downsample_in_first_stage
    x = torch.randn(2, config.num_channels, 37, 37, generator=torch.Generator().manual_seed(3))
    _same_layout(hf_model)
    with torch.no_grad():
        expected = hf_model(x, output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
    assert got.logits.shape == expected.logits.shape
    assert torch.equal(got.logits, expected.logits)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert mine.shape == theirs.shape
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("name", ["y-relu", "no-first-downsampling", "one-channel"])
def test_every_trunk_variant_equals_transformers(tmp_path, name):
    config = VARIANTS[name]
    hf_model = _hf_variant(config, trunk=True)
    hf_model.save_pretrained(tmp_path)
    ours = RegNetModel.from_pretrained(tmp_path)
    x = torch.randn(2, config.num_channels, 33, 33, generator=torch.Generator().manual_seed(4))
    _same_layout(hf_model)
    with torch.no_grad():
        expected = hf_model(x, output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
    for name in ("last_hidden_state", "pooler_output"):
        assert torch.equal(got[name], expected[name]), name
    for mine, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert torch.equal(mine, theirs)


def test_first_stage_downsampling_changes_the_output_size_as_in_transformers():
    # Without downsampling in stage 1 every later feature map is twice as large (stride 16, not 32).
    config = VARIANTS["no-first-downsampling"]
    hf_model = _hf_variant(config, trunk=True)
    with torch.no_grad():
        shapes = [tuple(h.shape) for h in hf_model(torch.randn(1, 3, 64, 64), output_hidden_states=True).hidden_states]
    assert shapes == [(1, 8, 32, 32), (1, 8, 32, 32), (1, 16, 16, 16), (1, 24, 8, 8)]
    ours = RegNetModel(config).eval()
    with torch.no_grad():
        assert [
            tuple(h.shape) for h in ours(torch.randn(1, 3, 64, 64), output_hidden_states=True).hidden_states
        ] == shapes


def test_transformers_config_ignores_downsample_in_first_stage():
    """Pinned so that a change in transformers is noticed: its __init__ always sets True, also when reloading.

    Our config keeps False; a checkpoint saved with False therefore runs in transformers
    with a stride-2 first stage (same weight shapes, different outputs). See docs/RELIABILITY.md.
    """
    assert transformers.RegNetConfig(downsample_in_first_stage=False).downsample_in_first_stage is True


# transformers' labels= loss is the reference for the loss rule: which loss problem_type and the
# labels' dtype choose, the ignored target -100, and how num_labels == 1 squeezes.
LOSS_CASES = [
    (5, None, torch.tensor([0, 3, 4]), "integer labels: cross-entropy"),
    (5, None, torch.tensor([0, -100, 4]), "target -100 left out"),
    (5, None, torch.tensor([1, 2, 0], dtype=torch.int32), "int32 labels: cross-entropy"),
    (5, None, torch.tensor([[0.0, 1, 1, 0, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0]]), "float labels: multi-label"),
    (1, None, torch.tensor([0.5, -1.0, 2.0]), "one label: regression"),
    (1, None, torch.tensor([[0.5], [-1.0], [2.0]]), "one label, 2-D labels: regression"),
    (3, "regression", torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]), "explicit regression"),
    (3, "single_label_classification", torch.tensor([2, 0, 1]), "explicit single-label"),
    (3, "multi_label_classification", torch.tensor([[0.0, 1, 1], [1, 0, 0], [1, 1, 1]]), "explicit multi-label"),
]


@pytest.mark.parametrize("num_labels, problem_type, labels, _", LOSS_CASES, ids=[case[-1] for case in LOSS_CASES])
def test_labels_loss_equals_transformers(tmp_path, num_labels, problem_type, labels, _):
    config = tiny_config("y", num_labels=num_labels, problem_type=problem_type)
    hf_model = _hf_variant(config)
    hf_model.save_pretrained(tmp_path)
    ours = RegNetForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    _same_layout(hf_model)
    # transformers picks cross-entropy for int32 labels too, but torch's kernel then wants int64.
    hf_labels = labels.long() if labels.dtype == torch.int32 else labels
    with torch.no_grad():
        expected = hf_model(x, labels=hf_labels).loss
        got = ours(x, labels=labels).loss
    assert torch.isfinite(expected)
    assert torch.equal(got, expected)
