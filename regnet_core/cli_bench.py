"""`regnet bench MODEL`: inference speed of our backends and the installed peers, each entry in its own process.

Registered on the command line by regnet_core.cli; the frameworks load only inside the worker processes.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import _positive_int, _seed

DTYPES = ("float32", "bfloat16")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _frameworks(text: str) -> list[str]:
    from .backends import framework_name

    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of frameworks (pt, tf, flax)")
    try:
        return list(dict.fromkeys(framework_name(name) for name in names))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _entry_names(text: str) -> list[str]:
    from .bench import ENTRY_NAMES

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ENTRY_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown entry {unknown[0]!r}; expected some of {', '.join(ENTRY_NAMES)}")
    return names


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchSettings, format_report, run_bench

    settings = BenchSettings(
        model=args.model,
        batch=args.batch,
        image_size=args.image_size,
        dtype=args.dtype,
        frameworks=args.frameworks,
        peers=args.peers,
        rounds=args.rounds,
        warmup=args.warmup,
        round_time=args.round_time,
        seed=args.seed,
        cold_start=not args.no_cold_start,
        cold_start_runs=args.cold_start_runs,
        timeout=args.timeout,
        peers_path=args.peers_path,
        skip=args.skip,
    )

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    report = run_bench(settings, log)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand to the `regnet` parser."""
    p = commands.add_parser(
        "bench",
        help="inference speed of every backend (and of timm / transformers with --peers), in one run",
        description=(
            "Measure images/s at the batch size and batch-1 latency of our backends (pt, tf eager and tf predict, "
            "flax) and, with --peers, of timm (NCHW and channels_last) and transformers (PyTorch, TF, Flax) on the "
            "same model, each in its own process; rounds are interleaved so that every entry sees the same "
            "machine, and entries are ranked on their best round. Also reports peak RSS, achieved GFLOP/s against "
            "a 2048x2048 matmul, cold start per backend and the import time of regnet_core. timm is imported as "
            "usual, or from the directory named by --peers-path / $REGNET_BENCH_PEERS_PATH."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="zoo name (random weights; timm names accepted) or checkpoint")
    p.add_argument("--batch", type=_positive_int, default=8, help="batch size of the throughput runs (default 8)")
    p.add_argument("--image-size", type=_positive_int, default=224, help="input resolution (default 224)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="float32 (default) or bfloat16 (autocast)")
    p.add_argument(
        "--frameworks",
        type=_frameworks,
        default=None,
        help="ours to measure, comma-separated: pt, tf (eager and predict), flax (default: every installed one)",
    )
    p.add_argument("--peers", action="store_true", help="also measure timm and transformers where installed")
    p.add_argument(
        "--skip",
        type=_entry_names,
        default=[],
        metavar="ENTRIES",
        help="entries to leave out, comma-separated (e.g. tf-predict,transformers-tf)",
    )
    p.add_argument("--rounds", type=_positive_int, default=5, help="timed rounds per entry (default 5)")
    p.add_argument("--warmup", type=_positive_int, default=3, help="untimed calls before the rounds (default 3)")
    p.add_argument(
        "--round-time",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds of calls per round, at the batch size and at batch 1 each (default 1)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random weights and inputs")
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start and import-time runs")
    p.add_argument(
        "--cold-start-runs", type=_positive_int, default=2, help="fresh processes per backend (default 2; best kept)"
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="give up on a worker after this long in one step (default 600)",
    )
    p.add_argument("--peers-path", metavar="DIR", help="directory to import timm from when it is not installed")
    p.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=_cmd_bench)
