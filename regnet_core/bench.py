"""`regnet bench`: inference speed of our backends and of the installed peers (timm, transformers), in one run.

Every entry (ours: pt, tf eager, tf predict, flax; peers: timm NCHW and channels_last, transformers PyTorch, TF
and Flax) runs in its own worker process (regnet_core.bench_worker), so its peak RSS is its own and frameworks do
not compete for threads. The workers build their models and warm up, then the parent interleaves rounds: in
round r it asks each worker in turn to time one round (several calls at batch B, then several at batch 1) while
the others idle, so that every entry sees the same conditions. A 2048x2048 matmul is measured the same way, as the
machine's reference rate. Entries are ranked on their best round: the machine may be shared and noisy.

Also measured unless switched off: cold start (process start to first logits from a checkpoint directory, in a
fresh process, per backend) and the time ``import regnet_core`` takes.

Peers come from ``import timm`` / ``import transformers``; when timm is not importable but the environment
variable ``REGNET_BENCH_PEERS_PATH`` names a directory holding it (e.g. this repository's ``.peers``), the
workers import it from there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .backends import FRAMEWORKS, architecture_name, framework_name, resolve_checkpoint
from .checkpoint import save_checkpoint
from .complexity import model_complexity
from .config import RegNetConfig
from .specs import build_model_spec
from .zoo import ZOO

DTYPES = ("float32", "bfloat16")
PEERS = ("timm", "timm-channels-last", "transformers-pt", "transformers-tf", "transformers-flax")
OURS = {"pt": ("pt",), "tf": ("tf", "tf-predict"), "flax": ("flax",)}
_FRAMEWORK_OF = {
    "pt": "pt",
    "tf": "tf",
    "tf-predict": "tf",
    "flax": "flax",
    "timm": "pt",
    "timm-channels-last": "pt",
    "transformers-pt": "pt",
    "transformers-tf": "tf",
    "transformers-flax": "flax",
}
ENTRY_NAMES = tuple(_FRAMEWORK_OF)
# The module whose presence says a framework is installed (found without importing it).
_FRAMEWORK_MODULE = {"pt": "torch", "tf": "tensorflow", "flax": "flax"}
IMPORT_TARGET_SECONDS = 0.3
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_PACKAGES = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "tf_keras": ("tf_keras", "tf-keras"),
    "jax": ("jax",),
    "jaxlib": ("jaxlib",),
    "flax": ("flax",),
    "timm": ("timm",),
    "transformers": ("transformers",),
}
NOISE_NOTE = (
    "the machine may be shared and noisy: entries are ranked on their best round (medians show the spread); "
    "read ratios, not single figures"
)
_ARCHITECTURE_FIELDS = (
    "num_channels",
    "embedding_size",
    "hidden_sizes",
    "depths",
    "groups_width",
    "layer_type",
    "hidden_act",
    "downsample_in_first_stage",
    "se_ratio",
    "bottleneck_ratio",
)

Log = Callable[[str], None]
WORKER_COMMAND = (sys.executable, "-m", "regnet_core.bench_worker")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class WorkerError(RuntimeError):
    """A worker that died, timed out or answered nonsense; the message is one line."""


@dataclass
class BenchSettings:
    """What `regnet bench` measures and how."""

    model: str
    batch: int = 8
    image_size: int = 224
    dtype: str = "float32"
    frameworks: Sequence[str] | None = None  # ours: pt, tf (with tf-predict), flax; None: every installed one
    peers: bool = False
    rounds: int = 5
    warmup: int = 3
    round_time: float = 1.0
    seed: int = 0
    cold_start: bool = True
    cold_start_runs: int = 2
    timeout: float = 600.0
    peers_path: str | None = None
    skip: Sequence[str] = ()  # entry names left out

    def validate(self) -> None:
        """Raise ValueError (one line) on a bad setting."""
        for name in ("batch", "image_size", "rounds", "warmup", "cold_start_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if not self.round_time > 0 or not self.timeout > 0:
            raise ValueError("round time and timeout must be positive")
        unknown = [name for name in self.skip if name not in ENTRY_NAMES]
        if unknown:
            raise ValueError(f"unknown entry {unknown[0]!r} to skip; expected some of {', '.join(ENTRY_NAMES)}")
        if self.frameworks is not None:
            self.frameworks = [framework_name(name) for name in self.frameworks]
            if not self.frameworks:
                raise ValueError("no framework given")


# ----------------------------------------------------------------------------- machine
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break
    except OSError:
        pass
    return info


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (avx512f, avx512_bf16, ...); empty where it cannot tell."""
    return set(_cpuinfo().get("flags", "").split())


def machine_info() -> dict[str, Any]:
    """CPU model, cores, bfloat16 units and the Python / OS this runs on."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "bf16_flags": sorted(flags & set(BF16_FLAGS)),
        "has_bf16_units": bool(flags & set(BF16_FLAGS)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def package_versions(peers_path: str | None = None) -> dict[str, str]:
    """Installed versions of the frameworks and peers (from package metadata; nothing is imported)."""
    versions: dict[str, str] = {}
    paths = [None] + ([peers_path] if peers_path else [])
    for key, distributions in _PACKAGES.items():
        for distribution in distributions:
            for path in paths:
                try:
                    if path is None:
                        versions[key] = importlib.metadata.version(distribution)
                    else:
                        found = next(iter(importlib.metadata.distributions(name=distribution, path=[path])), None)
                        if found is None:
                            continue
                        versions[key] = found.version
                except importlib.metadata.PackageNotFoundError:
                    continue
                break
            if key in versions:
                break
    return versions


def installed_frameworks() -> list[str]:
    """Our frameworks whose library is installed (found without importing it)."""
    return [name for name in FRAMEWORKS if importlib.util.find_spec(_FRAMEWORK_MODULE[name]) is not None]


# ----------------------------------------------------------------------------- model
def timm_name_of(config: RegNetConfig) -> str | None:
    """timm's name for the architecture of ``config``, when it is a zoo architecture timm has."""
    fields = {name: getattr(config, name) for name in _ARCHITECTURE_FIELDS}
    for entry in ZOO.values():
        if entry.timm_name and {name: getattr(entry.config(), name) for name in _ARCHITECTURE_FIELDS} == fields:
            return entry.timm_name
    return None


@dataclass
class PreparedModel:
    """The model every worker loads: a checkpoint directory and what the report needs about it."""

    source: str
    directory: str
    config: RegNetConfig
    with_head: bool
    flops: int
    params: int
    timm_name: str | None


def prepare_model(model: str, image_size: int, seed: int, directory: str) -> PreparedModel:
    """Resolve MODEL (zoo name: seeded random weights; or a checkpoint) and save it as a checkpoint directory."""
    config, state, with_head, source = resolve_checkpoint(model, seed)
    save_checkpoint(directory, config, state, architecture=architecture_name(with_head))
    del state
    spec_config = config if with_head else config.copy(num_labels=0)
    report = model_complexity(build_model_spec(spec_config), image_size)
    return PreparedModel(source, directory, config, with_head, report.flops, report.params, timm_name_of(config))


# ----------------------------------------------------------------------------- workers
def _child_env(settings: BenchSettings) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if settings.peers_path:
        env["REGNET_BENCH_PEERS_PATH"] = settings.peers_path
    return env


def _last_line(handle: IO[bytes]) -> str:
    handle.seek(0)
    lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


class Worker:
    """One worker process, spoken to in JSON lines; every failure becomes a one-line WorkerError."""

    def __init__(self, name: str, env: dict[str, str], command: Sequence[str] | None = None) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            list(command or WORKER_COMMAND),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            text=True,
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def send(self, message: dict[str, Any]) -> None:
        """Write one request."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"worker exited: {self.stderr_tail()}") from None

    def receive(self, timeout: float, during: str) -> dict[str, Any]:
        """The next reply; raises WorkerError if the worker dies or takes longer than ``timeout`` seconds."""
        try:
            line = self.replies.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            self.close(kill=True)
            raise WorkerError(f"timed out after {timeout:.0f} s during {during}") from None
        if line is None:
            self.process.wait()
            raise WorkerError(f"worker exited (code {self.process.returncode}) during {during}: {self.stderr_tail()}")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise WorkerError(f"unreadable reply during {during}: {line.strip()[:200]}") from None

    def poll(self, during: str, started: float, timeout: float) -> dict[str, Any] | None:
        """The reply if one has come, else None; raises WorkerError ``timeout`` seconds after ``started``."""
        if not self.replies.empty():
            return self.receive(1.0, during)
        if time.monotonic() - started > timeout:
            self.close(kill=True)
            raise WorkerError(f"timed out after {timeout:.0f} s during {during}")
        return None

    def request(self, message: dict[str, Any], timeout: float, during: str) -> dict[str, Any]:
        """Send a request and wait for its reply."""
        self.send(message)
        return self.receive(timeout, during)

    def stderr_tail(self) -> str:
        """The last non-empty line the worker wrote to stderr."""
        try:
            return _last_line(self.stderr)
        except (OSError, ValueError):
            return "(stderr unreadable)"

    def close(self, kill: bool = False) -> None:
        """Stop the process (end of input for an idle one; killed if busy or ``kill``) and release its files."""
        if self.process.poll() is None:
            try:
                if kill:
                    raise OSError
                if self.process.stdin is not None:
                    self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        if not self.stderr.closed:
            self.stderr.close()


def _summary(values: list[float], best: Callable[[list[float]], float]) -> dict[str, Any]:
    return {"best": best(values), "median": statistics.median(values), "rounds": values}


@dataclass
class _Slot:
    name: str
    kind: str  # ours, peer, matmul
    request: dict[str, Any]
    worker: Worker | None = None
    result: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.worker is not None and self.result.get("status") == "ok"

    def fail(self, status: str, reason: str) -> None:
        self.result.update(status=status, reason=" ".join(str(reason).split()))
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def _entries(settings: BenchSettings) -> list[tuple[str, str]]:
    chosen = list(settings.frameworks) if settings.frameworks is not None else installed_frameworks()
    if not chosen:
        chosen = list(FRAMEWORKS)  # none installed: every entry reports why
    names = [(name, "ours") for framework in FRAMEWORKS if framework in chosen for name in OURS[framework]]
    if settings.peers:
        names += [(name, "peer") for name in PEERS]
    return [(name, kind) for name, kind in names if name not in settings.skip]


def _measure(settings: BenchSettings, prepared: PreparedModel, log: Log) -> tuple[list[_Slot], list[_Slot]]:
    env = _child_env(settings)
    common = {
        "checkpoint": prepared.directory,
        "batch": settings.batch,
        "image_size": settings.image_size,
        "dtype": settings.dtype,
        "seed": settings.seed,
        "warmup": settings.warmup,
        "timm_name": prepared.timm_name,
        "with_head": prepared.with_head,
        "num_labels": prepared.config.num_labels if prepared.with_head else 0,
    }
    matmul_dtypes = ["float32"] + (["bfloat16"] if settings.dtype == "bfloat16" else [])
    slots = [
        _Slot(
            f"matmul-{dtype}",
            "matmul",
            {**common, "entry": "matmul", "dtype": dtype, "round_time": settings.round_time},
        )
        for dtype in matmul_dtypes
    ]
    slots += [_Slot(name, kind, {**common, "entry": name}) for name, kind in _entries(settings)]
    try:
        _set_up(slots, settings, env, log)
        for slot in slots:  # one at a time, so that each calibrates on a quiet machine
            if slot.active:
                _call(slot, {"op": "calibrate", "round_time": settings.round_time}, settings.timeout, "calibration")
        for index in range(settings.rounds):
            log(f"round {index + 1}/{settings.rounds}")
            for slot in slots:
                if slot.active:
                    others = [other.worker.process.pid for other in slots if other.active and other is not slot]
                    before = _cpu_seconds(others)
                    reply = _call(slot, {"op": "round"}, settings.timeout, f"round {index + 1}")
                    if reply is not None:
                        reply.pop("ok", None)
                        # CPU time the idle workers used meanwhile: should be ~0 (they must not compete).
                        reply["idle_workers_cpu_seconds"] = _cpu_seconds(others) - before
                        slot.rounds.append(reply)
        for slot in slots:
            if slot.active:
                reply = _call(slot, {"op": "finish"}, 60.0, "finish")
                if reply is not None and reply.get("peak_rss_bytes"):
                    slot.result["peak_rss_mib"] = reply["peak_rss_bytes"] / 2**20
                if reply is not None:
                    slot.result["worker_cpu_seconds"] = reply.get("cpu_seconds")
    finally:
        for slot in slots:
            if slot.worker is not None:
                slot.worker.close()
                slot.worker = None
    return [slot for slot in slots if slot.kind == "matmul"], [slot for slot in slots if slot.kind != "matmul"]


def _set_up(slots: list[_Slot], settings: BenchSettings, env: dict[str, str], log: Log) -> None:
    """Start the workers, as many building and warming up at once as there are cores; record their replies."""
    pending = list(slots)
    running: list[tuple[_Slot, float]] = []  # (slot, start time)
    limit = max(2, machine_info()["usable_cores"])
    log(f"building and warming up {len(slots)} entries, {min(limit, len(slots))} at a time")
    while pending or running:
        while pending and len(running) < limit:
            slot = pending.pop(0)
            slot.worker = Worker(slot.name, env)
            try:
                slot.worker.send({"op": "setup", **slot.request})
            except WorkerError as error:
                slot.fail("failed", str(error))
                continue
            running.append((slot, time.monotonic()))
        still = []
        for slot, started in running:
            assert slot.worker is not None
            try:
                reply = slot.worker.poll("setup", started, settings.timeout)
            except WorkerError as error:
                slot.fail("failed", str(error))
                log(f"  {slot.name}: failed")
                continue
            if reply is None:
                still.append((slot, started))
                continue
            slot.result["versions"] = reply.get("versions") or {}
            if not reply.get("ok"):
                slot.fail(reply.get("status", "failed"), reply.get("reason", "no reason given"))
                log(f"  {slot.name}: {slot.result['status']}")
                continue
            slot.result.update(
                status="ok",
                description=reply.get("description"),
                build_seconds=reply.get("build_seconds"),
                setup_seconds=reply.get("setup_seconds"),
            )
            log(f"  {slot.name}: ready ({reply.get('setup_seconds', 0):.1f} s)")
        running = still
        if running:
            time.sleep(0.05)


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU seconds of processes so far (Linux /proc; 0 elsewhere)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / _CLOCK_TICKS


def _call(slot: _Slot, message: dict[str, Any], timeout: float, during: str) -> dict[str, Any] | None:
    assert slot.worker is not None
    try:
        reply = slot.worker.request(message, timeout, during)
    except WorkerError as error:
        slot.fail("failed", str(error))
        return None
    if not reply.get("ok"):
        slot.fail(reply.get("status", "failed"), f"{during}: {reply.get('reason', 'no reason given')}")
        return None
    if message["op"] == "calibrate":
        slot.result.update(iters=reply.get("iters"), iters_batch1=reply.get("iters1"))
    return reply


# ----------------------------------------------------------------------------- cold start
_COLD_START = {
    "pt": """
import torch, regnet_pt
imported = time.time()
cls = regnet_pt.RegNetForImageClassification if HEAD else regnet_pt.RegNetModel
model = cls.from_pretrained(DIRECTORY)
loaded = time.time()
with torch.inference_mode():
    model(torch.zeros(1, 3, SIZE, SIZE))
""",
    "tf": """
import tensorflow as tf, regnet_tf
imported = time.time()
cls = regnet_tf.RegNetForImageClassification if HEAD else regnet_tf.RegNetModel
model = cls.from_pretrained(DIRECTORY)
loaded = time.time()
model(tf.zeros((1, SIZE, SIZE, 3)), training=False)
""",
    "flax": """
import jax, jax.numpy as jnp, regnet_flax
imported = time.time()
module, variables = regnet_flax.from_pretrained(DIRECTORY, with_head=HEAD)
loaded = time.time()
jax.block_until_ready(jax.jit(module.apply)(variables, jnp.zeros((1, SIZE, SIZE, 3))))
""",
}


def _cold_start_script(framework: str, directory: str, size: int, with_head: bool) -> str:
    body = (
        _COLD_START[framework]
        .replace("DIRECTORY", repr(directory))
        .replace("SIZE", str(size))
        .replace("HEAD", repr(with_head))
    )
    return "import time\n" + body + 'print("REGNET_BENCH", imported, loaded, time.time())\n'


def _run_timed(script: str, env: dict[str, str], timeout: float) -> tuple[float, list[float]]:
    """Run ``python -c script``; (start wall time, times the script printed)."""
    started = time.time()
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise WorkerError(f"timed out after {timeout:.0f} s") from None
    for line in done.stdout.splitlines():
        if line.startswith("REGNET_BENCH "):
            return started, [float(value) for value in line.split()[1:]]
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    raise WorkerError(f"exit code {done.returncode}: {lines[-1][:300] if lines else '(no output)'}")


def cold_start(settings: BenchSettings, prepared: PreparedModel, frameworks: Sequence[str], log: Log) -> dict[str, Any]:
    """Seconds from process start to first logits (batch 1), per backend, best of ``cold_start_runs``."""
    env = _child_env(settings)
    results: dict[str, Any] = {}
    for framework in frameworks:
        if importlib.util.find_spec(_FRAMEWORK_MODULE[framework]) is None:
            results[framework] = {"status": "unavailable", "reason": f"{_FRAMEWORK_MODULE[framework]} is not installed"}
            continue
        script = _cold_start_script(framework, prepared.directory, settings.image_size, prepared.with_head)
        runs = []
        try:
            for _ in range(settings.cold_start_runs):
                started, (imported, loaded, done) = _run_timed(script, env, settings.timeout)
                runs.append(
                    {"seconds": done - started, "import_seconds": imported - started, "load_seconds": loaded - imported}
                )
        except (WorkerError, ValueError) as error:
            results[framework] = {"status": "failed", "reason": " ".join(str(error).split())}
            continue
        best = min(runs, key=lambda run: run["seconds"])
        results[framework] = {"status": "ok", **best, "runs": [run["seconds"] for run in runs]}
        log(f"  cold start {framework}: {best['seconds']:.2f} s")
    return results


def import_time(settings: BenchSettings, runs: int = 3) -> dict[str, Any]:
    """Seconds ``import regnet_core`` takes in a fresh process (best of ``runs``), against the 0.3 s target."""
    script = (
        "import time\nt = time.perf_counter()\nimport regnet_core\nprint('REGNET_BENCH', time.perf_counter() - t)\n"
    )
    env = _child_env(settings)
    values = []
    try:
        for _ in range(runs):
            values.append(_run_timed(script, env, 120.0)[1][0])
    except (WorkerError, ValueError, IndexError) as error:
        return {"status": "failed", "reason": " ".join(str(error).split()), "target_seconds": IMPORT_TARGET_SECONDS}
    best = min(values)
    return {
        "status": "ok",
        "seconds": best,
        "runs": values,
        "target_seconds": IMPORT_TARGET_SECONDS,
        "meets_target": best < IMPORT_TARGET_SECONDS,
    }


# ----------------------------------------------------------------------------- report
def _entry_report(slot: _Slot, settings: BenchSettings, prepared: PreparedModel) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": slot.name,
        "kind": slot.kind,
        "framework": _FRAMEWORK_OF[slot.name],
        "status": slot.result.get("status", "failed"),
        "reason": slot.result.get("reason"),
        "description": slot.result.get("description"),
    }
    if result["status"] == "ok" and not slot.rounds:
        result.update(status="failed", reason="no round completed")
    if result["status"] != "ok":
        return result
    throughput = [settings.batch * r["iters"] / r["seconds"] for r in slot.rounds]
    latency = [1000.0 * r["seconds1"] / r["iters1"] for r in slot.rounds]
    images = _summary(throughput, max)
    gflops = 2 * prepared.flops * images["best"] / 1e9
    result.update(
        images_per_second=images,
        latency_ms=_summary(latency, min),
        gflops_per_second=gflops,
        gflops_per_second_median=2 * prepared.flops * images["median"] / 1e9,
        peak_rss_mib=slot.result.get("peak_rss_mib"),
        cores_used=statistics.median(r["cores_used"] for r in slot.rounds),
        idle_workers_cpu_seconds=sum(r.get("idle_workers_cpu_seconds", 0.0) for r in slot.rounds),
        raw_rounds=slot.rounds,
        iters=slot.result.get("iters"),
        iters_batch1=slot.result.get("iters_batch1"),
        worker_cpu_seconds=slot.result.get("worker_cpu_seconds"),
        build_seconds=slot.result.get("build_seconds"),
        setup_seconds=slot.result.get("setup_seconds"),
    )
    return result


def _matmul_report(slot: _Slot) -> dict[str, Any]:
    result: dict[str, Any] = {
        "dtype": slot.request["dtype"],
        "status": slot.result.get("status", "failed"),
        "reason": slot.result.get("reason"),
        "description": slot.result.get("description"),
    }
    if result["status"] == "ok" and slot.rounds:
        result.update(gflops_per_second=_summary([r["gflops"] for r in slot.rounds], max), raw_rounds=slot.rounds)
    elif result["status"] == "ok":
        result.update(status="failed", reason="no round completed")
    return result


def _rank(entries: list[dict[str, Any]], matmul: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    measured = [e for e in entries if e["status"] == "ok"]
    for rank, entry in enumerate(sorted(measured, key=lambda e: -e["images_per_second"]["best"]), start=1):
        entry["rank"] = rank
    entries.sort(key=lambda e: (e.get("rank") is None, e.get("rank") or 0))
    if matmul is not None and matmul.get("status") == "ok":
        reference = matmul["gflops_per_second"]["best"]
        for entry in measured:
            entry["matmul_fraction"] = entry["gflops_per_second"] / reference
    else:
        notes.append("the matmul was not measured: no fraction of it is given")
    peers = [e for e in measured if e["kind"] == "peer"]
    if not peers:
        notes.append("no peer ran: ratios to the best peer (timm, transformers) are omitted")
        return {"throughput": None, "latency": None}
    fastest = max(peers, key=lambda e: e["images_per_second"]["best"])
    quickest = min(peers, key=lambda e: e["latency_ms"]["best"])
    for entry in measured:
        entry["throughput_vs_best_peer"] = entry["images_per_second"]["best"] / fastest["images_per_second"]["best"]
        entry["latency_vs_best_peer"] = quickest["latency_ms"]["best"] / entry["latency_ms"]["best"]
    notes.append(
        f"ratios compare best rounds with the best peer: throughput against {fastest['name']}, batch-1 latency "
        f"against {quickest['name']}; above 1 is faster than that peer"
    )
    return {"throughput": fastest["name"], "latency": quickest["name"]}


def run_bench(settings: BenchSettings, log: Log | None = None) -> dict[str, Any]:
    """Measure every entry and return the whole report as a JSON-ready dict."""
    settings.validate()
    say = log or (lambda message: None)
    peers_path = settings.peers_path or os.environ.get("REGNET_BENCH_PEERS_PATH")
    settings.peers_path = peers_path
    notes: list[str] = [NOISE_NOTE]
    machine = machine_info()
    load = (machine["load_average"] or [0.0])[0]
    if load > 0.5 * machine["usable_cores"]:
        notes.append(
            f"the load average was {load:.1f} on {machine['usable_cores']} cores when the run started: other "
            "processes were busy, and multi-threaded entries (see the cores column) suffer most"
        )
    if settings.dtype == "bfloat16" and not machine["has_bf16_units"]:
        notes.append(
            "this CPU has no bfloat16 units (no avx512_bf16 / amx_bf16): bfloat16 runs emulated and slowly, "
            "and its figures say little about CPUs that have them (PyTorch's emulated bfloat16 matmul can be slower "
            "than a whole model elsewhere, so % of matmul may pass 100)"
        )
    with tempfile.TemporaryDirectory(prefix="regnet-bench-") as work:
        prepared = prepare_model(settings.model, settings.image_size, settings.seed, os.path.join(work, "checkpoint"))
        say(f"{prepared.source}: {2 * prepared.flops / 1e9:.3f} GFLOP per image at {settings.image_size}")
        if settings.peers and not prepared.timm_name:
            notes.append("timm has no model with this architecture: the timm entries are not measured")
        matmul_slots, slots = _measure(settings, prepared, say)
        cold: dict[str, Any] | None = None
        imports: dict[str, Any] | None = None
        if settings.cold_start:
            say("cold start")
            frameworks = [f for f in FRAMEWORKS if any(_FRAMEWORK_OF[s.name] == f and s.kind == "ours" for s in slots)]
            cold = cold_start(settings, prepared, frameworks, say)
            imports = import_time(settings)
    entries = [_entry_report(slot, settings, prepared) for slot in slots]
    timed = sum(r["seconds"] + r.get("seconds1", 0.0) for slot in slots for r in slot.rounds)
    idle = sum(r.get("idle_workers_cpu_seconds", 0.0) for slot in slots for r in slot.rounds)
    if timed and idle > 0.05 * timed:
        notes.append(
            f"idle workers used {idle:.1f} CPU seconds during {timed:.1f} s of timed rounds: entries competed "
            "with each other"
        )
    matmuls = [_matmul_report(slot) for slot in matmul_slots]
    reference = next((m for m in matmuls if m["dtype"] == settings.dtype), None)
    best_peer = _rank(entries, reference, notes)
    versions: dict[str, str] = {}
    for slot in matmul_slots + slots:
        versions.update(slot.result.get("versions") or {})
    if settings.dtype == "bfloat16":
        notes.append(
            "bfloat16: PyTorch entries run under torch.autocast('cpu', dtype=torch.bfloat16), our TF model uses "
            "the mixed_bfloat16 policy and our Flax model dtype bfloat16; GFLOP/s is compared with the bfloat16 matmul"
        )
    if cold is not None:
        notes.append("cold start: a fresh process imports the backend, loads the checkpoint and runs batch 1 (float32)")
    return {
        "command": "regnet bench",
        "model": {
            "name": settings.model,
            "source": prepared.source,
            "timm_name": prepared.timm_name,
            "with_head": prepared.with_head,
            "layer_type": prepared.config.layer_type,
            "flops_per_image": prepared.flops,
            "gflop_per_image": 2 * prepared.flops / 1e9,
            "params": prepared.params,
        },
        "settings": {
            "batch": settings.batch,
            "image_size": settings.image_size,
            "dtype": settings.dtype,
            "frameworks": sorted({e["framework"] for e in entries if e["kind"] == "ours"}),
            "peers": settings.peers,
            "rounds": settings.rounds,
            "warmup": settings.warmup,
            "round_time": settings.round_time,
            "seed": settings.seed,
            "cold_start": settings.cold_start,
            "ranking": "best round (images/s at the batch size)",
        },
        "machine": machine,
        "versions": dict(sorted(versions.items())),
        "installed_versions": package_versions(peers_path),
        "matmul": matmuls,
        "best_peer": best_peer,
        "entries": entries,
        "cold_start": cold,
        "import_regnet_core": imports,
        "notes": notes,
    }


# ----------------------------------------------------------------------------- text
def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as text: settings, machine, a ranked table, unmeasured entries, cold start and notes."""
    model, settings, machine = report["model"], report["settings"], report["machine"]
    lines = [
        f"regnet bench: {model['source']}, batch {settings['batch']}, "
        f"{settings['image_size']}x{settings['image_size']}, {settings['dtype']}, {settings['rounds']} rounds of "
        f"~{settings['round_time']:g} s per entry after {settings['warmup']} warm-up calls, seed {settings['seed']}",
        f"model: {model['gflop_per_image']:.3f} GFLOP per image (2 x {model['flops_per_image']:,} multiply-adds), "
        f"{model['params']:,} parameters",
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), bf16 units: "
        + (
            f"yes ({', '.join(machine['bf16_flags'])})"
            if machine["has_bf16_units"]
            else "no (no avx512_bf16 / amx_bf16)"
        ),
        "versions used: python "
        + machine["python"]
        + "".join(f", {name} {version}" for name, version in report["versions"].items()),
        f"note: {NOISE_NOTE}",
    ]
    for matmul in report["matmul"]:
        if matmul["status"] == "ok":
            rate = matmul["gflops_per_second"]
            lines.append(
                f"matmul: {matmul['description']}: {rate['best']:.1f} GFLOP/s best, {rate['median']:.1f} median"
            )
        else:
            lines.append(f"matmul {matmul['dtype']}: {matmul['status']}: {matmul['reason']}")
    header = (
        f"{'rank':<5}{'entry':<20}{'img/s best':>11}{'median':>9}{'b1 ms best':>11}{'median':>9}"
        f"{'GFLOP/s':>9}{'% matmul':>9}{'peak MiB':>9}{'cores':>6}{'thr/peer':>9}{'lat/peer':>9}"
    )
    lines += ["", header, "-" * len(header)]
    for entry in report["entries"]:
        if entry["status"] != "ok":
            continue
        fraction = entry.get("matmul_fraction")
        lines.append(
            f"{entry['rank']:<5}{entry['name']:<20}{entry['images_per_second']['best']:>11.1f}"
            f"{entry['images_per_second']['median']:>9.1f}{entry['latency_ms']['best']:>11.2f}"
            f"{entry['latency_ms']['median']:>9.2f}{entry['gflops_per_second']:>9.1f}"
            f"{_number(None if fraction is None else 100 * fraction, 1):>9}{_number(entry.get('peak_rss_mib'), 0):>9}"
            f"{entry['cores_used']:>6.1f}"
            f"{_number(entry.get('throughput_vs_best_peer'), 2):>9}{_number(entry.get('latency_vs_best_peer'), 2):>9}"
        )
    others = [entry for entry in report["entries"] if entry["status"] != "ok"]
    if others:
        lines += ["", "not measured:"]
        lines += [f"  {entry['name']}: {entry['status']}: {entry['reason']}" for entry in others]
    if report["cold_start"] is not None:
        lines += ["", "cold start (process start to first logits at batch 1, best run):"]
        for framework, result in report["cold_start"].items():
            if result["status"] == "ok":
                lines.append(
                    f"  {framework:<5}{result['seconds']:.2f} s (imports {result['import_seconds']:.2f} s, "
                    f"load {result['load_seconds']:.2f} s, runs: {', '.join(f'{v:.2f}' for v in result['runs'])})"
                )
            else:
                lines.append(f"  {framework:<5}{result['status']}: {result['reason']}")
    imports = report["import_regnet_core"]
    if imports is not None:
        if imports["status"] == "ok":
            verdict = "met" if imports["meets_target"] else "NOT met"
            lines.append(
                f"import regnet_core: {imports['seconds']:.3f} s (target < {imports['target_seconds']} s: {verdict})"
            )
        else:
            lines.append(f"import regnet_core: failed: {imports['reason']}")
    lines += [""] + [f"note: {note}" for note in report["notes"][1:]]
    lines.append(
        "columns: img/s at the batch size and batch-1 latency (b1 ms), best and median round; GFLOP/s = 2 x "
        "multiply-adds x best img/s; cores: CPU seconds per second in the timed calls (median round); thr/peer and "
        "lat/peer: speed relative to the best peer (> 1 is faster)"
    )
    return "\n".join(lines)
