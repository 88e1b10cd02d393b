"""bfloat16 inference against float32 on the parity inputs: how far the logits move in each backend.

For each model: seeded random weights with randomised BatchNorm statistics (as `regnet parity`
uses), the parity harness's seeded N(0, 1) batch, logits in float32 and in bfloat16
(PyTorch: ``torch.autocast("cpu", torch.bfloat16)``; TensorFlow: the ``mixed_bfloat16``
policy; Flax: ``dtype=jnp.bfloat16``; weights and BatchNorm statistics stay float32 in all
three). Prints, per backend, max |bf16 - fp32| relative to max |fp32 logit| and whether the
top-1 class agrees, as a markdown table (``--json`` for the raw figures).

    .venv/bin/python benchmarks/bf16_error.py regnet-x-002 regnet-y-040 --image-size 224 --batch 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regnet_core import build_model_spec, get_config, random_state  # noqa: E402
from regnet_core.backends import get_backend  # noqa: E402
from regnet_core.parity import random_input  # noqa: E402


def logits(framework: str, config, state, pixel_values: np.ndarray, bf16: bool) -> np.ndarray:
    """float32 numpy logits of one backend, computed in float32 or bfloat16."""
    backend = get_backend(framework)
    if framework == "pt":
        import torch

        model = backend.from_canonical(config, state, True)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(torch.from_numpy(pixel_values)).logits
        return out.float().numpy()
    model = backend.from_canonical(config, state, True, dtype="bfloat16" if bf16 else None)
    return np.asarray(backend.run(model, pixel_values, output_hidden_states=False)["logits"], np.float32)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--frameworks", default="pt,tf,flax")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        config = get_config(name)
        state = random_state(build_model_spec(config), args.seed, True)
        pixel_values = random_input(args.batch, args.image_size, config.num_channels, args.seed)
        for framework in args.frameworks.split(","):
            fp32 = logits(framework, config, state, pixel_values, False)
            bf16 = logits(framework, config, state, pixel_values, True)
            scale = float(np.abs(fp32).max())
            rows.append(
                {
                    "model": name,
                    "framework": framework,
                    "max_abs": float(np.abs(bf16 - fp32).max()),
                    "max_rel_to_max_logit": float(np.abs(bf16 - fp32).max()) / scale,
                    "top1_agree": int((bf16.argmax(-1) == fp32.argmax(-1)).sum()),
                    "batch": args.batch,
                }
            )
            print(rows[-1], file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"| model | framework | max abs diff | relative to max logit | top-1 agree ({args.image_size}px) |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['model']} | {row['framework']} | {row['max_abs']:.3g} | {row['max_rel_to_max_logit']:.2%} "
            f"| {row['top1_agree']}/{row['batch']} |"
        )


if __name__ == "__main__":
    main()
