"""Conversion throughput and peak memory: regnet-y-320 between formats, and a synthetic sharded checkpoint over 4 GB.

    python benchmarks/convert.py [--work DIR] [--cases NAME,...] [--synthetic-model regnet-y-2560-seer] [--json]

Each conversion runs in a fresh process (so its peak RSS is its own), reading and writing on
local disk. Inputs are prepared first and not timed. For each case it prints the bytes read,
seconds, throughput (GB/s of source tensors), the process's peak RSS, the largest input
file (shard), and peak RSS minus that shard. Targets on the 2-core, 24 GB machine: peak RSS
<= largest shard + 300 MB, throughput >= 0.5 GB/s. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regnet_core import build_model_spec, get_config  # noqa: E402
from regnet_core.checkpoint import write_checkpoint_directory  # noqa: E402
from regnet_core.tensors import LazyTensor  # noqa: E402
from regnet_core.weights import BN_COUNT, BN_VAR, BN_WEIGHT, parameter_table  # noqa: E402

# The child reads its peak RSS from /proc/self/status (VmHWM): getrusage's ru_maxrss would carry
# the parent's peak over fork and exec on Linux.
_CHILD = r"""
import json, sys, time
def high_water():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
from regnet_core.convert import convert
source, destination, to_format, from_format = sys.argv[1:5]
baseline = high_water()
started = time.perf_counter()
report = convert(source, destination, from_format=from_format or None, to_format=to_format, progress=False,
                 max_shard_size=sys.argv[5])
seconds = time.perf_counter() - started
peak = high_water()
print(json.dumps({"seconds": seconds, "peak_rss": peak, "baseline_rss": baseline, "bytes": report.source.nbytes}))
"""


def synthetic_state(model: str, seed: int = 0) -> tuple[object, dict[str, LazyTensor]]:
    """A model's canonical tensors as lazy seeded random values: generated one tensor at a time, never all at once."""
    config = get_config(model)
    spec = build_model_spec(config)
    with_head = spec.head.num_labels > 0
    tensors = {}
    for index, tensor in enumerate(parameter_table(spec, with_head)):

        def make(tensor=tensor, index=index) -> np.ndarray:
            rng = np.random.default_rng([seed, index])
            if tensor.kind == BN_COUNT:
                return np.zeros((), np.int64)
            if tensor.kind in (BN_WEIGHT, BN_VAR):
                return rng.uniform(0.5, 1.5, tensor.shape).astype(np.float32)
            return (rng.standard_normal(tensor.shape, dtype=np.float32) * 0.05).astype(np.float32)

        tensors[tensor.name] = LazyTensor(tensor.shape, str(tensor.dtype), make, tensor.name)
    return config, tensors


def largest_file(path: Path) -> int:
    """Size of the largest file at a path (the file itself, or the largest in a directory)."""
    if path.is_file():
        return path.stat().st_size
    return max(p.stat().st_size for p in path.iterdir() if p.is_file())


def total_size(path: Path) -> int:
    """Bytes of a file or of every file in a directory."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())


def drop_caches() -> bool:
    """Empty the page cache (needs root); False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def warm(path: Path) -> None:
    """Read a file or directory once so that it sits in the page cache."""
    for file in _files(path):
        with open(file, "rb", buffering=0) as handle:
            while handle.read(1 << 24):
                pass


def disk_ceiling(source: Path, scratch: Path) -> dict:
    """This machine's sequential disk speeds: a cold read of ``source``, 2 GB writes, and a cold copy of ``source``."""
    result = {}
    if drop_caches():
        started = time.perf_counter()
        warm(source)
        result["cold_read_gb_per_s"] = (
            sum(f.stat().st_size for f in _files(source)) / (time.perf_counter() - started) / 1e9
        )
    block = np.zeros(1 << 24, np.uint8)
    started = time.perf_counter()
    with open(scratch, "wb") as handle:
        for _ in range(128):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    result["write_fsync_gb_per_s"] = 128 * block.nbytes / (time.perf_counter() - started) / 1e9
    scratch.unlink()
    if hasattr(os, "O_DIRECT"):  # what the converter's large outputs use (regnet_core.io.DirectWriter)
        from regnet_core.io import DirectWriter

        started = time.perf_counter()
        with DirectWriter(scratch) as handle:
            for _ in range(128):
                handle.write(block)
        result["write_direct_gb_per_s"] = 128 * block.nbytes / (time.perf_counter() - started) / 1e9
        scratch.unlink()
        if drop_caches():
            result["cold_copy_gb_per_s"] = cold_copy(source, scratch)
            scratch.unlink()
    return result


def cold_copy(source: Path, scratch: Path) -> float:
    """GB/s of copying ``source`` from a cold cache into one O_DIRECT file: the most any cold conversion gets here.

    A thread reads the files in order (16 MB at a time, at most four pieces ahead) while the
    caller writes them, as a converter with no work between reading and writing would.
    """
    from regnet_core.io import DirectWriter

    pieces: queue.Queue = queue.Queue(maxsize=4)

    def read() -> None:
        for file in _files(source):
            with open(file, "rb", buffering=0) as handle:
                while piece := handle.read(1 << 24):
                    pieces.put(piece)
        pieces.put(None)

    started = time.perf_counter()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    copied = 0
    with DirectWriter(scratch) as handle:
        while (piece := pieces.get()) is not None:
            copied += handle.write(piece)
    reader.join()
    return copied / (time.perf_counter() - started) / 1e9


def run_case(
    name: str, source: Path, destination: Path, to_format: str, from_format: str, shard: str, cold: bool = False
) -> dict:
    """One conversion in a fresh process; its timing and memory.

    The page cache is emptied first (earlier writes reach the disk). Warm: the source is then
    read once, so the conversion reads it from memory. Cold: the source comes from the disk.
    """
    if destination.exists():
        shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
    dropped = drop_caches()  # written data reaches the disk, and the page cache starts empty
    if cold:
        if not dropped:
            return {"name": name + ", cold", "skipped": "cannot drop the page cache here (not root)"}
        name += ", cold"
    else:
        warm(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", _CHILD, str(source), str(destination), to_format, from_format, shard]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row.update(
        name=name,
        gb_per_s=row["bytes"] / row["seconds"] / 1e9,
        largest_input_file=largest_file(source),
        output_bytes=total_size(destination),
    )
    row["rss_over_largest_file"] = row["peak_rss"] - row["largest_input_file"]
    return row


def main() -> None:
    """Prepare inputs, run every case, print the table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument(
        "--synthetic-model", default="regnet-y-2560-seer", help="model of the synthetic sharded checkpoint"
    )
    parser.add_argument("--synthetic-shard", default="1GB", help="shard size of the synthetic checkpoint")
    parser.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case and mode (median reported)")
    parser.add_argument(
        "--ten-b",
        action="store_true",
        help="also convert a synthetic regnet-y-10b-seer trunk (bfloat16, 2GB shards, 18.6 GB; needs ~40 GB of disk)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="regnet-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    y320 = work / "y320-hf"
    if not y320.exists():
        config, state = synthetic_state("regnet-y-320")
        write_checkpoint_directory(y320, config, state)
    y320_tf = work / "y320-hf-tf"
    if not y320_tf.exists():
        run_case("prepare hf-tf", y320, y320_tf, "hf-tf", "hf", "5GB")
    big = work / f"{args.synthetic_model}-sharded"
    if not big.exists():
        config, state = synthetic_state(args.synthetic_model)
        write_checkpoint_directory(big, config, state, max_shard_size=args.synthetic_shard)

    cases = [
        ("regnet-y-320 hf -> flax", y320, work / "y320.msgpack", "flax", "hf", "5GB"),
        ("regnet-y-320 hf -> keras", y320, work / "y320.weights.h5", "keras", "hf", "5GB"),
        ("regnet-y-320 hf-tf -> hf", y320_tf, work / "y320-back", "hf", "hf-tf", "5GB"),
        (f"{args.synthetic_model} sharded hf -> hf", big, work / "big-hf", "hf", "hf", "1GB"),
        (f"{args.synthetic_model} sharded hf -> flax", big, work / "big.msgpack", "flax", "hf", "5GB"),
        (f"{args.synthetic_model} sharded hf -> hf-tf", big, work / "big-hf-tf", "hf-tf", "hf", "1GB"),
    ]
    if args.ten_b:
        ten_b = work / "regnet-y-10b-seer-bf16-sharded"
        if not ten_b.exists():
            config, state = synthetic_state("regnet-y-10b-seer")
            dtypes = {name: "bfloat16" if tensor.dtype == "float32" else tensor.dtype for name, tensor in state.items()}
            write_checkpoint_directory(ten_b, config, state, dtypes=dtypes, max_shard_size="2GB")
        cases += [
            ("regnet-y-10b-seer bf16 sharded hf -> flax", ten_b, work / "10b.msgpack", "flax", "hf", "5GB"),
            ("regnet-y-10b-seer bf16 sharded hf -> hf (5GB shards)", ten_b, work / "10b-hf", "hf", "hf", "5GB"),
        ]
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    disk = {"before": disk_ceiling(big, work / "disk-test.bin")}  # the disk's pace moves: measured before and after
    rows = []
    for case in cases:
        if wanted and not any(w in case[0] for w in wanted):
            continue
        for cold in (False, True):
            runs = [run_case(*case, cold=cold) for _ in range(args.repeat if "10b" not in case[0] else 1)]
            destination = case[2]  # the outputs are measured, not kept: free their disk for the next case
            if destination.exists():
                shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
            done = [run for run in runs if "skipped" not in run]
            if not done:
                rows.append(runs[0])
                continue
            row = sorted(done, key=lambda run: run["seconds"])[len(done) // 2]  # the median run
            row["best_gb_per_s"] = max(run["gb_per_s"] for run in done)
            row["peak_rss"] = max(run["peak_rss"] for run in done)
            row["rss_over_largest_file"] = row["peak_rss"] - row["largest_input_file"]
            row["runs"] = len(done)
            rows.append(row)
            print(f"done: {row['name']}", file=sys.stderr)
    disk["after"] = disk_ceiling(big, work / "disk-test.bin")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "disk": disk, "rows": rows}, indent=2))
        return
    print(f"machine: {machine}; work dir {work}")
    for when, ceiling in disk.items():
        print(
            f"disk {when}: cold sequential read "
            + (
                f"{ceiling['cold_read_gb_per_s']:.2f} GB/s"
                if "cold_read_gb_per_s" in ceiling
                else "not measured (not root)"
            )
            + f", sequential write with fsync {ceiling['write_fsync_gb_per_s']:.2f} GB/s"
            + (
                f", O_DIRECT write {ceiling['write_direct_gb_per_s']:.2f} GB/s"
                if "write_direct_gb_per_s" in ceiling
                else ""
            )
            + (
                f", cold copy (read and O_DIRECT write at once) {ceiling['cold_copy_gb_per_s']:.2f} GB/s"
                if "cold_copy_gb_per_s" in ceiling
                else ""
            )
        )
    print("median of the runs (seconds, GB/s), best GB/s, and the highest peak RSS of any run")
    header = (
        f"{'case':<57}{'GB read':>8}{'s':>7}{'GB/s':>6}{'best':>6}{'peak RSS':>10}{'largest':>9}{'RSS-largest':>12}"
    )
    print(header)
    for row in rows:
        if "skipped" in row:
            print(f"{row['name']:<57} skipped: {row['skipped']}")
            continue
        print(
            f"{row['name']:<57}{row['bytes'] / 1e9:>8.2f}{row['seconds']:>7.1f}{row['gb_per_s']:>6.2f}"
            f"{row['best_gb_per_s']:>6.2f}{row['peak_rss'] / 1e9:>9.2f}G{row['largest_input_file'] / 1e9:>8.2f}G"
            f"{row['rss_over_largest_file'] / 1e6:>10.0f}MB"
        )


if __name__ == "__main__":
    main()
