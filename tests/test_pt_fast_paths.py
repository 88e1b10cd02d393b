"""PyTorch fast paths: channels_last weights by default (NCHW in and out), and opt-in BatchNorm folding."""

import pytest

torch = pytest.importorskip("torch")

from regnet_core import build_model_spec, random_state  # noqa: E402
from regnet_core.parity import LOGITS_ATOL, RTOL  # noqa: E402
from regnet_pt import RegNetBackbone, RegNetForImageClassification, RegNetModel  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

CL = torch.channels_last


def _conv_weights(model):
    return [p for p in model.parameters() if p.dim() == 4]


def _loaded(layer_type="y", seed=0):
    config = tiny_config(layer_type)
    model = RegNetForImageClassification(config).eval()
    model.load_canonical_state(random_state(build_model_spec(config), seed))  # randomised BN statistics
    return model


@pytest.mark.parametrize("build", ["init", "from_pretrained", "trunk", "backbone"])
def test_weights_are_channels_last_and_outputs_plain_nchw(tmp_path, build):
    config = tiny_config("y")
    if build == "init":
        model = RegNetForImageClassification(config)
    elif build == "trunk":
        model = RegNetModel(config)
    elif build == "backbone":
        model = RegNetBackbone(config)
    else:
        _loaded().save_pretrained(tmp_path)
        model = RegNetForImageClassification.from_pretrained(tmp_path)
    assert all(w.is_contiguous(memory_format=CL) for w in _conv_weights(model))
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 40, 40), output_hidden_states=True)
    maps = list(out.hidden_states) + [v for k, v in out.items() if k in ("last_hidden_state", "pooler_output")]
    maps += list(out.get("feature_maps") or ())
    for value in maps:
        assert value.is_contiguous(), value.stride()  # ordinary NCHW memory: .view works
        value.view(value.shape[0], value.shape[1], -1)


def test_saved_weights_do_not_depend_on_the_memory_format(tmp_path):
    model = _loaded()
    model.save_pretrained(tmp_path / "cl")
    model.to(memory_format=torch.contiguous_format).save_pretrained(tmp_path / "nchw")
    assert (tmp_path / "cl" / "model.safetensors").read_bytes() == (
        tmp_path / "nchw" / "model.safetensors"
    ).read_bytes()


def test_opting_out_of_channels_last_gives_the_same_outputs():
    model = _loaded()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        fast = model(x).logits
        model.to(memory_format=torch.contiguous_format)
        assert all(w.is_contiguous() for w in _conv_weights(model))
        plain = model(x).logits
    torch.testing.assert_close(fast, plain, rtol=0, atol=RTOL * float(plain.abs().max()))


def _assert_outputs_close(got, expected):
    for name in ("logits", "pooler_output", "last_hidden_state"):
        scale = float(expected[name].abs().max())
        atol = max(LOGITS_ATOL, RTOL * scale) if name == "logits" else RTOL * scale
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=atol)
    for mine, reference in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=RTOL * float(reference.abs().max()))


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_folded_batchnorm_keeps_every_output_within_the_parity_tolerance(layer_type):
    model = _loaded(layer_type)
    x = torch.randn(3, 3, 48, 48)
    with torch.inference_mode():
        expected = model(x, output_hidden_states=True)
        folded = model.fold_batchnorm()(x, output_hidden_states=True)
    assert set(folded) == set(expected)
    _assert_outputs_close(folded, expected)
    with torch.no_grad():  # a different result proves the folded path ran
        assert not torch.equal(model(x).logits, model.fold_batchnorm(False)(x).logits)


def test_folding_follows_weight_changes_and_steps_aside_for_training_autograd_and_hooks():
    model = _loaded().fold_batchnorm()
    reference = _loaded().fold_batchnorm(False)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        model(x)  # fills the cache
        for m in (model, reference):  # change running statistics and a conv weight in place
            m.regnet.embedder.embedder.normalization.running_var.mul_(1.7)
            m.regnet.encoder.stages[0].layers[0].layer[1].convolution.weight.mul_(-0.5)
        _assert_outputs_close(model(x, output_hidden_states=True), reference(x, output_hidden_states=True))
    # with autograd on, or in training mode, the unfolded path runs: bit-identical to the reference
    assert torch.equal(model(x).logits, reference(x).logits)
    model.train(), reference.train()
    assert torch.equal(model(x).logits, reference(x).logits)
    model.eval(), reference.eval()
    calls = []
    conv = model.regnet.embedder.embedder.convolution
    handle = conv.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert len(calls) == 1  # the hook saw the convolution run


def test_folded_state_dict_is_unchanged(tmp_path):
    model = _loaded()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.fold_batchnorm()(torch.randn(1, 3, 32, 32))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
