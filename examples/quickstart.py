"""Build a zoo RegNet from its design numbers, show its specs and complexity, classify a batch."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from regnet_core import build_model_spec, get_config, get_entry, model_complexity
from regnet_pt import RegNetForImageClassification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", nargs="?", default="regnet-y-040")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    entry = get_entry(args.name)
    config = get_config(args.name)
    spec = build_model_spec(config)
    print(
        f"{entry.name} ({entry.paper_name}): d={entry.depth} w0={entry.w0} wa={entry.wa} wm={entry.wm} "
        f"g={entry.group_width} se_ratio={entry.se_ratio}"
    )
    for index, stage in enumerate(spec.stages, start=1):
        print(
            f"  stage {index}: width {stage.width:5d}  depth {stage.depth:2d}  groups {stage.groups:3d}  "
            f"group width {stage.group_width:4d}  SE width {stage.se_width}"
        )
    report = model_complexity(spec, args.image_size)
    print(
        f"  {report.flops / 1e9:.3f} GFLOPs, {report.params / 1e6:.3f} M params, {report.acts / 1e6:.3f} M acts "
        f"at {args.image_size}x{args.image_size}"
    )

    torch.manual_seed(0)
    model = RegNetForImageClassification(config).eval()
    assert sum(p.numel() for p in model.parameters()) == report.params
    pixels = torch.from_numpy(
        np.random.default_rng(0).normal(size=(args.batch, 3, args.image_size, args.image_size)).astype(np.float32)
    )
    with torch.no_grad():
        logits = model(pixels).logits
    top = logits.softmax(-1).topk(3)
    for row, (probs, classes) in enumerate(zip(top.values, top.indices, strict=True)):
        print(
            f"  image {row}: top-3 classes {classes.tolist()} (random weights: probabilities {[round(p, 4) for p in probs.tolist()]})"
        )


if __name__ == "__main__":
    main()
