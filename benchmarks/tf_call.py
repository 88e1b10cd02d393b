"""Inference speed of the TensorFlow model as users call it, against timm's PyTorch RegNet (channels_last).

    python benchmarks/tf_call.py [--cases regnet-y-040:8,regnet-x-002:32,...] [--modes eager,predict,function]
                                 [--rounds 5] [--dtype float32|mixed_bfloat16] [--size 224] [--threads 2]
                                 [--baseline-root DIR] [--json]

Each case is ``zoo-name:batch``. The PyTorch side (timm's model of the same name, random weights,
``eval()``, channels_last, ``torch.inference_mode()``) and the TensorFlow side (random weights)
run in separate long-lived worker processes, so neither runtime's thread pools disturb the
other; the driver asks them in turn, never at once: timm, then each TensorFlow mode, round after
round, after two warm-up calls of each. timm runs twice, in two workers: with PyTorch's
default OpenMP threads (which spin while waiting) and with ``OMP_WAIT_POLICY=PASSIVE`` (which
is several times faster when another process keeps a core busy, as on a shared machine). A
round's figure is the mean of as many calls as fill about 0.3 s. It prints the best and the
median round of each, and ``x timm``: the better timm worker's best round time over the
mode's best (above 1 is faster than timm).

TensorFlow modes: ``eager`` is ``model(x, training=False)``, ``predict`` is
``model.predict(x, batch_size=batch)`` on a numpy batch, ``function`` is a user's
``tf.function(lambda x: model(x, training=False)["logits"])``, ``plain`` is the eager call
with the compiled fast path switched off (``regnet_tf.modeling.compiled_calls(False)``).
``--baseline-root DIR`` adds the same modes (but ``plain``) timed on the regnet_tf of another
checkout, as ``old-<mode>`` (e.g. ``mkdir /tmp/regnet-old && git archive HEAD | tar -x -C
/tmp/regnet-old``). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# A worker for --baseline-root imports the packages from that checkout instead of this one.
ROOT = Path(os.environ.get("REGNET_BENCH_ROOT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))

DEFAULT_CASES = "regnet-y-040:8,regnet-x-002:32,regnet-y-040:1,regnet-x-002:1"
TARGET_SECONDS = 0.3


# ----------------------------------------------------------------------------- workers


def _torch_worker(name: str, batch: int, size: int, threads: int, dtype: str) -> Any:
    """A callable running timm's model once on a fixed channels_last batch."""
    import numpy as np
    import torch

    from regnet_core import get_entry
    from tests.peers import peer

    timm = peer("timm")
    torch.set_num_threads(threads)
    model = timm.create_model(get_entry(name).timm_name, pretrained=False).eval()
    model = model.to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)  # an NCHW view of NHWC memory: channels_last
    autocast = dtype != "float32"

    def step(mode: str) -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            model(pixels)

    return step


def _tf_worker(name: str, batch: int, size: int, threads: int, dtype: str) -> Any:
    """A callable running the TensorFlow model once, in the mode it is given."""
    import numpy as np

    import regnet_tf  # noqa: F401  (sets the Keras backend and oneDNN before TensorFlow loads)

    # isort: split
    import tensorflow as tf

    from regnet_core import build_model_spec, get_config, random_state
    from regnet_tf import backend, modeling

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    config = get_config(name)
    state = random_state(build_model_spec(config), 0, True)
    extra = {} if dtype == "float32" else {"dtype": dtype}
    model = backend.from_canonical(config, state, True, **extra)
    images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    pixels = tf.constant(images)
    function = tf.function(lambda x: model(x, training=False)["logits"])

    def step(mode: str) -> None:
        if mode == "eager":
            model(pixels, training=False)["logits"]
        elif mode == "plain":
            with modeling.compiled_calls(False):
                model(pixels, training=False)["logits"]
        elif mode == "predict":
            model.predict(images, batch_size=batch, verbose=0)
        elif mode == "function":
            function(pixels)
        else:
            raise ValueError(f"unknown mode {mode!r}")

    return step


def worker(side: str, name: str, batch: int, size: int, threads: int, dtype: str) -> None:
    """Serve ``MODE NUMBER`` requests on stdin: run NUMBER calls, answer their mean seconds."""
    step = (_torch_worker if side == "torch" else _tf_worker)(name, batch, size, threads, dtype)
    print("ready", flush=True)
    for line in sys.stdin:
        mode, number = line.split()
        started = time.perf_counter()
        for _ in range(int(number)):
            step(mode)
        print((time.perf_counter() - started) / int(number), flush=True)


# ----------------------------------------------------------------------------- driver


class Worker:
    """A worker process answering timing requests."""

    def __init__(
        self, side: str, name: str, batch: int, args: argparse.Namespace, root: Path = ROOT, **env: str
    ) -> None:
        command = [sys.executable, __file__, "--worker", side, "--cases", f"{name}:{batch}"]
        command += ["--size", str(args.size), "--threads", str(args.threads), "--dtype", args.dtype]
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "REGNET_BENCH_ROOT": str(root),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **env,
        }
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._expect("ready")

    def _expect(self, word: str) -> None:
        line = self.process.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"worker said {line!r}, expected {word!r}")

    def time(self, mode: str, number: int = 1) -> float:
        """Mean seconds of ``number`` calls in ``mode``."""
        self.process.stdin.write(f"{mode} {number}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        """End the worker."""
        self.process.stdin.close()
        self.process.wait()


def run_case(name: str, batch: int, modes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of timm (OpenMP threads spinning, and passive) and every TensorFlow mode for one case."""
    torch_worker, tf_worker = Worker("torch", name, batch, args), Worker("tf", name, batch, args)
    passive_worker = Worker("torch", name, batch, args, OMP_WAIT_POLICY="PASSIVE")
    workers = [torch_worker, passive_worker, tf_worker]
    try:
        plan = [("timm", torch_worker, "timm"), ("timm-pass", passive_worker, "timm")]
        plan += [(mode, tf_worker, mode) for mode in modes]
        if args.baseline_root:
            old_worker = Worker("tf", name, batch, args, root=Path(args.baseline_root).resolve())
            workers.append(old_worker)
            plan += [(f"old-{mode}", old_worker, mode) for mode in modes if mode != "plain"]
        numbers = {}
        for label, process, mode in plan:  # warm-up; the second call sets how many calls fill a round
            process.time(mode)
            numbers[label] = max(1, round(TARGET_SECONDS / process.time(mode)))
        rounds: dict[str, list[float]] = {label: [] for label, _, _ in plan}
        for _ in range(args.rounds):
            for label, process, mode in plan:
                rounds[label].append(process.time(mode, numbers[label]))
    finally:
        for process in workers:
            process.close()
    timm_best = min(min(rounds["timm"]), min(rounds["timm-pass"]))
    return {
        "case": f"{name}:{batch}",
        "results": {
            label: {
                "best_ms": 1e3 * min(times),
                "median_ms": 1e3 * statistics.median(times),
                "x_timm": timm_best / min(times),
                "calls_per_round": numbers[label],
            }
            for label, times in rounds.items()
        },
    }


def main() -> None:
    """Parse the arguments; drive the workers, or be one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--modes", default="eager,predict,function")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "mixed_bfloat16", "bfloat16"])
    parser.add_argument("--baseline-root", help="another checkout (e.g. a git worktree) timed as old-<mode>")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["torch", "tf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = [(case.split(":")[0], int(case.split(":")[1])) for case in args.cases.split(",")]
    if args.worker:
        worker(args.worker, *cases[0], args.size, args.threads, args.dtype)
        return
    reports = []
    for name, batch in cases:
        report = run_case(name, batch, args.modes.split(","), args)
        reports.append(report)
        if not args.json:
            print(f"{report['case']} at {args.size}, {args.dtype}, {args.threads} threads")
            for label, result in report["results"].items():
                print(
                    f"  {label:12s} best {result['best_ms']:9.2f} ms  median {result['median_ms']:9.2f} ms"
                    f"  x timm {result['x_timm']:5.2f}"
                )
    if args.json:
        print(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
