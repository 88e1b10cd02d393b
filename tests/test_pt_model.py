"""PyTorch modules: built from specs, transformers' names, complexity-true, clear input errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from regnet_core import build_model_spec, get_config, model_complexity, parameter_table, random_state  # noqa: E402
from regnet_pt import RegNetForImageClassification, RegNetModel  # noqa: E402
from tests.helpers import SMALL_ZOO, tiny_config  # noqa: E402


def _random_model(config, seed=0, with_head=True):
    cls = RegNetForImageClassification if with_head else RegNetModel
    model = cls(config)
    model.load_canonical_state(random_state(build_model_spec(config), seed, with_head))
    return model.eval()


@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_model_forward_matches_its_spec(name):
    config = get_config(name)
    spec = build_model_spec(config)
    model = RegNetForImageClassification(config).eval()
    state = model.state_dict()
    table = parameter_table(spec)
    assert list(state) == [t.name for t in table]
    assert all(tuple(state[t.name].shape) == t.shape for t in table)
    assert sum(p.numel() for p in model.parameters()) == model_complexity(spec).params
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert out.logits.shape == (1, 1000)
    assert torch.isfinite(out.logits).all()
    expected = [(1, 32, 32, 32)] + [
        (1, s.width, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2)) for i, s in enumerate(spec.stages)
    ]
    assert [tuple(h.shape) for h in out.hidden_states] == expected
    assert out.pooler_output.shape == (1, spec.width, 1, 1)
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])


def _count_macs(model, pixel_values):
    macs = []

    def conv_hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        positions = output.shape[2] * output.shape[3]
        macs.append(k * module.in_channels * module.out_channels * positions // module.groups)
        if module.bias is not None:
            macs.append(module.out_channels * positions)

    def linear_hook(module, inputs, output):
        macs.append(module.in_features * module.out_features + module.out_features)

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(conv_hook)
        elif isinstance(module, torch.nn.Linear):
            module.register_forward_hook(linear_hook)
    with torch.no_grad():
        model(pixel_values)
    return sum(macs)


@pytest.mark.parametrize("name, size", [("regnet-y-008", (96, 80)), ("regnet-x-004", (65, 33))])
def test_complexity_matches_the_operations_the_module_runs(name, size):
    config = get_config(name)
    model = RegNetForImageClassification(config).eval()
    measured = _count_macs(model, torch.randn(1, 3, *size))
    assert measured == model_complexity(build_model_spec(config), size).flops


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_trunk_and_classifier_share_weights_and_outputs(layer_type):
    config = tiny_config(layer_type)
    classifier = _random_model(config)
    trunk = RegNetModel(config)
    trunk.load_canonical_state(classifier.canonical_state())  # classifier weights load into a trunk
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = classifier(x), trunk.eval()(x)
    assert torch.equal(a.pooler_output, b.pooler_output)
    expected = b.pooler_output.flatten(1) @ classifier.classifier[1].weight.T + classifier.classifier[1].bias
    assert torch.allclose(a.logits, expected, atol=1e-6)


def test_return_dict_false_gives_a_tuple():
    model = _random_model(tiny_config())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        as_tuple = model(x, return_dict=False)
        as_dict = model(x)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_dict.logits)
    assert torch.equal(as_dict["logits"], as_dict[0])


def test_channels_last_gives_the_same_logits():
    model = _random_model(get_config("regnet-y-002"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last)).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_pycls_initialisation():
    torch.manual_seed(0)
    model = RegNetForImageClassification(get_config("regnet-x-016"))
    conv = model.regnet.encoder.stages[2].layers[0].layer[1].convolution
    expected_std = (2.0 / (9 * conv.out_channels)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    head = model.classifier[1]
    assert abs(head.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(head.bias) == 0
    bn = model.regnet.embedder.embedder.normalization
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(model.regnet.encoder.stages[0].layers[0].layer[2].normalization.weight == 1)
    zero = RegNetForImageClassification(tiny_config("y"), zero_init_last_bn=True)
    for stage in zero.regnet.encoder.stages:
        for block in stage.layers:
            assert torch.all(block.layer[-1].normalization.weight == 0)
            assert torch.all(block.layer[0].normalization.weight == 1)


def test_se_widths_come_from_the_block_input():
    model = RegNetForImageClassification(tiny_config("y", embedding_size=12))
    first = model.regnet.encoder.stages[0].layers[0].layer[2].attention[0]
    assert first.out_channels == 3  # round(12 * 0.25)
    second = model.regnet.encoder.stages[1].layers[1].layer[2].attention[0]
    assert (second.in_channels, second.out_channels) == (16, 4)


def test_training_forward_updates_every_batchnorm():
    model = _random_model(tiny_config("y"))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.train()
    model(torch.randn(4, 3, 32, 32))
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(after[k.replace("running_mean", "num_batches_tracked")] == 1 for k in before)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: torch.randn(3, 32, 32), "4-D NCHW batch .* got a 3-D tensor"),
        (lambda: torch.randn(2, 4, 32, 32), "3 channels on axis 1 .* got shape \\(2, 4, 32, 32\\)"),
        (lambda: torch.randn(2, 32, 32, 3), "looks like an NHWC batch"),
        (lambda: torch.randint(0, 255, (2, 3, 32, 32)), "floating point, got dtype torch.int64"),
    ],
)
def test_bad_input_is_named(make, message):
    model = RegNetForImageClassification(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(make())


def test_other_channel_counts_follow_num_channels():
    model = RegNetForImageClassification(tiny_config(num_channels=1)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).logits.shape == (2, 5)
    with pytest.raises(ValueError, match="1 channels"):
        model(torch.randn(2, 3, 16, 16))


def test_activation_choice_is_applied():
    config = tiny_config(hidden_act="silu")
    model = _random_model(config)
    assert isinstance(model.regnet.embedder.embedder.activation, torch.nn.SiLU)
    relu = _random_model(tiny_config(hidden_act="relu"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x).logits, relu(x).logits)


def test_zero_labels_gives_pooled_features_as_logits():
    model = _random_model(tiny_config(num_labels=0))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(out.logits, out.pooler_output.flatten(1))
    np.testing.assert_equal(out.logits.shape, (2, 24))


@pytest.mark.parametrize(
    "name", ["regnet-y-320-seer", "regnet-y-1280-seer-in1k", "regnet-y-10b-seer", "regnet-y-10b-seer-in1k"]
)
def test_seer_state_dict_matches_the_table_on_the_meta_device(name):
    from regnet_core import get_entry

    config = get_config(name)
    spec = build_model_spec(config)
    with_head = not get_entry(name).is_trunk
    cls = RegNetForImageClassification if with_head else RegNetModel
    model = cls(config, _skip_init=True)  # built on the meta device: nothing allocated
    assert next(model.parameters()).device.type == "meta"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {t.name: t.shape for t in parameter_table(spec, with_head)}
    assert sum(p.numel() for p in model.parameters()) == model_complexity(spec).params
