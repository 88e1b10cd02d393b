"""The same weights give the same outputs, gradients and BN updates in PyTorch, TensorFlow and Flax.

Weights are seeded random with randomised BN statistics and a non-trivial head, so a wrong
layout, padding or BN buffer changes the outputs; the last tests prove the harness notices.
"""

import numpy as np
import pytest

from regnet_core import build_model_spec, get_config, random_state
from regnet_core.backends import get_backend
from regnet_core.parity import RTOL, check_parity, compare_arrays, format_report, parity, random_input
from tests.helpers import REFERENCE_ZOO, SMALL_ZOO, requires, tiny_config

pytestmark = [requires("torch"), requires("tensorflow"), requires("flax")]
FRAMEWORKS = ("pt", "tf", "flax")
GRADIENT_RTOL = 1e-4


def _check(config, seed=0, image_size=32, batch=2, with_head=True):
    state = random_state(build_model_spec(config), seed, with_head)
    pixels = random_input(batch, image_size, config.num_channels, seed)
    return check_parity(config, state, with_head, FRAMEWORKS, pixels)


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_x_and_y_blocks_match_across_frameworks(layer_type):
    report = _check(tiny_config(layer_type))
    assert report.passed, format_report(report)
    names = [o.name for o in report.pairs[0].outputs]
    assert names[0].startswith("hidden_states[0]") and names[-1] == "logits" and len(names) == 4 + 3


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden_act": "silu"},
        {"hidden_act": "gelu"},
        {"hidden_act": "tanh"},
        {"downsample_in_first_stage": False},
        {"num_channels": 1},
        {"num_labels": 0},
        {"num_labels": 1},
        {"hidden_sizes": [16, 32, 48], "bottleneck_ratio": 0.5},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_config_variants_match_across_frameworks(changes):
    report = _check(tiny_config("y", **changes), image_size=35)
    assert report.passed, format_report(report)


def test_trunks_match_across_frameworks():
    report = _check(tiny_config("y"), with_head=False)
    assert report.passed, format_report(report)
    assert "logits" not in [o.name for o in report.pairs[0].outputs]


@pytest.mark.parametrize("name", list(REFERENCE_ZOO))
def test_zoo_models_match_across_frameworks_at_64(name):
    report = parity(name, FRAMEWORKS, batch=2, image_size=64, seed=0)
    assert report.passed, format_report(report)


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_models_up_to_1_6gf_match_at_224(name):
    report = parity(name, FRAMEWORKS, batch=2, image_size=224, seed=1)
    assert report.passed, format_report(report)


def _relative(reference, other):
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    assert reference.shape == other.shape
    return float(np.max(np.abs(reference - other)) / max(np.max(np.abs(reference)), 1e-30))


@pytest.mark.parametrize(
    "config", [tiny_config("x"), tiny_config("y"), get_config("regnet-y-002")], ids=["x", "y", "y-002"]
)
def test_gradients_match_across_frameworks(config):
    spec = build_model_spec(config)
    state = random_state(spec, 4)
    pixels = random_input(2, 32, config.num_channels, 4)
    labels = np.array([1, 3], np.int64)
    results = {}
    for name in FRAMEWORKS:
        backend = get_backend(name)
        results[name] = backend.gradients(backend.from_canonical(config, state), pixels, labels)
    reference = results["pt"]
    trainable = {name for name, grad in reference["params"].items()}
    for name in ("tf", "flax"):
        other = results[name]
        assert abs(other["loss"] - reference["loss"]) <= 1e-5 * abs(reference["loss"])
        assert _relative(reference["input"], other["input"]) <= GRADIENT_RTOL, name
        assert set(other["params"]) == trainable, name
        worst = max((_relative(reference["params"][k], other["params"][k]), k) for k in trainable)
        assert worst[0] <= GRADIENT_RTOL, (name, worst)


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_one_training_forward_updates_bn_statistics_identically(layer_type):
    config = tiny_config(layer_type)
    state = random_state(build_model_spec(config), 5)
    pixels = random_input(4, 32, 3, 5)
    updated = {
        name: get_backend(name).train_forward(get_backend(name).from_canonical(config, state), pixels)
        for name in FRAMEWORKS
    }
    statistics = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * sum(1 for k in state if k.endswith("num_batches_tracked"))
    for key in statistics:
        assert not np.allclose(updated["pt"][key], state[key]), key  # every BN moved
        for name in ("tf", "flax"):
            assert _relative(updated["pt"][key], updated[name][key]) <= RTOL, (name, key)
    for name in FRAMEWORKS:  # trainable weights untouched by a forward pass
        assert np.array_equal(
            updated[name]["regnet.embedder.embedder.convolution.weight"],
            state["regnet.embedder.embedder.convolution.weight"],
        )


# --- the harness catches the bugs it exists to catch -------------------------------------------------


def _outputs(name, config, state, pixels):
    backend = get_backend(name)
    return backend.run(backend.from_canonical(config, state), pixels)


def test_a_transposed_kernel_layout_is_caught_at_the_stem():
    config = tiny_config("y")
    state = random_state(build_model_spec(config), 6)
    pixels = random_input(2, 32, 3, 6)
    wrong = dict(state)
    key = "regnet.embedder.embedder.convolution.weight"
    wrong[key] = np.ascontiguousarray(np.swapaxes(state[key], 2, 3))  # kh <-> kw, as an HWIO/WHIO mix-up would
    report = check_parity(config, state, True, ("pt", "tf"), pixels)
    assert report.passed
    from regnet_core.parity import compare_outputs

    differences = compare_outputs(_outputs("pt", config, state, pixels), _outputs("tf", config, wrong, pixels))
    first = next(d for d in differences if not d.passed)
    assert first.name.startswith("hidden_states[0]")


def test_a_wrong_bn_buffer_is_caught_in_its_stage():
    config = tiny_config("x")
    state = random_state(build_model_spec(config), 7)
    pixels = random_input(2, 32, 3, 7)
    wrong = dict(state)
    key = "regnet.encoder.stages.1.layers.1.layer.0.normalization.running_var"
    wrong[key] = np.ones_like(state[key])  # as if the running variance were never loaded
    from regnet_core.parity import compare_outputs

    differences = compare_outputs(_outputs("pt", config, state, pixels), _outputs("flax", config, wrong, pixels))
    first = next(d for d in differences if not d.passed)
    assert first.name.startswith("hidden_states[2]")
    assert all(d.passed for d in differences[:2])


def test_asymmetric_same_padding_at_stride_2_is_caught():
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    config = tiny_config("y")
    state = random_state(build_model_spec(config), 8)
    pixels = random_input(2, 32, 3, 8)
    model = get_backend("pt").from_canonical(config, state)

    def same_padding(module, inputs):  # TensorFlow's "SAME" at stride 2 pads right/bottom only
        return (F.pad(inputs[0], (0, 1, 0, 1)),)

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.stride == (2, 2) and module.kernel_size == (3, 3):
            module.padding = (0, 0)
            module.register_forward_pre_hook(same_padding)
    same = get_backend("pt").run(model, pixels)
    reference = _outputs("tf", config, state, pixels)
    assert not compare_arrays("hidden_states[0]", reference["hidden_states"][0], same["hidden_states"][0]).passed
