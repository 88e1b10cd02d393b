"""The architecture from the weights alone: widths, depths, groups, X or Y, SE ratio, classes.

Works on neutral names and canonical-layout shapes, so it serves every format. What the
weights cannot show (the activation, the first stage's stride when its first block has a
projection either way) takes the value every published RegNet has, and the result says so.
Weights that contradict each other are refused with the tensors that disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from ..config import RegNetConfig
from ..errors import CheckpointError
from ..specs import STEM_KERNEL, build_model_spec
from ..weights import check_state, parameter_table
from ..zoo import ZOO
from . import neutral


class InferenceError(CheckpointError):
    """Weights that do not determine a RegNet, or contradict each other; names the tensors."""


@dataclass(frozen=True)
class InferredConfig:
    """A config read off the weights, what had to be assumed, and the zoo models it equals."""

    config: RegNetConfig
    assumptions: tuple[str, ...] = ()
    zoo_matches: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One paragraph for the user: the architecture, the zoo name if any, the assumptions."""
        c = self.config
        text = (
            f"RegNet{c.layer_type.upper()} with stem width {c.embedding_size}, stage widths {c.hidden_sizes}, "
            f"depths {c.depths}, group width {c.groups_width}"
            + (f", SE ratio {c.se_ratio:g}" if c.layer_type == "y" else "")
            + (f", bottleneck ratio {c.bottleneck_ratio:g}" if c.bottleneck_ratio != 1 else "")
            + (f", {c.num_labels} classes" if c.num_labels else ", no classifier")
        )
        if self.zoo_matches:
            text += f"; this is {' = '.join(self.zoo_matches)} from the zoo"
        else:
            text += "; no zoo model has this architecture"
        if self.assumptions:
            text += " (assumed: " + "; ".join(self.assumptions) + ")"
        return text


def _shape(shapes: Mapping[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise InferenceError(f"cannot infer the architecture: the weights lack {name} (neutral name)")
    return tuple(shapes[name])


def _nice_ratio(pairs: list[tuple[int, int]], preferred: tuple[float, ...]) -> float | None:
    """A ratio r with round(denominator * r) == numerator for every (numerator, denominator) pair."""

    def fits(ratio: float) -> bool:
        return all(int(round(den * ratio)) == num for num, den in pairs)

    for ratio in preferred:
        if fits(ratio):
            return ratio
    for limit in (4, 8, 16, 32, 64, 100, 1000):
        for num, den in pairs:
            ratio = float(Fraction(num, den).limit_denominator(limit))
            if fits(ratio):
                return ratio
    return None


def infer_config(
    shapes: Mapping[str, tuple[int, ...]], names_for_errors: Mapping[str, str] | None = None, **config_fields: object
) -> InferredConfig:
    """The RegNetConfig that the neutral-named, canonical-layout ``shapes`` describe.

    ``names_for_errors`` maps neutral names to the source's own names so that messages
    name the tensors as the user knows them; ``config_fields`` (labels, architectures...)
    go into the config as they are.
    """
    label = dict(names_for_errors or {})

    def show(name: str) -> str:
        return f"{label[name]} ({name})" if name in label and label[name] != name else name

    assumptions: list[str] = ["hidden_act relu (activations carry no weights)"]
    stem = _shape(shapes, "stem.conv.weight")
    if len(stem) != 4 or stem[2:] != (STEM_KERNEL, STEM_KERNEL):
        raise InferenceError(f"{show('stem.conv.weight')} has shape {stem}, expected (width, channels, 3, 3)")
    stem_width, num_channels = stem[0], stem[1]

    blocks: dict[int, set[int]] = defaultdict(set)
    se_blocks: set[tuple[int, int]] = set()
    for name in shapes:
        address = neutral.parse(name)
        if address is None:
            raise InferenceError(f"cannot infer the architecture: {name!r} is not a RegNet tensor")
        if address.stage is not None:
            blocks[address.stage].add(address.block)
            if address.role == "se":
                se_blocks.add((address.stage, address.block))
    if not blocks:
        raise InferenceError("cannot infer the architecture: the weights hold no stage (no s<i>.b<j> tensors)")
    stages = sorted(blocks)
    if stages != list(range(len(stages))):
        raise InferenceError(f"stages must be numbered 0..{len(stages) - 1}, the weights have stages {stages}")
    problems: list[str] = []
    widths, depths, bottlenecks, group_widths = [], [], [], []
    se_pairs: list[tuple[int, int]] = []
    input_width = stem_width
    downsample_first = True
    for stage in stages:
        indices = sorted(blocks[stage])
        if indices != list(range(len(indices))):
            raise InferenceError(f"blocks of stage {stage} must be numbered from 0 without gaps, got {indices}")
        depths.append(len(indices))
        width = _shape(shapes, neutral.block(stage, 0, "c.conv.weight"))[0]
        bottleneck = _shape(shapes, neutral.block(stage, 0, "a.conv.weight"))[0]
        group_width = _shape(shapes, neutral.block(stage, 0, "b.conv.weight"))[1]
        for index in indices:
            block_input = input_width if index == 0 else width
            a = _shape(shapes, neutral.block(stage, index, "a.conv.weight"))
            b = _shape(shapes, neutral.block(stage, index, "b.conv.weight"))
            c = _shape(shapes, neutral.block(stage, index, "c.conv.weight"))
            checks = [
                ("a.conv.weight", a, (bottleneck, block_input, 1, 1)),
                ("b.conv.weight", b, (bottleneck, group_width, 3, 3)),
                ("c.conv.weight", c, (width, bottleneck, 1, 1)),
            ]
            proj_name = neutral.block(stage, index, "proj.conv.weight")
            if proj_name in shapes:
                checks.append(("proj.conv.weight", tuple(shapes[proj_name]), (width, block_input, 1, 1)))
                if index > 0:
                    problems.append(f"{show(proj_name)}: only a stage's first block has a projection")
            elif index == 0 and (stage > 0 or block_input != width):
                problems.append(
                    f"stage {stage} block 0 changes {'resolution' if block_input == width else 'width'} "
                    f"({block_input} -> {width}) but has no projection ({proj_name})"
                )
            elif index == 0:
                downsample_first = False
            for part, found, expected in checks:
                if found != expected:
                    problems.append(
                        f"{show(neutral.block(stage, index, part))} has shape {found}, expected {expected} "
                        f"(from {show(neutral.block(stage, 0, 'c.conv.weight'))} and the block's input width {block_input})"
                    )
            if (stage, index) in se_blocks:
                reduce = _shape(shapes, neutral.block(stage, index, "se.reduce.weight"))
                se_pairs.append((reduce[0], block_input))
        widths.append(width)
        bottlenecks.append(bottleneck)
        group_widths.append(group_width)
        input_width = width
    if problems:
        raise InferenceError("the weights contradict each other: " + "; ".join(problems))
    if stages and not downsample_first:
        assumptions.append("the first stage keeps the resolution (its first block has no projection)")
    else:
        assumptions.append("the first stage downsamples (as in every published RegNet)")

    all_blocks = {(s, b) for s in stages for b in blocks[s]}
    if se_blocks and se_blocks != all_blocks:
        without = sorted(all_blocks - se_blocks)
        raise InferenceError(
            f"some blocks have squeeze-and-excitation and some do not (none in stage/block {without[:8]}): "
            "expected all (Y) or none (X)"
        )
    layer_type = "y" if se_blocks else "x"
    se_ratio = 0.0
    if se_blocks:
        ratio = _nice_ratio(se_pairs, (0.25,))
        if ratio is None:
            raise InferenceError(
                "no single SE ratio gives these SE widths from the block input widths "
                f"(SE width, input width): {se_pairs[:8]}"
            )
        se_ratio = ratio

    bottleneck_pairs = list(zip(bottlenecks, widths, strict=True))
    bottleneck_ratio = _nice_ratio(bottleneck_pairs, (1.0, 0.5, 0.25))
    if bottleneck_ratio is None:
        raise InferenceError(f"no single bottleneck ratio gives these (bottleneck, width) pairs: {bottleneck_pairs}")
    groups_width = max(group_widths)
    bad_groups = [
        f"stage {s}: group width {gw} with bottleneck {bn}"
        for s, (gw, bn) in enumerate(zip(group_widths, bottlenecks, strict=True))
        if gw != min(groups_width, bn)
    ]
    if bad_groups:
        raise InferenceError(
            "one group width must serve every stage (capped at the stage's bottleneck width), got "
            + "; ".join(bad_groups)
        )

    num_labels = 0
    if "head.weight" in shapes:
        head = tuple(shapes["head.weight"])
        if len(head) != 2 or head[1] != widths[-1]:
            raise InferenceError(f"{show('head.weight')} has shape {head}, expected (num_labels, {widths[-1]})")
        num_labels = head[0]
    fields = dict(config_fields)
    if "num_labels" not in fields and "id2label" not in fields:
        fields["num_labels"] = num_labels
    try:
        config = RegNetConfig(
            num_channels=num_channels,
            embedding_size=stem_width,
            hidden_sizes=widths,
            depths=depths,
            groups_width=groups_width,
            layer_type=layer_type,
            se_ratio=se_ratio,
            bottleneck_ratio=bottleneck_ratio,
            downsample_in_first_stage=downsample_first,
            **fields,
        )
        spec = build_model_spec(config)
    except ValueError as error:
        raise InferenceError(f"the weights describe no valid RegNet: {error}") from None
    if config.num_labels != num_labels:
        raise InferenceError(f"the config names {config.num_labels} labels, the classifier has {num_labels}")
    table = parameter_table(spec, with_head=num_labels > 0)
    canonical = neutral.to_canonical(shapes, with_prefix=num_labels > 0)
    check_state({canonical[name]: _Shape(shape) for name, shape in shapes.items()}, table, "(inferred architecture)")
    return InferredConfig(config, tuple(assumptions), tuple(zoo_matches(config)))


class _Shape:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)


def zoo_matches(config: RegNetConfig) -> list[str]:
    """Zoo names whose network (trunk and classifier size) equals this config's."""
    try:
        spec = build_model_spec(config)
    except ValueError:
        return []
    return [name for name, entry in ZOO.items() if build_model_spec(entry.config()) == spec]
