"""The PyTorch backend behind regnet_core.backends' interface (used by the CLI and parity)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from regnet_core.config import RegNetConfig

from .modeling import RegNetForImageClassification, RegNetModel, RegNetPreTrainedModel

FRAMEWORK = "pt"
LAYOUT = "NCHW"


def _class(with_head: bool) -> type[RegNetPreTrainedModel]:
    return RegNetForImageClassification if with_head else RegNetModel


def build(config: RegNetConfig, with_head: bool = True, seed: int = 0) -> RegNetPreTrainedModel:
    """A new pycls-initialised model, seeded."""
    torch.manual_seed(seed)
    return _class(with_head)(config).eval()


def from_canonical(
    config: RegNetConfig, state: Mapping[str, np.ndarray], with_head: bool = True
) -> RegNetPreTrainedModel:
    """A model in eval mode holding canonical weights."""
    model = _class(with_head)(config, _skip_init=True)
    return model.load_canonical_state(dict(state)).eval()


def to_canonical(model: RegNetPreTrainedModel) -> dict[str, np.ndarray]:
    """Canonical numpy weights of a model."""
    return model.canonical_state()


def run(model: RegNetPreTrainedModel, pixel_values: np.ndarray, output_hidden_states: bool = True) -> dict[str, object]:
    """Forward an NCHW numpy batch; outputs as numpy (NCHW), hidden states as a list."""
    with torch.no_grad():
        outputs = model(torch.from_numpy(np.ascontiguousarray(pixel_values)), output_hidden_states=output_hidden_states)
    result: dict[str, object] = {}
    for name, value in outputs.items():
        if name == "hidden_states":
            result[name] = [h.numpy() for h in value]
        else:
            result[name] = value.numpy()
    return result


def gradients(model: RegNetForImageClassification, pixel_values: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Cross-entropy loss (eval-mode BN) and its gradients: input (NCHW) and every trainable canonical tensor."""
    model.eval()
    model.zero_grad(set_to_none=True)
    inputs = torch.from_numpy(np.array(pixel_values, np.float32)).requires_grad_(True)
    loss = model(inputs, labels=torch.from_numpy(np.asarray(labels, np.int64))).loss
    loss.backward()
    params = {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return {"loss": loss.item(), "input": inputs.grad.numpy().copy(), "params": params}


def train_forward(model: RegNetPreTrainedModel, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Canonical state after one training-mode forward (BN running statistics updated); model back in eval."""
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.array(pixel_values, np.float32)))
    model.eval()
    return model.canonical_state()
