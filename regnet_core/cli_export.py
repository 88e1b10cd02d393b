"""`regnet export`: write a serving artefact (ONNX, SavedModel, TFLite, StableHLO) and check it against its source.

Exit codes as every command: 0 written and within the parity tolerance, 1 written but its
outputs differ from the checkpoint's model above the tolerance, 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import json

from .cli import EXIT_CHECK_FAILED, EXIT_OK, _positive_int, _seed
from .export import TARGETS, export_checkpoint


def _target(text: str) -> str:
    key = text.lower()
    if key not in TARGETS:
        raise argparse.ArgumentTypeError(f"unknown export target {text!r}; expected one of {', '.join(TARGETS)}")
    return key


def _cmd_export(args: argparse.Namespace) -> int:

    report = export_checkpoint(
        args.ckpt,
        args.out,
        args.to,
        overwrite=args.overwrite,
        opset=args.opset,
        output_hidden_states=args.hidden_states,
        batch=args.batch,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand to the `regnet` parser."""
    p = commands.add_parser(
        "export",
        help="write an ONNX / SavedModel / TFLite / StableHLO artefact, run it with its runtime, exit 1 if it differs",
        description=(
            "Export CKPT for serving and check the written artefact with its own runtime against the "
            "checkpoint run in the exporting framework (pt for onnx, tf for savedmodel and tflite, flax for "
            "stablehlo). Artefacts take pixel_values, float32, with dynamic batch, height and width (NCHW for "
            "onnx, NHWC otherwise) and return logits (pooled_features for a trunk)."
        ),
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint (any format regnet convert reads), hub id or zoo name")
    p.add_argument("--to", required=True, type=_target, metavar="TARGET", help=f"one of {', '.join(TARGETS)}")
    p.add_argument("out", metavar="OUT", help="the file (onnx, tflite, stablehlo) or directory (savedmodel) to write")
    p.add_argument("--opset", type=_positive_int, help="ONNX opset (default 20; 18 or newer)")
    p.add_argument(
        "--hidden-states",
        action="store_true",
        help="also output hidden_states_0 (stem) ... hidden_states_S (last stage), in the artefact's layout",
    )
    p.add_argument("--batch", type=_positive_int, default=2, help="batch of the check (default 2)")
    p.add_argument("--image-size", type=_positive_int, default=224, help="image side of the check (default 224)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the check's batch and of a zoo name's random weights")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT (only once the new one is complete)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_cmd_export)
