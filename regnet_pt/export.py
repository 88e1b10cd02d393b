"""Export a PyTorch RegNet to ONNX and run the file with onnxruntime.

The file is written by ``torch.onnx.export(..., dynamo=True)``: torch.export captures the
graph and onnxscript translates it (the TorchScript exporter, ``dynamo=False``, is
deprecated since PyTorch 2.9 and slated for removal). Batch, height and width are symbolic,
the weights are stored inside the file (so it must stay under protobuf's 2 GiB), and the
optimiser folds each inference-mode BatchNorm into the convolution before it. Grouped
convolutions become ONNX ``Conv`` with ``group``, squeeze-and-excitation ``ReduceMean``,
``Conv``, ``Relu``, ``Sigmoid`` and ``Mul``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regnet_core.export import INPUT_NAME, ExportError, example_shape, output_names

from .modeling import RegNetPreTrainedModel

ONNX_OPSET = 20  # torch 2.13's default; onnxruntime 1.18+ runs it
MIN_OPSET = 18  # the lowest opset torch's ONNX translation library implements (older would be converted, lossy)


class _Serving(nn.Module):
    """The exported function: pixel values in, logits (or pooled features) and optionally hidden states out."""

    def __init__(self, model: RegNetPreTrainedModel, output_hidden_states: bool) -> None:
        super().__init__()
        self.model = model
        self.with_head = model._with_head
        self.output_hidden_states = output_hidden_states

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values, output_hidden_states=self.output_hidden_states)
        main = outputs.logits if self.with_head else torch.flatten(outputs.pooler_output, 1)
        return (main, *outputs.hidden_states) if self.output_hidden_states else (main,)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notices (optional torchvision ops, pytree deprecations) that concern no RegNet."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def check_opset(opset: int) -> int:
    """``opset`` if the exporter writes it natively and onnx knows it; otherwise ExportError."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"the ONNX opset must be an integer from {MIN_OPSET} to {newest}, got {opset!r}")
    return opset


def export_onnx(
    model: RegNetPreTrainedModel,
    path: str | os.PathLike,
    *,
    opset: int = ONNX_OPSET,
    output_hidden_states: bool = False,
) -> Path:
    """Write ``model`` as one self-contained ONNX file (dynamic batch, height and width); returns the path."""
    check_opset(opset)
    path = Path(path)
    names = output_names(len(model.spec.stages), model._with_head, output_hidden_states)
    example = torch.zeros(example_shape(model.spec, "NCHW"))
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                _Serving(model, output_hidden_states).eval(),
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes={INPUT_NAME: dims},
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    finally:
        model.train(was_training)
    program.save(str(path), external_data=False)
    return path


def load_onnx(path: str | os.PathLike, providers: list[str] | None = None) -> Any:
    """An onnxruntime InferenceSession for an ONNX file (CPU unless ``providers`` says otherwise)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])


def run_onnx(session: Any, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Run an ONNX session on an NCHW batch; {output name: numpy array}."""
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})
    return dict(zip(names, values, strict=True))
