"""Small strided 1x1 convolutions subsample first (oneDNN corrupts memory on its own strided path there)."""

from __future__ import annotations

import numpy as np
import pytest

from regnet_core import build_model_spec
from regnet_core.rules import SUBSAMPLED_POINTWISE_BELOW_CHANNELS, subsample_before_convolving

from .helpers import requires, tiny_config


def test_the_rule_takes_only_strided_pointwise_convolutions_with_few_input_channels():
    assert subsample_before_convolving(1, 2, 8)
    assert subsample_before_convolving(1, 2, SUBSAMPLED_POINTWISE_BELOW_CHANNELS - 1)
    assert not subsample_before_convolving(1, 2, SUBSAMPLED_POINTWISE_BELOW_CHANNELS)
    assert not subsample_before_convolving(1, 1, 8)
    assert not subsample_before_convolving(3, 2, 8)
    spec = build_model_spec(tiny_config("y"))  # 8-channel stem into a strided projection: the case that crashed
    assert any(
        subsample_before_convolving(1, b.stride, b.input_width)
        for s in spec.stages
        for b in s.blocks
        if b.has_projection
    )


@requires("torch")
@pytest.mark.parametrize("height", [16, 15])
def test_torch_subsampled_convolution_equals_the_strided_one_with_its_gradients(height):
    import torch

    from regnet_pt.modeling import SubsampledPointwiseConv2d

    torch.manual_seed(0)
    plain = torch.nn.Conv2d(8, 12, 1, stride=2, bias=False)
    subsampled = SubsampledPointwiseConv2d(8, 12, 1, stride=2, bias=False)
    subsampled.load_state_dict(plain.state_dict())
    x = torch.randn(3, 8, height, 17)
    results = []
    for conv, layout in ((plain, torch.contiguous_format), (subsampled, torch.channels_last)):
        inputs = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        module = conv.to(memory_format=layout)
        with torch.backends.mkldnn.flags(enabled=conv is subsampled):  # the reference avoids oneDNN's strided path
            out = module(inputs)
            (out * out).sum().backward()
        results.append((out.detach(), inputs.grad, module.weight.grad))
    for reference, got in zip(*results, strict=True):
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)


@requires("torch")
def test_torch_models_use_it_only_where_the_rule_says():
    import torch

    from regnet_pt import RegNetForImageClassification
    from regnet_pt.modeling import SubsampledPointwiseConv2d

    model = RegNetForImageClassification(tiny_config("x"))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            expected = subsample_before_convolving(module.kernel_size[0], module.stride[0], module.in_channels)
            assert isinstance(module, SubsampledPointwiseConv2d) == expected, name
    assert any(isinstance(m, SubsampledPointwiseConv2d) for m in model.modules())
    model.train()
    pixels = torch.randn(3, 3, 32, 32)
    loss = model(pixels, labels=torch.tensor([0, 1, 2])).loss
    loss.backward()  # crashed the process (heap corruption in oneDNN) on an AVX-512 CPU before
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@requires("tensorflow")
def test_tensorflow_subsampled_convolution_equals_the_strided_one():
    import tensorflow as tf

    from regnet_tf.modeling import Convolution

    rng = np.random.default_rng(0)
    layer = Convolution(8, 12, 1, stride=2)
    x = tf.constant(rng.normal(size=(3, 15, 16, 8)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
        loss = tf.reduce_sum(out * out)
    gradient = tape.gradient(loss, layer.kernel).numpy()
    assert layer._subsample
    kernel = layer.kernel.numpy()[0, 0]
    picked = x.numpy()[:, ::2, ::2, :]
    expected = np.einsum("nhwc,co->nhwo", picked, kernel)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gradient[0, 0], np.einsum("nhwc,nhwo->co", picked, 2 * expected), rtol=1e-4, atol=1e-5)
