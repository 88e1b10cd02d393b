"""Flax modules: NHWC outputs, PyTorch's BatchNorm, pycls init, clear input errors, jit, grad and training."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import regnet_flax  # noqa: E402
from regnet_core import ModelOutput, build_model_spec, get_config, random_state  # noqa: E402
from regnet_core.backends import get_backend  # noqa: E402
from regnet_flax import BatchNorm, RegNetForImageClassification, RegNetModel  # noqa: E402
from regnet_flax.weights import flatten_variables, native_table  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def _random_model(config, seed=0, with_head=True):
    return regnet_flax.from_canonical(config, random_state(build_model_spec(config), seed, with_head), with_head)


def _images(batch=2, size=32, channels=3, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype(np.float32))


def _shapes(variables):
    return {path: tuple(np.shape(value)) for path, value in flatten_variables(variables).items()}


@pytest.fixture(scope="module")
def tiny_inits():
    """Real initialisations of tiny models, compiled once for the module (init compiles slowly on CPU)."""
    return {
        ("x", True): get_backend("flax").build(tiny_config("x"), with_head=True, seed=0),
        ("y", False): regnet_flax.init(tiny_config("y"), False, seed=0, zero_init_last_bn=True),
    }


@pytest.fixture(scope="module")
def zoo_init():
    """A real pycls initialisation of a small zoo model."""
    return regnet_flax.init(get_config("regnet-y-002"), seed=0)


@pytest.mark.parametrize("layer_type, with_head", [("x", True), ("y", False)])
def test_initialised_variables_match_the_native_table(tiny_inits, layer_type, with_head):
    module, variables = tiny_inits[layer_type, with_head]
    assert isinstance(module, RegNetForImageClassification if with_head else RegNetModel)
    assert set(variables) == {"params", "batch_stats"}
    assert _shapes(variables) == native_table(build_model_spec(tiny_config(layer_type)), with_head)


@pytest.mark.parametrize("name", ["regnet-y-002", pytest.param("regnet-x-002", marks=pytest.mark.slow)])
def test_zoo_initialisations_match_the_native_table(zoo_init, name):
    _, variables = zoo_init if name == "regnet-y-002" else regnet_flax.init(get_config(name), seed=0)
    assert _shapes(variables) == native_table(build_model_spec(get_config(name)))


def test_pycls_initialisation(zoo_init):
    _, variables = zoo_init
    params, stats = variables["params"], variables["batch_stats"]
    block = params["regnet"]["encoder"]["stages_2"]["layers_0"]
    kernel = np.asarray(block["layer_1"]["convolution"]["kernel"])  # grouped 3x3: (3, 3, in/groups, out)
    expected_std = (2.0 / (9 * kernel.shape[-1])) ** 0.5
    assert abs(kernel.std() / expected_std - 1) < 0.05 and abs(kernel.mean()) < 0.1 * expected_std
    se = block["layer_2"]
    assert all(np.count_nonzero(se[name]["bias"]) == 0 for name in ("attention_0", "attention_2"))
    head = params["classifier_1"]
    assert abs(float(np.std(head["kernel"])) - 0.01) < 0.001 and np.count_nonzero(head["bias"]) == 0
    for path, value in flatten_variables(params).items():
        if path.endswith("normalization/scale"):
            assert np.all(np.asarray(value) == 1), path
        elif path.endswith("normalization/bias"):
            assert np.all(np.asarray(value) == 0), path
    for path, value in flatten_variables(stats).items():
        assert np.all(np.asarray(value) == (1 if path.endswith("var") else 0)), path


def test_zero_init_last_bn_zeroes_each_blocks_last_scale(tiny_inits):
    module, variables = tiny_inits["y", False]
    assert module.zero_init_last_bn
    blocks = 0
    for stage in variables["params"]["encoder"].values():
        for block in stage.values():
            assert np.all(np.asarray(block["layer_3"]["normalization"]["scale"]) == 0)
            assert np.all(np.asarray(block["layer_0"]["normalization"]["scale"]) == 1)
            blocks += 1
    assert blocks == 5


def test_outputs_are_nhwc_with_pytorch_fields():
    config = tiny_config("y")
    spec = build_model_spec(config)
    module, variables = _random_model(config)
    out = module.apply(variables, _images(2, 64), output_hidden_states=True)
    assert isinstance(out, ModelOutput)
    assert list(out) == ["logits", "last_hidden_state", "pooler_output", "hidden_states"]
    expected = [(2, 32, 32, 8)] + [
        (2, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2), s.width) for i, s in enumerate(spec.stages)
    ]
    assert [h.shape for h in out.hidden_states] == expected
    assert out.pooler_output.shape == (2, 1, 1, spec.width)
    assert np.array_equal(out.last_hidden_state, out.hidden_states[-1])
    np.testing.assert_allclose(out.pooler_output, out.last_hidden_state.mean(axis=(1, 2), keepdims=True), rtol=1e-6)
    assert "hidden_states" not in module.apply(variables, _images(2, 64))


def test_trunk_and_classifier_share_weights_and_outputs():
    config = tiny_config("x")
    classifier, classifier_variables = _random_model(config)
    trunk, trunk_variables = regnet_flax.from_canonical(
        config, regnet_flax.to_canonical((classifier, classifier_variables)), False
    )
    x = _images()
    a = classifier.apply(classifier_variables, x)
    b = trunk.apply(trunk_variables, x)
    assert np.array_equal(a.pooler_output, b.pooler_output)
    head = classifier_variables["params"]["classifier_1"]
    np.testing.assert_allclose(a.logits, b.pooler_output.reshape(2, -1) @ head["kernel"] + head["bias"], atol=1e-6)


def test_zero_labels_gives_pooled_features_as_logits():
    module, variables = _random_model(tiny_config(num_labels=0))
    assert "classifier_1" not in variables["params"]
    out = module.apply(variables, _images())
    assert out.logits.shape == (2, 24)
    assert np.array_equal(out.logits, out.pooler_output.reshape(2, -1))


def test_activation_choice_is_applied():
    x = _images()
    logits = {}
    for act in ("relu", "gelu"):
        module, variables = _random_model(tiny_config(hidden_act=act))
        logits[act] = module.apply(variables, x).logits
    assert not np.allclose(logits["relu"], logits["gelu"])
    exact = regnet_flax.activation_function("gelu")(jnp.asarray([1.0]))
    assert abs(float(exact[0]) - 0.8413447460685429) < 1e-6  # x * Phi(x) at 1: the erf form, not tanh


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((32, 32, 3), jnp.float32, "4-D NHWC batch .* got a 3-D tensor"),
        ((2, 32, 32, 4), jnp.float32, "3 channels on axis 3 .* got shape \\(2, 32, 32, 4\\)"),
        ((2, 3, 32, 32), jnp.float32, "looks like an NCHW batch, expected NHWC \\(transpose with \\(0, 2, 3, 1\\)\\)"),
        ((2, 32, 32, 3), jnp.int32, "floating point, got dtype int32"),
    ],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_bad_input_is_named(shape, dtype, message, jit):
    module, variables = _random_model(tiny_config())
    apply = jax.jit(module.apply) if jit else module.apply
    with pytest.raises(ValueError, match=message):
        apply(variables, jnp.zeros(shape, dtype))


def test_other_channel_counts_follow_num_channels():
    module, variables = _random_model(tiny_config(num_channels=1))
    assert module.apply(variables, _images(channels=1, size=16)).logits.shape == (2, 5)
    with pytest.raises(ValueError, match="1 channels"):
        module.apply(variables, _images(size=16))


def test_jit_gives_the_same_outputs_as_eager():
    module, variables = _random_model(tiny_config("y"))
    x = _images()
    eager = module.apply(variables, x, output_hidden_states=True)
    jitted = jax.jit(module.apply, static_argnames="output_hidden_states")(variables, x, output_hidden_states=True)
    assert isinstance(jitted, ModelOutput) and list(jitted) == list(eager)
    np.testing.assert_allclose(jitted.logits, eager.logits, rtol=1e-6, atol=1e-6)
    for got, expected in zip(jitted.hidden_states, eager.hidden_states, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_model_output_is_a_pytree():
    out = ModelOutput(logits=jnp.ones(2), hidden_states=(jnp.zeros(1), jnp.ones(1)))
    leaves, tree = jax.tree_util.tree_flatten(out)
    assert len(leaves) == 3
    rebuilt = jax.tree_util.tree_unflatten(tree, leaves)
    assert isinstance(rebuilt, ModelOutput) and list(rebuilt) == ["logits", "hidden_states"]
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, out)
    assert isinstance(doubled, ModelOutput) and np.array_equal(doubled.logits, 2 * np.ones(2))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(out)[0]]
    assert paths[0] == "['logits']"


def test_grad_flows_to_every_parameter_and_the_input():
    module, variables = _random_model(tiny_config("y"))
    labels = jnp.array([1, 3])

    def loss(params, x):
        return module.apply({**variables, "params": params}, x, labels=labels).loss

    param_grads, input_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], _images())
    assert input_grad.shape == (2, 32, 32, 3) and np.all(np.isfinite(input_grad))
    for path, grad in flatten_variables(param_grads).items():
        assert np.all(np.isfinite(grad)) and np.any(np.asarray(grad) != 0), path


def test_training_forward_updates_every_batchnorm():
    module, variables = _random_model(tiny_config("y"))
    out, updates = module.apply(variables, _images(4), train=True, mutable=["batch_stats"])
    assert set(updates) == {"batch_stats"}
    before, after = flatten_variables(variables["batch_stats"]), flatten_variables(updates["batch_stats"])
    assert set(before) == set(after) and len(after) == 2 * 19  # stem, 5 blocks x 3, 3 projections
    assert all(not np.array_equal(before[path], after[path]) for path in before)
    with pytest.raises(Exception, match="batch_stats"):  # train=True needs the collection mutable
        module.apply(variables, _images(4), train=True)


def test_training_needs_more_than_one_value_per_channel():
    module, variables = _random_model(tiny_config("y"))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        # The tiny model's stride is 16: its last stage sees 1 x 1 positions of 1 image.
        module.apply(variables, _images(1, 16), train=True, mutable=["batch_stats"])


def _batchnorm_case(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(4, 5, 6, 3)) * 2 + 3).astype(np.float32)
    variables = {
        "params": {"scale": rng.uniform(0.5, 1.5, 3).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)},
        "batch_stats": {
            "mean": rng.normal(size=3).astype(np.float32),
            "var": rng.uniform(0.5, 1.5, 3).astype(np.float32),
        },
    }
    return x, variables


def test_batchnorm_matches_pytorch_in_training_and_inference():
    torch = pytest.importorskip("torch")
    x, variables = _batchnorm_case()
    reference = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(variables["params"]["scale"]))
        reference.bias.copy_(torch.from_numpy(variables["params"]["bias"]))
        reference.running_mean.copy_(torch.from_numpy(variables["batch_stats"]["mean"]))
        reference.running_var.copy_(torch.from_numpy(variables["batch_stats"]["var"]))
        expected_eval = reference.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        expected_train = reference.train()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    bn = BatchNorm()
    np.testing.assert_allclose(bn.apply(variables, x), expected_eval, rtol=1e-5, atol=1e-5)
    out, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, expected_train, rtol=1e-5, atol=1e-5)
    # The running variance moves towards the unbiased batch variance (n / (n - 1)), as PyTorch's does.
    np.testing.assert_allclose(updates["batch_stats"]["mean"], reference.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], reference.running_var.numpy(), rtol=1e-6)
    unbiased = x.reshape(-1, 3).var(axis=0, ddof=1)
    np.testing.assert_allclose(
        updates["batch_stats"]["var"], 0.9 * variables["batch_stats"]["var"] + 0.1 * unbiased, rtol=1e-5
    )


def test_batchnorm_axis_name_gives_statistics_of_the_whole_batch():
    x, variables = _batchnorm_case(seed=1)
    whole_out, whole = BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])

    def per_device(shard):
        return BatchNorm(axis_name="devices").apply(variables, shard, train=True, mutable=["batch_stats"])

    # vmap with an axis name stands in for pmap across two devices, each holding half the batch.
    sharded_out, sharded = jax.vmap(per_device, axis_name="devices")(x.reshape(2, 2, 5, 6, 3))
    np.testing.assert_allclose(sharded_out.reshape(x.shape), whole_out, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        for device in range(2):
            np.testing.assert_allclose(sharded["batch_stats"][name][device], whole["batch_stats"][name], rtol=1e-6)


def test_a_few_sgd_steps_reduce_the_loss(tiny_inits):
    optax = pytest.importorskip("optax")
    module, variables = tiny_inits["x", True]
    x = _images(5, 16)
    labels = jnp.array([0, 1, 2, 3, 4])
    optimizer = optax.sgd(0.1, momentum=0.9)

    @jax.jit
    def step(params, batch_stats, opt_state):
        def loss_fn(params):
            out, updates = module.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True, labels=labels, mutable=["batch_stats"]
            )
            return out.loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(8):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_importing_the_flax_backend_loads_no_other_framework():
    code = (
        "import sys, regnet_flax, regnet_flax.backend;"
        "print(','.join(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
