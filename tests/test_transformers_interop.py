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
