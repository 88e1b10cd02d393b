"""`regnet predict CKPT IMAGE...`: the top-k labels with their scores for each image, in any framework.

Registered on the command line by regnet_core.cli; Pillow and the framework load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import _positive_int, _seed


def _cmd_predict(args: argparse.Namespace) -> int:
    from .backends import framework_name
    from .classify import ImageClassifier
    from .preprocess import check_paths

    framework = framework_name(args.framework)
    check_paths(args.images)  # a missing image fails before the model loads
    classifier = ImageClassifier.from_checkpoint(args.ckpt, framework, args.seed)
    results = classifier(args.images, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{classifier.source} ({framework})", file=sys.stderr)
    for path, entries in zip(args.images, results, strict=True):
        print(path)
        for entry in entries:
            print(f"  {entry['score']:.4f}  {entry['label']}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `predict` subcommand to the `regnet` parser."""
    p = commands.add_parser(
        "predict",
        help="classify images: the top-k labels with their scores",
        description=(
            "Classify image files with a checkpoint (a directory or file in any format `regnet convert` reads, "
            "a hub id, or a zoo name for seeded random weights), preprocessed as the checkpoint's "
            "preprocessor_config.json says (else the ImageNet default). Scores are those of transformers' "
            "image-classification pipeline: softmax, or sigmoid for multi-label models."
        ),
    )
    p.add_argument("ckpt", help="checkpoint directory or file, hub id, or zoo name (random weights)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--framework", default="pt", help="pt, tf or flax (default pt)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="how many labels to print per image (default 5)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=1, help="images per forward pass (default 1, as the pipeline)"
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of a zoo name's random weights")
    p.add_argument("--json", action="store_true", help="print, for each image, a list of {label, score}, best first")
    p.set_defaults(run=_cmd_predict)
