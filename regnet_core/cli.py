"""The ``regnet`` command. Exit codes: 0 success, 1 a check failed, 2 bad input (one line, no traceback),
3 internal error (one line; ``--debug`` or REGNET_DEBUG=1 shows the traceback), 130 interrupted.

Bad input is anything the user can fix: usage, our ValueError subclasses (configs, checkpoints,
pixel values, outputs), any other ValueError, file-system errors (OSError: missing, a directory
where a file belongs, permissions, disk full), running out of memory, and a framework that is not
installed. Everything else is a bug of ours and says so. A reader that closes the pipe early
(``regnet list | head -1``) ends the command quietly with exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .backends import (
    BackendUnavailableError,
    architecture_name,
    config_has_head,
    framework_name,
    get_backend,
    resolve_checkpoint,
)
from .checkpoint import (
    DEFAULT_MAX_SHARD_SIZE,
    check_destination,
    is_checkpoint_dir,
    load_checkpoint,
    parse_size,
    save_checkpoint,
)
from .complexity import model_complexity
from .config import RegNetConfig
from .formats import FORMAT_NAMES
from .io import atomic_write
from .outputs import check_pixel_values
from .resources import ALLOW_LARGE_VARIABLE, check_memory, weight_memory
from .specs import ModelSpec, build_model_spec
from .tensors import OUTPUT_DTYPES
from .zoo import ZOO, get_entry

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEBUG_FLAG, DEBUG_VARIABLE = "--debug", "REGNET_DEBUG"
MAX_SEED = 2**32 - 1  # numpy's seeds; torch, TensorFlow and JAX take these too


class UsageError(Exception):
    """Bad command-line usage; reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {text!r}")
    return value


def _shard_size(text: str) -> str:
    """A --max-shard-size checked when the line is parsed (before anything is read), passed on as written."""
    try:
        parse_size(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB, 500MB or 1GiB, got {text!r}") from None
    return text


def _human(value: int) -> str:
    for unit, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


# ----------------------------------------------------------------------------- list
def _cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name, entry in ZOO.items():
        report = model_complexity(build_model_spec(entry.config()), 224)
        rows.append({"name": name, "paper_name": entry.paper_name, "flops": report.flops, "params": report.params})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'name':<26}{'paper name':<22}{'flops@224':>12}{'params':>12}")
    for row in rows:
        print(f"{row['name']:<26}{row['paper_name']:<22}{_human(row['flops']):>12}{_human(row['params']):>12}")
    return EXIT_OK


# ----------------------------------------------------------------------------- info
def _load_config(name_or_dir: str) -> tuple[str, RegNetConfig, dict[str, Any] | None]:
    if Path(name_or_dir).exists():
        if Path(name_or_dir).is_file() and name_or_dir.endswith(".json"):
            return name_or_dir, RegNetConfig.from_json_file(name_or_dir), None
        if not is_checkpoint_dir(name_or_dir):
            load_checkpoint(name_or_dir)  # raises the precise error
        return Path(name_or_dir).name, RegNetConfig.from_pretrained(name_or_dir), None
    entry = get_entry(name_or_dir)
    design = {
        "depth": entry.depth,
        "w0": entry.w0,
        "wa": entry.wa,
        "wm": entry.wm,
        "group_width": entry.group_width,
        "se_ratio": entry.se_ratio,
    }
    return entry.name, entry.config(), design


def model_info(name_or_dir: str, image_size: int = 224) -> dict[str, Any]:
    """Everything ``regnet info --json`` prints, as a dict."""
    name, config, design = _load_config(name_or_dir)
    if not config_has_head(config):
        config = config.copy(num_labels=0)
    spec = build_model_spec(config)
    report = model_complexity(spec, image_size)
    return {
        "name": name,
        "layer_type": spec.layer_type,
        "image_size": image_size,
        "num_labels": spec.head.num_labels,
        "stem": {"width": spec.stem.width, "stride": spec.stem.stride, "kernel_size": spec.stem.kernel_size},
        "stages": [_stage_info(spec, index) for index in range(len(spec.stages))],
        "flops": report.flops,
        "params": report.params,
        "acts": report.acts,
        "memory": weight_memory(spec, with_head=spec.head.num_labels > 0),
        "parts": report.parts,
        **({"design": design} if design else {}),
    }


def _stage_info(spec: ModelSpec, index: int) -> dict[str, Any]:
    stage = spec.stages[index]
    return {
        "width": stage.width,
        "depth": stage.depth,
        "groups": stage.groups,
        "group_width": stage.group_width,
        "stride": stage.stride,
        "se_width": stage.se_width,
        "bottleneck_width": stage.bottleneck_width,
        "input_width": stage.input_width,
        "block_se_widths": [block.se_width for block in stage.blocks],
    }


def _cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.model, args.image_size)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    design = info.get("design")
    print(
        info["name"]
        + (
            f"  (d={design['depth']} w0={design['w0']} wa={design['wa']} wm={design['wm']} "
            f"g={design['group_width']} se_ratio={design['se_ratio']})"
            if design
            else ""
        )
    )
    print(
        f"stem: {info['stem']['kernel_size']}x{info['stem']['kernel_size']} conv, width {info['stem']['width']}, "
        f"stride {info['stem']['stride']}; {info['layer_type'].upper()} blocks"
    )
    print(f"{'stage':<7}{'width':>7}{'depth':>7}{'groups':>8}{'group_width':>13}{'stride':>8}{'se_width':>10}")
    for index, stage in enumerate(info["stages"], start=1):
        print(
            f"{index:<7}{stage['width']:>7}{stage['depth']:>7}{stage['groups']:>8}{stage['group_width']:>13}"
            f"{stage['stride']:>8}{stage['se_width']:>10}"
        )
    head = f"{info['num_labels']} classes" if info["num_labels"] else "no classifier"
    print(
        f"at {info['image_size']}x{info['image_size']}, {head}: flops {_human(info['flops'])} ({info['flops']}), "
        f"params {_human(info['params'])} ({info['params']}), acts {_human(info['acts'])} ({info['acts']})"
    )
    memory = info["memory"]
    print(
        f"weights in memory (parameters and BatchNorm buffers): {memory['float32'] / 1e9:.2f} GB at float32, "
        f"{memory['bfloat16'] / 1e9:.2f} GB at bfloat16"
    )
    return EXIT_OK


# ----------------------------------------------------------------------------- init
def _cmd_init(args: argparse.Namespace) -> int:
    backend = get_backend(args.framework)
    entry = get_entry(args.model)
    check_destination(args.out, args.overwrite, "--overwrite")  # before the weights are drawn
    config = entry.config()
    check_memory(config, not entry.is_trunk, args.allow_large, what=entry.name)  # before anything is allocated
    if args.allow_large:  # the backend's own guard, when it builds the model
        os.environ[ALLOW_LARGE_VARIABLE] = "1"
    model = backend.build(config, with_head=not entry.is_trunk, seed=args.seed)
    save_checkpoint(
        args.out,
        config,
        backend.to_canonical(model),
        architecture=architecture_name(not entry.is_trunk),
        overwrite=args.overwrite,
        flag="--overwrite",
    )
    print(f"wrote {args.out} ({entry.name}, {framework_name(args.framework)} initialisation, seed {args.seed})")
    return EXIT_OK


# ----------------------------------------------------------------------------- logits
def _read_nchw(path: str, num_channels: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no input file at {path}") from None
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot read {path} as a .npy array: {error}") from None
    check_pixel_values(array.shape, np.issubdtype(array.dtype, np.floating), str(array.dtype), num_channels, "NCHW")
    return array.astype(np.float32, copy=False)


def _cmd_logits(args: argparse.Namespace) -> int:
    if Path(args.output).is_dir():
        raise UsageError(f"--output {args.output} is a directory; expected the path of the .npy file to write")
    backend = get_backend(args.framework)
    config, state, with_head, source = resolve_checkpoint(args.ckpt, args.seed)
    pixel_values = _read_nchw(args.input, config.num_channels)
    model = backend.from_canonical(config, state, with_head)
    outputs = backend.run(model, pixel_values, output_hidden_states=False)
    if "logits" in outputs:
        result = outputs["logits"]
    else:
        result = np.asarray(outputs["pooler_output"]).reshape(pixel_values.shape[0], -1)
        print(f"{source} is a trunk without a classifier: writing its pooled features", file=sys.stderr)
    atomic_write(args.output, lambda tmp: np.save(tmp, np.asarray(result, np.float32)), suffix=".npy")
    print(f"wrote {args.output} {tuple(result.shape)} from {source} ({framework_name(args.framework)})")
    return EXIT_OK


# ----------------------------------------------------------------------------- convert
def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    report = convert(
        args.src,
        args.dst,
        from_format=args.source_format,
        to_format=args.target_format,
        config=args.config,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        bgr_to_rgb=args.bgr_to_rgb,
        overwrite=args.overwrite,
        progress=False if args.quiet else None,
        verify=args.verify,
    )
    print(report.summary())
    if report.verify is not None and not report.verify.passed:
        return EXIT_CHECK_FAILED
    return EXIT_OK


# ----------------------------------------------------------------------------- parity
def _format_name(text: str) -> str:
    from .formats import get_format

    try:
        return get_format(text).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _frameworks(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [framework_name(name) for name in names]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _cmd_parity(args: argparse.Namespace) -> int:
    from .parity import format_report, parity

    report = parity(args.ckpt, args.frameworks, args.batch, args.image_size, args.seed)
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``regnet`` command."""
    parser = _Parser(prog="regnet", description="RegNet in PyTorch, TensorFlow and Flax: one spec, one checkpoint.")
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the traceback of an internal error (anywhere on the line; or {DEBUG_VARIABLE}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("list", help="the zoo: names, flops and params at 224")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_list)

    p = commands.add_parser("info", help="stages, flops, params and activations of a zoo model or checkpoint")
    p.add_argument("model", metavar="NAME_OR_DIR")
    p.add_argument("--image-size", type=_positive_int, default=224)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_info)

    p = commands.add_parser("init", help="write a randomly initialised checkpoint directory")
    p.add_argument("model", metavar="NAME")
    p.add_argument("--framework", default="pt", help="pt, tf or flax (default pt)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--allow-large", action="store_true", help="build even when the weights would not fit in available memory"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing DIR (only once the new one is complete)"
    )
    p.set_defaults(run=_cmd_init)

    p = commands.add_parser("logits", help="logits of an NCHW float32 .npy batch")
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint directory or zoo name (random weights)")
    p.add_argument("--framework", default="pt", help="pt, tf or flax (default pt)")
    p.add_argument("--input", required=True, metavar="X.npy")
    p.add_argument("--output", required=True, metavar="Y.npy")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random weights for a zoo name")
    p.set_defaults(run=_cmd_logits)

    p = commands.add_parser(
        "convert",
        help="convert any RegNet checkpoint (transformers PT/TF/Flax, timm, torchvision, pycls, SEER, Keras) to another",
        description="Read SRC in any supported format (detected from file and tensor names unless --from is given), "
        "check every tensor against the architecture (the checkpoint's config, --config, or inferred from the weights) "
        "and stream it into DST. Formats: " + ", ".join(FORMAT_NAMES) + ".",
    )
    p.add_argument("src", metavar="SRC", help="checkpoint directory, weights file or hub id (owner/name)")
    p.add_argument("dst", metavar="DST", help="output directory or file (written whole, or not at all)")
    p.add_argument(
        "--from", dest="source_format", metavar="FORMAT", type=_format_name, help="format of SRC (detected by default)"
    )
    p.add_argument(
        "--to",
        dest="target_format",
        metavar="FORMAT",
        type=_format_name,
        help="format of DST (default hf, or from its name)",
    )
    p.add_argument(
        "--config",
        metavar="NAME_OR_JSON",
        help="architecture for weights that carry none (zoo name, config.json or directory); default: inferred",
    )
    p.add_argument(
        "--dtype", choices=list(OUTPUT_DTYPES), help="cast floating tensors (default: keep each tensor's dtype)"
    )
    p.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        type=_shard_size,
        metavar="SIZE",
        help="shard outputs above this (default 5GB)",
    )
    p.add_argument(
        "--bgr-to-rgb", action="store_true", help="flip the stem's input channels (pycls weights expect BGR)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="run the result in every installed backend against the source; exit 1 if they differ",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing DST (only once the new one is complete)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_convert)

    p = commands.add_parser("parity", help="compare every output of the frameworks on one input; exit 1 if they differ")
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint directory or zoo name (seeded random weights)")
    p.add_argument(
        "--frameworks", type=_frameworks, default=["pt", "tf", "flax"], help="comma-separated (default pt,tf,flax)"
    )
    p.add_argument("--batch", type=_positive_int, default=2)
    p.add_argument("--image-size", type=_positive_int, default=224)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the input batch and of a zoo name's random weights")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_parity)

    from .cli_bench import register as register_bench
    from .cli_export import register as register_export
    from .cli_predict import register as register_predict

    register_predict(commands)
    register_export(commands)
    register_bench(commands)
    return parser


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# What the user can fix (exit 2); anything else is an internal error (exit 3).
USER_ERRORS = (UsageError, ValueError, OSError, BackendUnavailableError)


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (Keras' colour codes and framing newlines removed)."""
    text = " ".join(_ANSI_ESCAPE.sub("", str(error)).split())
    return text or type(error).__name__


def error_report(error: BaseException) -> tuple[int, str]:
    """(exit code, the one line printed on stderr) for an exception that ended a command."""
    if isinstance(error, MemoryError):  # the input asked for more than the machine has (a batch, an image size)
        return EXIT_BAD_INPUT, f"regnet: error: out of memory: {_one_line(error)} (try a smaller batch or image size)"
    if isinstance(error, USER_ERRORS):
        return EXIT_BAD_INPUT, f"regnet: error: {_one_line(error)}"
    return (
        EXIT_INTERNAL_ERROR,
        f"regnet: internal error: {type(error).__name__}: {_one_line(error)} "
        f"(a bug; rerun with {DEBUG_FLAG} for the traceback and report it)",
    )


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """argv without the --debug flag (accepted anywhere before a '--'), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    return [arg for index, arg in enumerate(argv) if index >= end or arg != DEBUG_FLAG], debug


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing at exit does not fail again on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    debug = debug or os.environ.get(DEBUG_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")
    try:
        args = build_parser().parse_args(argv)
        code = args.run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (regnet list | head -1): nothing left to say
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("regnet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        code, line = error_report(error)
        if debug:
            traceback.print_exc()
        print(line, file=sys.stderr)
        return code


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
