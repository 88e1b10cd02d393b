"""Parity of every zoo model across PyTorch, TensorFlow and Flax; prints the worst figures per pair.

    python examples/zoo_parity.py --image-size 64            # the 24 ImageNet models
    python examples/zoo_parity.py --image-size 224 --max-gflops 1.7
    python examples/zoo_parity.py --names regnet-y-320-seer --image-size 64

Weights are seeded random with randomised BN statistics and head (as `regnet parity` uses
for a zoo name). Exit status 1 if any model diverges.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from regnet_core import build_model_spec, get_config, list_models, model_complexity
from regnet_core.parity import format_report, parity


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="*", help="zoo names (default: the 24 ImageNet models)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-gflops", type=float, default=None, help="skip models above this many GFLOPs at 224")
    parser.add_argument("--frameworks", default="pt,tf,flax")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args()

    names = args.names or [n for n in list_models() if "seer" not in n]
    if args.max_gflops is not None:
        names = [n for n in names if model_complexity(build_model_spec(get_config(n))).flops <= args.max_gflops * 1e9]
    worst: dict[str, dict[str, tuple[float, str]]] = {}
    records, failed = [], []
    for name in names:
        start = time.perf_counter()
        report = parity(name, args.frameworks.split(","), args.batch, args.image_size, args.seed)
        seconds = time.perf_counter() - start
        records.append({"name": name, "seconds": seconds, **report.as_dict()})
        line = [f"{name:<24}{seconds:6.1f}s"]
        for pair in report.pairs:
            key = f"{pair.reference}-{pair.other}"
            final = pair.worst("logits") or pair.worst("pooler_output")
            any_output = max(pair.outputs, key=lambda o: o.max_rel)
            slot = worst.setdefault(key, {})
            for label, value in (
                (f"{final.name} max_abs", final.max_abs),
                (f"{final.name} max_rel", final.max_rel),
                ("any output max_rel", any_output.max_rel),
            ):
                if value > slot.get(label, (-1.0, ""))[0]:
                    slot[label] = (value, name)
            line.append(f"{key} {final.max_abs:.1e}/{final.max_rel:.1e}")
        print("  ".join(line), flush=True)
        if not report.passed:
            failed.append(name)
            print(format_report(report))
    print(f"\nworst over {len(names)} models at {args.image_size}x{args.image_size}, batch {args.batch}:")
    for key, slot in worst.items():
        print(f"  {key}: " + "; ".join(f"{label} {value:.2e} ({model})" for label, (value, model) in slot.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=2)
    print("FAIL: " + ", ".join(failed) if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
