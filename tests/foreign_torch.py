"""Checkpoint files of timm, torchvision and pycls, built in test code from a RegNetConfig.

Written independently of ``regnet_core.formats``: every key name below is spelled out here
from the libraries' documented layouts (timm 1.0 ``timm/models/regnet.py``, torchvision
``torchvision/models/regnet.py``, pycls ``pycls/models/anynet.py``), and the values are
``regnet_core.random_state`` (non-trivial BN statistics and head) placed by walking the
model spec. ``reference_logits`` runs the original canonical weights in our PyTorch model,
which is the source model the converted checkpoints must match.

Per block ``s{i}.b{j}`` (stages and blocks from 0 here):

===========  ============================  =========================================  ==========================
role         timm                          torchvision                                pycls
===========  ============================  =========================================  ==========================
stem conv    stem.conv.weight              stem.0.weight                              stem.conv.weight
stem BN      stem.bn.*                     stem.1.*                                   stem.bn.*
block        s{i+1}.b{j+1}.                trunk_output.block{i+1}.block{i+1}-{j}.    s{i+1}.b{j+1}.
shortcut     downsample.conv.weight / .bn  proj.0.weight / proj.1.*                   proj.weight / bn.*
conv a       conv1.conv.weight / conv1.bn  f.a.0.weight / f.a.1.*                     f.a.weight / f.a_bn.*
conv b       conv2.conv.weight / conv2.bn  f.b.0.weight / f.b.1.*                     f.b.weight / f.b_bn.*
SE           se.fc1.* / se.fc2.*           f.se.fc1.* / f.se.fc2.*                    f.se.f_ex.0.* / f.se.f_ex.2.*
conv c       conv3.conv.weight / conv3.bn  f.c.0.weight / f.c.1.*                     f.c.weight / f.c_bn.*
classifier   head.fc.*  (absent: no head)  fc.*  (zero rows: no head)                 head.fc.*  (zero rows)
===========  ============================  =========================================  ==========================

timm lists a block's shortcut last; torchvision and pycls list it first.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from regnet_core import RegNetConfig, build_model_spec, random_state
from regnet_core.safetensors_io import write_safetensors

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# library -> role -> (conv weight name, BN prefix) inside a block; "se" -> (reduce prefix, expand prefix)
_ROLES = {
    "timm": {
        "a": ("conv1.conv.weight", "conv1.bn."),
        "b": ("conv2.conv.weight", "conv2.bn."),
        "se": ("se.fc1.", "se.fc2."),
        "c": ("conv3.conv.weight", "conv3.bn."),
        "proj": ("downsample.conv.weight", "downsample.bn."),
    },
    "torchvision": {
        "a": ("f.a.0.weight", "f.a.1."),
        "b": ("f.b.0.weight", "f.b.1."),
        "se": ("f.se.fc1.", "f.se.fc2."),
        "c": ("f.c.0.weight", "f.c.1."),
        "proj": ("proj.0.weight", "proj.1."),
    },
    "pycls": {
        "a": ("f.a.weight", "f.a_bn."),
        "b": ("f.b.weight", "f.b_bn."),
        "se": ("f.se.f_ex.0.", "f.se.f_ex.2."),
        "c": ("f.c.weight", "f.c_bn."),
        "proj": ("proj.weight", "bn."),
    },
}
_STEM = {
    "timm": ("stem.conv.weight", "stem.bn."),
    "torchvision": ("stem.0.weight", "stem.1."),
    "pycls": ("stem.conv.weight", "stem.bn."),
}
_HEAD = {"timm": "head.fc.", "torchvision": "fc.", "pycls": "head.fc."}
_ORDER = {
    "timm": ("a", "b", "se", "c", "proj"),
    "torchvision": ("proj", "a", "b", "se", "c"),
    "pycls": ("proj", "a", "b", "se", "c"),
}


def _block_prefix(library: str, stage: int, block: int) -> str:
    if library == "torchvision":
        return f"trunk_output.block{stage + 1}.block{stage + 1}-{block}."
    return f"s{stage + 1}.b{block + 1}."


def canonical_state(config: RegNetConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded canonical (transformers-named) weights for a config, with the head when it has classes."""
    state = random_state(build_model_spec(config), seed=seed, with_head=config.num_labels > 0)
    counter = np.random.default_rng(seed + 100)
    for name in state:
        if name.endswith("num_batches_tracked"):
            state[name] = np.asarray(counter.integers(1, 10_000), np.int64)
    return state


def foreign_state(library: str, config: RegNetConfig, canonical: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The library's state dict (its names, its key order) holding the canonical weights."""
    spec = build_model_spec(config)
    with_head = config.num_labels > 0
    base = "regnet." if with_head else ""
    out: dict[str, np.ndarray] = OrderedDict()

    def bn(prefix: str, canonical_prefix: str) -> None:
        for part in BN:
            out[prefix + part] = canonical[canonical_prefix + part]

    stem_conv, stem_bn = _STEM[library]
    out[stem_conv] = canonical[f"{base}embedder.embedder.convolution.weight"]
    bn(stem_bn, f"{base}embedder.embedder.normalization.")
    for s, stage in enumerate(spec.stages):
        for b, block in enumerate(stage.blocks):
            prefix = _block_prefix(library, s, b)
            layer = f"{base}encoder.stages.{s}.layers.{b}."
            modules = {"a": "layer.0.", "b": "layer.1.", "c": "layer.3." if block.has_se else "layer.2."}
            modules["proj"] = "shortcut."
            for role in _ORDER[library]:
                if role == "se":
                    if block.has_se:
                        reduce, expand = _ROLES[library]["se"]
                        for part in ("weight", "bias"):
                            out[prefix + reduce + part] = canonical[f"{layer}layer.2.attention.0.{part}"]
                            out[prefix + expand + part] = canonical[f"{layer}layer.2.attention.2.{part}"]
                    continue
                if role == "proj" and not block.has_projection:
                    continue
                conv, norm = _ROLES[library][role]
                out[prefix + conv] = canonical[f"{layer}{modules[role]}convolution.weight"]
                bn(prefix + norm, f"{layer}{modules[role]}normalization.")
    head = _HEAD[library]
    if with_head:
        out[head + "weight"] = canonical["classifier.1.weight"]
        out[head + "bias"] = canonical["classifier.1.bias"]
    elif library in ("torchvision", "pycls"):  # num_classes=0 keeps an empty Linear
        out[head + "weight"] = np.zeros((0, spec.stages[-1].width), np.float32)
        out[head + "bias"] = np.zeros((0,), np.float32)
    return out


def build(library: str, config: RegNetConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the library's state dict, the canonical weights it holds)."""
    canonical = canonical_state(config, seed)
    return foreign_state(library, config, canonical), canonical


def to_torch(state: dict[str, np.ndarray]) -> OrderedDict:
    """The same state dict as torch tensors."""
    import torch

    return OrderedDict((name, torch.from_numpy(np.array(value))) for name, value in state.items())


def save_torch(state: dict[str, np.ndarray], path: Path, wrapper: str | None = None, legacy: bool = False) -> Path:
    """torch.save the state dict (under ``{wrapper: ...}`` with a training-checkpoint epoch when given)."""
    import torch

    obj = to_torch(state)
    if wrapper is not None:
        obj = {wrapper: obj, "epoch": 7}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def save_safetensors(state: dict[str, np.ndarray], path: Path, dtype: str = "float32") -> Path:
    """A safetensors file of the state dict, floating tensors stored as ``dtype``."""
    dtypes = {name: dtype for name, value in state.items() if np.asarray(value).dtype.kind == "f"}
    write_safetensors(path, state, dtypes)
    return path


def rounded(state: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The values a ``dtype`` file holds, as float32 (float16 / bfloat16 round to nearest even)."""
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        if value.dtype.kind != "f" or dtype == "float32":
            out[name] = value
        elif dtype == "float16":
            out[name] = value.astype(np.float16).astype(np.float32)
        else:
            bits = value.astype(np.float32).view(np.uint32)
            bits = (bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) & np.uint32(0xFFFF0000)
            out[name] = bits.view(np.float32)
    return out


PYCLS_CFG = """\
BN:
  EPS: {eps}
  MOM: 0.1
  ZERO_INIT_FINAL_GAMMA: false
MODEL:
  LOSS_FUN: cross_entropy
  NUM_CLASSES: {num_classes}
  TYPE: {model_type}
NUM_GPUS: 8
OPTIM:
  BASE_LR: 0.8
  MOMENTUM: 0.9
REGNET:
  BLOCK_TYPE: res_bottleneck_block
  BOT_MUL: 1.0
  DEPTH: 13
  GROUP_W: 8
  SE_ON: {se_on}
  SE_R: 0.25
  STEM_TYPE: simple_stem_in
  STEM_W: 32
  STRIDE: 2
  W0: 24
  WA: 36.44
  WM: 2.49
"""


def pycls_checkpoint(
    state: dict[str, np.ndarray],
    config: RegNetConfig,
    path: Path,
    *,
    legacy: bool = False,
    ema: dict[str, np.ndarray] | None = None,
    test_err: float | None = None,
    ema_err: float | None = None,
    model_type: str = "regnet",
    eps: str = "1.0e-05",
) -> Path:
    """A .pyth file as pycls's save_checkpoint writes it (epoch, model_state, optimizer_state, cfg; main's EMA keys)."""
    import torch

    model_state = to_torch(state)
    params = [torch.nn.Parameter(value.clone().float()) for value in model_state.values() if value.is_floating_point()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    cfg = PYCLS_CFG.format(
        eps=eps, num_classes=config.num_labels, model_type=model_type, se_on=str(config.layer_type == "y").lower()
    )
    checkpoint = {"epoch": 99, "model_state": model_state, "optimizer_state": optimizer.state_dict(), "cfg": cfg}
    if ema is not None:
        checkpoint.update(ema_state=to_torch(ema), test_err=test_err, ema_err=ema_err)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def source_model(config: RegNetConfig, canonical: dict[str, np.ndarray]):
    """Our PyTorch model holding the canonical weights (the trunk class when the config has no classes)."""
    from regnet_pt import RegNetForImageClassification, RegNetModel

    model_class = RegNetForImageClassification if config.num_labels > 0 else RegNetModel
    model = model_class(config)
    model.load_canonical_state(canonical)
    return model.eval()


def run_model(model, pixel_values: np.ndarray) -> np.ndarray:
    """Logits (pooled features for a trunk) of one of our PyTorch models on an NCHW batch, as (batch, n)."""
    import torch

    with torch.no_grad():
        outputs = model(torch.from_numpy(np.ascontiguousarray(pixel_values, np.float32)))
    value = outputs.logits if hasattr(outputs, "logits") and outputs.logits is not None else outputs.pooler_output
    return value.numpy().reshape(pixel_values.shape[0], -1)


def reference_logits(config: RegNetConfig, canonical: dict[str, np.ndarray], pixel_values: np.ndarray) -> np.ndarray:
    """The source model's output: the canonical weights in our PyTorch model."""
    return run_model(source_model(config, canonical), pixel_values)


def pixels(size: int = 32, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A seeded NCHW batch."""
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def assert_close(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """Max |difference| within ``rtol`` of the largest |expected| value (the project's logits tolerance)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-30)
    difference = float(np.abs(got - expected).max())
    assert difference <= rtol * scale, f"max |diff| {difference:.3e} > {rtol:g} x {scale:.3e}"
