"""Checkpoint files of vissl (SEER) and Keras 2 Applications RegNets, built in test code from a RegNetConfig.

Written independently of ``regnet_core.formats``: the names are spelled out here from the
libraries' own layouts (vissl 0.1.6 / ClassyVision 0.7.0 ``anynet.py`` + ``regnet_fsdp.py``
as vissl saves them; tf_keras 2.21 ``applications/regnet.py`` and Keras 2's HDF5 writer),
and the values are the canonical weights of ``foreign_torch.canonical_state`` placed by
walking the model spec.

vissl, per block (stage s and block i from 0; ``parts`` adds the 10B's part level)::

    _feature_blocks.conv1.stem.0.weight / .stem.1.*                         stem conv / BN
    _feature_blocks.res{s+2}[.block{s+1}-part{k}].block{s+1}-{i}.            block prefix
        proj.weight, bn.*                                                   shortcut (block 0)
        f.a.0.weight, f.a.1.*, f.b.0.weight, f.b.1.*                        1x1 a, grouped 3x3 b
        f.se.excitation.0.{weight,bias}, f.se.excitation.2.{weight,bias}    SE (Y blocks)
        f.c.weight, f.final_bn.*                                            1x1 c
    heads: 0.clf.0.{weight,bias}                                            in1k classifier

Keras, per block ``{model}_Stage_{s}_{X|Y}Block_{i}`` (HWIO kernels, dense (in, out)),
in the order Keras lists the layers::

    _conv_1x1_1, _conv_1x1_1_bn, _conv_3x3, _conv_3x3_bn,
    [_squeeze_and_excite_squeeze, _squeeze_and_excite_excite],   (kernel + bias; Y blocks)
    _conv_1x1_2, [_skip_1x1], _conv_1x1_2_bn, [_skip_bn]           (skip: block 0)
    stem: {model}_stem_conv, {model}_stem_bn; head: {uid}head_dense (kernel, bias)
    BN variables: gamma, beta, moving_mean, moving_variance
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from regnet_core import RegNetConfig, build_model_spec

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
KERAS_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


# ----------------------------------------------------------------------------- the network, role by role


def _walk(config: RegNetConfig, with_head: bool) -> Iterator[tuple[int | None, int | None, str, str, tuple]]:
    """(stage, block, role part, canonical name, shape) for every tensor, in forward order.

    Role parts: ``stem.conv``, ``stem.bn.<param>``, ``a.conv``, ``a.bn.<param>``, ``b.*``,
    ``se.reduce.weight`` / ``.bias``, ``se.expand.*``, ``c.*``, ``proj.*``, ``head.weight`` / ``.bias``.
    """
    spec = build_model_spec(config)
    base = "regnet." if with_head else ""

    def bn(stage, block, role, prefix, channels):
        for part in BN:
            yield (
                stage,
                block,
                f"{role}.bn.{part}",
                prefix + "normalization." + part,
                (() if part == "num_batches_tracked" else (channels,)),
            )

    stem = spec.stem
    yield None, None, "stem.conv", f"{base}embedder.embedder.convolution.weight", (stem.width, stem.input_width, 3, 3)
    yield from bn(None, None, "stem", f"{base}embedder.embedder.", stem.width)
    for s, stage in enumerate(spec.stages):
        for i, block in enumerate(stage.blocks):
            layer = f"{base}encoder.stages.{s}.layers.{i}."
            w_in, w_b, w = block.input_width, block.bottleneck_width, block.width
            modules = {"a": "layer.0.", "b": "layer.1.", "c": "layer.3." if block.has_se else "layer.2."}
            if block.has_projection:
                yield s, i, "proj.conv", f"{layer}shortcut.convolution.weight", (w, w_in, 1, 1)
                yield from bn(s, i, "proj", f"{layer}shortcut.", w)
            yield s, i, "a.conv", f"{layer}{modules['a']}convolution.weight", (w_b, w_in, 1, 1)
            yield from bn(s, i, "a", f"{layer}{modules['a']}", w_b)
            yield s, i, "b.conv", f"{layer}{modules['b']}convolution.weight", (w_b, w_b // block.groups, 3, 3)
            yield from bn(s, i, "b", f"{layer}{modules['b']}", w_b)
            if block.has_se:
                se = block.se_width
                yield s, i, "se.reduce.weight", f"{layer}layer.2.attention.0.weight", (se, w_b, 1, 1)
                yield s, i, "se.reduce.bias", f"{layer}layer.2.attention.0.bias", (se,)
                yield s, i, "se.expand.weight", f"{layer}layer.2.attention.2.weight", (w_b, se, 1, 1)
                yield s, i, "se.expand.bias", f"{layer}layer.2.attention.2.bias", (w_b,)
            yield s, i, "c.conv", f"{layer}{modules['c']}convolution.weight", (w, w_b, 1, 1)
            yield from bn(s, i, "c", f"{layer}{modules['c']}", w)
    if with_head:
        width = spec.stages[-1].width
        yield None, None, "head.weight", "classifier.1.weight", (config.num_labels, width)
        yield None, None, "head.bias", "classifier.1.bias", (config.num_labels,)


# ----------------------------------------------------------------------------- vissl

_VISSL_ROLE = {
    "proj.conv": "proj.weight",
    "proj.bn": "bn",
    "a.conv": "f.a.0.weight",
    "a.bn": "f.a.1",
    "b.conv": "f.b.0.weight",
    "b.bn": "f.b.1",
    "se.reduce": "f.se.excitation.0",
    "se.expand": "f.se.excitation.2",
    "c.conv": "f.c.weight",
    "c.bn": "f.final_bn",
}


def _vissl_leaf(part: str) -> str:
    if part == "stem.conv":
        return "conv1.stem.0.weight"
    if part.startswith("stem.bn."):
        return "conv1.stem.1." + part.rsplit(".", 1)[1]
    head, _, leaf = part.rpartition(".")
    if part in _VISSL_ROLE:
        return _VISSL_ROLE[part]
    return f"{_VISSL_ROLE[head]}.{leaf}"


def vissl_layout(
    config: RegNetConfig, parts: Sequence[Sequence[int]] | None = None
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(vissl trunk name, canonical name, shape) of every trunk tensor in vissl's order; no values.

    ``parts``: per stage, the block counts at which vissl's FSDP trunk ends a part
    (``stage_checkpoints``, e.g. the 10B's ``[[2], [7], [9, 17], []]``); the block index runs on.
    """
    out = []
    for stage, block, part, canonical, shape in _walk(config, with_head=False):
        leaf = _vissl_leaf(part)
        if stage is None:
            out.append((f"_feature_blocks.{leaf}", canonical, shape))
            continue
        middle = ""
        if parts is not None:
            ends = list(parts[stage])
            if not ends or ends[-1] != config.depths[stage]:  # the last part runs to the stage's end
                ends.append(config.depths[stage])
            part_index = next(k for k, end in enumerate(ends) if block < end)
            middle = f"block{stage + 1}-part{part_index}."
        out.append((f"_feature_blocks.res{stage + 2}.{middle}block{stage + 1}-{block}.{leaf}", canonical, shape))
    return out


def vissl_trunk(
    config: RegNetConfig, canonical: dict[str, np.ndarray], parts: Sequence[Sequence[int]] | None = None
) -> OrderedDict:
    """vissl's trunk state dict (torch tensors) holding the canonical trunk weights."""
    import torch

    base = "regnet." if config.num_labels > 0 else ""
    trunk = OrderedDict()
    for name, canonical_name, shape in vissl_layout(config, parts):
        value = np.array(canonical[base + canonical_name])
        assert value.shape == shape, (canonical_name, value.shape, shape)
        trunk[name] = torch.from_numpy(value)
    return trunk


def in1k_heads(canonical: dict[str, np.ndarray]) -> OrderedDict:
    """vissl's fine-tuned mlp head (one Linear) holding the canonical classifier."""
    import torch

    return OrderedDict(
        [
            ("0.clf.0.weight", torch.from_numpy(np.array(canonical["classifier.1.weight"]))),
            ("0.clf.0.bias", torch.from_numpy(np.array(canonical["classifier.1.bias"]))),
        ]
    )


def swav_heads(width: int, seed: int = 0, hidden: int = 16, out: int = 8, prototypes: int = 12) -> OrderedDict:
    """A SwAV projection head and prototypes as vissl names them (``0.projection_head.{j}``, ``0.prototypes0``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return OrderedDict(
        [
            ("0.projection_head.0.weight", torch.randn(hidden, width, generator=generator)),
            ("0.projection_head.0.bias", torch.randn(hidden, generator=generator)),
            ("0.projection_head.1.weight", torch.rand(hidden, generator=generator)),
            ("0.projection_head.1.bias", torch.randn(hidden, generator=generator)),
            ("0.projection_head.1.running_mean", torch.randn(hidden, generator=generator)),
            ("0.projection_head.1.running_var", torch.rand(hidden, generator=generator) + 0.5),
            ("0.projection_head.1.num_batches_tracked", torch.tensor(3)),
            ("0.projection_head.3.weight", torch.randn(out, hidden, generator=generator)),
            ("0.projection_head.3.bias", torch.randn(out, generator=generator)),
            ("0.prototypes0.weight", torch.randn(prototypes, out, generator=generator)),
        ]
    )


def vissl_checkpoint(trunk: dict, heads: dict, consolidated: bool = False) -> dict:
    """The dict vissl saves: training bookkeeping and ``classy_state_dict.base_model.model.{trunk,heads}``.

    ``consolidated``: the 10B's consolidated FSDP form (``type`` and the model, nothing else).
    """
    import torch

    model = {"trunk": trunk, "heads": heads}
    if consolidated:
        return {"type": "consolidated", "classy_state_dict": {"base_model": {"model": model}}}
    return {
        "phase_idx": 3,
        "iteration": 1200,
        "iteration_num": 1200,
        "train_phase_idx": 3,
        "loss": {"queue": torch.zeros(2, 4)},
        "classy_state_dict": {
            "train": True,
            "num_updates": 1200,
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
            "base_model": {"model": model, "meta": {"trunk": {}, "heads": []}},
        },
    }


def save(obj: object, path: Path, legacy: bool = False) -> Path:
    """torch.save an object (zip serialisation unless ``legacy``)."""
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# ----------------------------------------------------------------------------- Keras 2 Applications

_KERAS_LAYER = {
    "a.conv": "_conv_1x1_1",
    "a.bn": "_conv_1x1_1_bn",
    "b.conv": "_conv_3x3",
    "b.bn": "_conv_3x3_bn",
    "se.reduce": "_squeeze_and_excite_squeeze",
    "se.expand": "_squeeze_and_excite_excite",
    "c.conv": "_conv_1x1_2",
    "c.bn": "_conv_1x1_2_bn",
    "proj.conv": "_skip_1x1",
    "proj.bn": "_skip_bn",
}
# Keras' weighted-layer order inside a block (the shortcut's conv and BN come after conv c's).
_KERAS_ORDER = ("a.conv", "a.bn", "b.conv", "b.bn", "se.reduce", "se.expand", "c.conv", "proj.conv", "c.bn", "proj.bn")


def keras_layers(
    config: RegNetConfig, canonical: dict[str, np.ndarray], model_name: str = "regnetx002", head_uid: str = "1"
) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """[(layer name, [(variable, value), ...]), ...] of the weighted layers, in Keras' order, channels last."""
    with_head = config.num_labels > 0
    letter = config.layer_type.upper()
    layers: dict[str, list[tuple[str, np.ndarray]]] = OrderedDict()
    blocks: dict[tuple[int, int], dict[str, list[tuple[str, np.ndarray]]]] = OrderedDict()

    def keras_value(part: str, value: np.ndarray) -> tuple[str, np.ndarray]:
        leaf = part.rsplit(".", 1)[1]
        if value.ndim == 4:
            return "kernel", np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        if value.ndim == 2:
            return "kernel", np.ascontiguousarray(value.T)  # (out, in) -> (in, out)
        return (KERAS_BN[leaf] if ".bn." in part else leaf), value

    for stage, block, part, canonical_name, _ in _walk(config, with_head):
        if part.endswith("num_batches_tracked"):
            continue
        variable, value = keras_value(part, np.asarray(canonical[canonical_name]))
        role = ".".join(part.split(".")[:2])
        if stage is None:
            layer = f"{head_uid}head_dense" if role.startswith("head") else f"{model_name}_{role.replace('.', '_')}"
            layers.setdefault(layer, []).append((variable, value))
        else:
            roles = blocks.setdefault((stage, block), {})
            roles.setdefault(role, []).append((variable, value))
    ordered: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    head = [(name, weights) for name, weights in layers.items() if name.endswith("head_dense")]
    ordered.extend((name, weights) for name, weights in layers.items() if not name.endswith("head_dense"))
    for (stage, block), roles in blocks.items():
        prefix = f"{model_name}_Stage_{stage}_{letter}Block_{block}"
        for role in _KERAS_ORDER:
            if role in roles:
                ordered.append((prefix + _KERAS_LAYER[role], roles[role]))
    return ordered + head


def write_keras_h5(
    path: Path,
    layers: list[tuple[str, list[tuple[str, np.ndarray]]]],
    *,
    suffix: str = ":0",
    as_bytes: bool = True,
    weightless: Sequence[str] = ("input_1",),
) -> Path:
    """A Keras 2 HDF5 weights file written with h5py alone (the tree ``model.save_weights("x.h5")`` writes).

    ``suffix``: ":0" as Keras 2 writes variable names, "" as Keras 3's legacy writer does.
    ``as_bytes``: attributes as bytes arrays (older Keras) rather than strings.
    """
    import h5py

    def text(values: Sequence[str]) -> np.ndarray:
        return np.array([v.encode() for v in values]) if as_bytes else h5py_strings(values)

    names = list(weightless) + [name for name, _ in layers]
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = text(names)
        file.attrs["backend"] = "tensorflow"
        file.attrs["keras_version"] = "2.9.0"
        for name in weightless:
            file.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")
        for name, weights in layers:
            group = file.create_group(name)
            weight_names = [f"{name}/{variable}{suffix}" for variable, _ in weights]
            group.attrs["weight_names"] = text(weight_names)
            for weight_name, (_, value) in zip(weight_names, weights, strict=True):
                group.create_dataset(weight_name, data=value)
    return path


def h5py_strings(values: Sequence[str]) -> np.ndarray:
    """Variable-length string attribute values (as tf_keras 2.21 writes them)."""
    import h5py

    return np.array(list(values), dtype=h5py.string_dtype())


def randomise_keras_model(model, seed: int = 0) -> None:
    """Give every variable of a Keras model non-trivial values (BN statistics away from 0 and 1).

    Kernels are LeCun-normal (std sqrt(1 / fan_in)) so that 13 residual sums keep the logits of
    order 1 (He-normal gives hundreds there, where float32 rounding alone passes the 1e-4 absolute check).
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.name.rsplit("/", 1)[1].split(":")[0]
        shape = tuple(int(d) for d in variable.shape)
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # beta, moving_mean, bias
            value = rng.normal(0.0, 0.1, shape)
        variable.assign(value.astype(np.float32))


def keras_images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A seeded NHWC batch of RGB values in [0, 255], what Keras' RegNets take."""
    return np.random.default_rng(seed).uniform(0.0, 255.0, (batch, size, size, 3)).astype(np.float32)


def converted_input(images: np.ndarray) -> np.ndarray:
    """The same images for the converted model: NCHW and divided by 255 (its preprocessor's rescale)."""
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)) / np.float32(255))
