"""One `regnet bench` entry in its own process, driven by regnet_core.bench over stdin / stdout (JSON lines).

Requests and replies, one JSON object per line:

- ``{"op": "setup", "entry": ..., "checkpoint": DIR, "batch": B, "image_size": N, "dtype": ..., ...}``: import
  the framework, build the model and warm up at batch B and at batch 1; replies
  ``{"ok": true, "versions": {...}, "description": ...}`` or
  ``{"ok": false, "status": "failed" | "unavailable" | "not measured", "reason": ...}``;
- ``{"op": "calibrate", "round_time": T}``: pick how many calls (n at batch B, m at batch 1) fill T seconds;
- ``{"op": "round"}``: time ``n`` calls at batch B and ``m`` at batch 1 (or matmuls), reply with the seconds;
- ``{"op": "finish"}``: reply with the peak RSS (VmHWM) and exit.

The protocol uses a private copy of the original stdout; file descriptor 1 is pointed at stderr so that what
frameworks print cannot corrupt it. timm comes from ``import timm``; when that fails and the environment variable
``REGNET_BENCH_PEERS_PATH`` names a directory (this repository's ``.peers``), that directory is added to the path,
with an empty stand-in for torchvision's ``_meta_registrations`` (PyPI's CUDA build of torchvision cannot register
its C++ operators beside the CPU build of PyTorch; its model code does not need them).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

import numpy as np

PEERS_PATH_ENV = "REGNET_BENCH_PEERS_PATH"
MATMUL_SIZE = 2048
MATMUL_SECONDS = 5.0  # the longest one reference matmul may take (emulated bfloat16 is ~100x slower)
_MAX_ITERS = 10_000

Forward = Callable[[], None]


class Unavailable(Exception):
    """The entry's library is not installed."""


class NotMeasured(Exception):
    """The entry does not apply to these settings (e.g. no bfloat16 switch)."""


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size (VmHWM) from /proc/self/status, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _import(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise Unavailable(f"{what} is not installed ({error})") from None


def import_timm() -> Any:
    """``import timm``, falling back on $REGNET_BENCH_PEERS_PATH with the torchvision workaround."""
    try:
        import timm

        return timm
    except ImportError as first:
        path = os.environ.get(PEERS_PATH_ENV)
        if not path or not os.path.isdir(path):
            raise Unavailable(
                f"timm is not installed ({first}); or set {PEERS_PATH_ENV} to a directory holding it"
            ) from None
        for name in [key for key in sys.modules if key == "timm" or key.startswith(("timm.", "torchvision"))]:
            del sys.modules[name]
        if path not in sys.path:
            sys.path.append(path)
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
        try:
            import timm
        except ImportError as error:
            raise Unavailable(f"timm does not import from {path}: {error}") from None
        return timm


def _used_versions() -> dict[str, str]:
    """Versions of the frameworks and peers this process has imported."""
    versions = {}
    for name in ("numpy", "torch", "tensorflow", "keras", "tf_keras", "jax", "flax", "timm", "transformers"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__version__", None):
            versions[name] = str(module.__version__)
    return versions


# ----------------------------------------------------------------------------- entries
def _our_model(request: dict[str, Any]) -> tuple[Any, Any, bool]:
    from regnet_core.backends import resolve_checkpoint

    config, state, with_head, _ = resolve_checkpoint(request["checkpoint"])
    return config, state, with_head


def _pixels(request: dict[str, Any], batch: int) -> np.ndarray:
    rng = np.random.default_rng(request.get("seed", 0))
    size = request["image_size"]
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32)


def _nhwc(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, (0, 2, 3, 1)))


def _torch_forwards(model: Any, request: dict[str, Any], channels_last: bool = False) -> tuple[Forward, Forward]:
    import torch

    bf16 = request["dtype"] == "bfloat16"

    def make(batch: int) -> Forward:
        x = torch.from_numpy(_pixels(request, batch))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def forward() -> None:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                model(x)

        return forward

    return make(request["batch"]), make(1)


def _entry_pt(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    _import("torch", "PyTorch")
    from regnet_pt import backend

    config, state, with_head = _our_model(request)
    model = backend.from_canonical(config, state, with_head)
    del state
    return (*_torch_forwards(model, request), "regnet_pt: model(x) on NCHW under torch.inference_mode()")


def _our_tf_model(request: dict[str, Any]) -> Any:
    _import("tensorflow", "TensorFlow")
    from regnet_tf import backend

    config, state, with_head = _our_model(request)
    if request["dtype"] == "bfloat16":
        try:
            return backend.from_canonical(config, state, with_head, dtype="mixed_bfloat16")
        except TypeError as error:
            raise RuntimeError(f"regnet_tf.backend.from_canonical takes no dtype here ({error})") from None
    return backend.from_canonical(config, state, with_head)


def _entry_tf(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    import tensorflow as tf

    model = _our_tf_model(request)

    def make(batch: int) -> Forward:
        x = tf.constant(_nhwc(_pixels(request, batch)))
        return lambda: model(x, training=False)

    return make(request["batch"]), make(1), "regnet_tf: eager model(x, training=False) on NHWC"


def _entry_tf_predict(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    model = _our_tf_model(request)

    def make(batch: int) -> Forward:
        x = _nhwc(_pixels(request, batch))
        return lambda: model.predict(x, batch_size=batch, verbose=0)

    return make(request["batch"]), make(1), "regnet_tf: model.predict(x, batch_size=B) on NHWC"


def _entry_flax(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    _import("flax", "Flax")
    import jax
    import jax.numpy as jnp

    from regnet_flax import backend

    config, state, with_head = _our_model(request)
    if request["dtype"] == "bfloat16":
        try:
            module, variables = backend.from_canonical(config, state, with_head, dtype="bfloat16")
        except TypeError as error:
            raise RuntimeError(f"regnet_flax.backend.from_canonical takes no dtype here ({error})") from None
    else:
        module, variables = backend.from_canonical(config, state, with_head)
    del state
    apply = jax.jit(module.apply)

    def make(batch: int) -> Forward:
        x = jnp.asarray(_nhwc(_pixels(request, batch)))
        return lambda: jax.block_until_ready(apply(variables, x))

    return make(request["batch"]), make(1), "regnet_flax: jax.jit(module.apply) on NHWC, block_until_ready"


def _timm_model(request: dict[str, Any]) -> Any:
    _import("torch", "PyTorch")
    timm = import_timm()
    name = request.get("timm_name")
    if not name:
        raise NotMeasured("timm has no model with this architecture (only zoo architectures map to timm names)")
    return timm.create_model(name, pretrained=False, num_classes=request["num_labels"]).eval()


def _entry_timm(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    model = _timm_model(request)
    return (*_torch_forwards(model, request), f"timm.create_model({request['timm_name']!r}): model(x) on NCHW")


def _entry_timm_channels_last(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    import torch

    model = _timm_model(request).to(memory_format=torch.channels_last)
    return (
        *_torch_forwards(model, request, channels_last=True),
        f"timm.create_model({request['timm_name']!r}) and input in torch.channels_last",
    )


def _transformers(request: dict[str, Any]) -> tuple[Any, Any]:
    transformers = _import("transformers", "transformers")
    transformers.utils.logging.set_verbosity_error()
    from regnet_core.config import RegNetConfig
    from regnet_core.formats.hf import transformers_config_fields

    config = RegNetConfig.from_pretrained(request["checkpoint"])
    return transformers, transformers.RegNetConfig(**transformers_config_fields(config))


def _class_name(request: dict[str, Any], prefix: str) -> str:
    return prefix + ("RegNetForImageClassification" if request["with_head"] else "RegNetModel")


def _entry_transformers_pt(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    _import("torch", "PyTorch")
    transformers, config = _transformers(request)
    name = _class_name(request, "")
    model = getattr(transformers, name)(config).eval()
    return (*_torch_forwards(model, request), f"transformers.{name}: model(x) on NCHW")


def _entry_transformers_tf(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    if request["dtype"] == "bfloat16":
        raise NotMeasured("transformers' TF RegNet has no bfloat16 switch (not measured in bfloat16)")
    tf = _import("tensorflow", "TensorFlow")
    transformers, config = _transformers(request)
    name = _class_name(request, "TF")
    try:
        model_class = getattr(transformers, name)
    except Exception as error:  # noqa: BLE001  (tf-keras missing, or any import failure of the TF stack)
        raise Unavailable(f"transformers' TF classes do not import: {' '.join(str(error).split())}") from None
    model = model_class(config)

    def make(batch: int) -> Forward:
        x = tf.constant(_pixels(request, batch))
        return lambda: model(x, training=False)

    return make(request["batch"]), make(1), f"transformers.{name}: eager model(x, training=False) on NCHW"


def _entry_transformers_flax(request: dict[str, Any]) -> tuple[Forward, Forward, str]:
    _import("flax", "Flax")
    import jax
    import jax.numpy as jnp

    transformers, config = _transformers(request)
    name = _class_name(request, "Flax")
    size = request["image_size"]
    dtype = jnp.bfloat16 if request["dtype"] == "bfloat16" else jnp.float32
    model = getattr(transformers, name)(
        config, input_shape=(1, size, size, 3), seed=request.get("seed", 0), dtype=dtype
    )
    forward = jax.jit(lambda params, x: model(x, params=params, train=False))

    def make(batch: int) -> Forward:
        x = jnp.asarray(_pixels(request, batch))
        return lambda: jax.block_until_ready(forward(model.params, x))

    return make(request["batch"]), make(1), f"transformers.{name}: jax.jit of model(x, params=...) on NCHW"


ENTRIES: dict[str, Callable[[dict[str, Any]], tuple[Forward, Forward, str]]] = {
    "pt": _entry_pt,
    "tf": _entry_tf,
    "tf-predict": _entry_tf_predict,
    "flax": _entry_flax,
    "timm": _entry_timm,
    "timm-channels-last": _entry_timm_channels_last,
    "transformers-pt": _entry_transformers_pt,
    "transformers-tf": _entry_transformers_tf,
    "transformers-flax": _entry_transformers_flax,
}


# ----------------------------------------------------------------------------- matmul
def _matmul_call(n: int, dtype: str) -> tuple[Forward, str]:
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    try:
        import torch
    except ImportError:
        if dtype != "float32":
            raise NotMeasured("a bfloat16 matmul needs PyTorch") from None
        return (lambda: np.matmul(a, b)), f"numpy {n}x{n} float32 matmul"
    x, y = (torch.from_numpy(m).to(torch.bfloat16 if dtype == "bfloat16" else torch.float32) for m in (a, b))

    def forward() -> None:
        with torch.inference_mode():
            torch.matmul(x, y)

    return forward, f"torch {n}x{n} {dtype} matmul"


def _matmul(request: dict[str, Any]) -> tuple[Forward, str, int]:
    """A square matmul of MATMUL_SIZE, or smaller where one call would take over MATMUL_SECONDS (emulated bf16)."""
    n = request.get("size", MATMUL_SIZE)
    probe_size = min(n, 512)
    probe, _ = _matmul_call(probe_size, request["dtype"])
    probe()
    seconds = min(_time(probe, 1) for _ in range(3))
    limit = max(MATMUL_SECONDS, float(request.get("round_time", 1.0)))
    while n > probe_size and seconds * (n / probe_size) ** 3 > limit:
        n //= 2
    forward, description = _matmul_call(n, request["dtype"])
    return forward, description, n


# ----------------------------------------------------------------------------- timing
def _time(forward: Forward, iters: int) -> float:
    started = time.perf_counter()
    for _ in range(iters):
        forward()
    return time.perf_counter() - started


def _iterations(forward: Forward, round_time: float) -> int:
    seconds = _time(forward, 1)
    return max(1, min(_MAX_ITERS, math.ceil(round_time / max(seconds, 1e-6))))


class Runner:
    """The state of one worker: its forwards and how many calls make a round."""

    def __init__(self) -> None:
        self.forward: Forward | None = None
        self.forward1: Forward | None = None
        self.iters = self.iters1 = 1
        self.matmul_flops = 0

    def setup(self, request: dict[str, Any]) -> dict[str, Any]:
        """Import, build and warm up (at batch B and at batch 1); the reply for the parent."""
        started = time.perf_counter()
        warmup = max(1, int(request.get("warmup", 1)))
        if request["entry"] == "matmul":
            self.forward, description, n = _matmul(request)
            self.matmul_flops = 2 * n**3
            warmup = 1
        else:
            self.forward, self.forward1, description = ENTRIES[request["entry"]](request)
        build_seconds = time.perf_counter() - started
        for forward in (self.forward, self.forward1):
            if forward is not None:
                _time(forward, warmup)
        return {
            "ok": True,
            "description": description,
            "build_seconds": build_seconds,
            "setup_seconds": time.perf_counter() - started,
            "versions": _used_versions(),
        }

    def calibrate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Pick how many calls fill ``round_time`` seconds (run while the other workers idle)."""
        assert self.forward is not None
        round_time = float(request.get("round_time", 1.0))
        self.iters = _iterations(self.forward, round_time)
        if self.forward1 is not None:
            self.iters1 = _iterations(self.forward1, round_time)
        return {"ok": True, "iters": self.iters, "iters1": self.iters1 if self.forward1 is not None else 0}

    def round(self) -> dict[str, Any]:
        """Time one round."""
        assert self.forward is not None
        cpu = time.process_time()
        reply: dict[str, Any] = {"ok": True, "iters": self.iters, "seconds": _time(self.forward, self.iters)}
        if self.forward1 is not None:
            reply.update(iters1=self.iters1, seconds1=_time(self.forward1, self.iters1))
        # CPU seconds per wall second: how many cores the entry actually kept busy.
        reply["cores_used"] = (time.process_time() - cpu) / (reply["seconds"] + reply.get("seconds1", 0.0))
        if self.matmul_flops:
            reply["gflops"] = self.matmul_flops * self.iters / reply["seconds"] / 1e9
        return reply


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def serve(requests: Any, reply: Callable[[dict[str, Any]], None]) -> None:
    """Answer requests (an iterable of JSON lines) until ``finish`` or end of input."""
    runner = Runner()
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "setup":
                reply(runner.setup(request))
            elif op == "calibrate":
                reply(runner.calibrate(request))
            elif op == "round":
                reply(runner.round())
            elif op == "finish":
                times = os.times()
                reply({"ok": True, "peak_rss_bytes": peak_rss_bytes(), "cpu_seconds": times.user + times.system})
                return
            else:
                reply({"ok": False, "status": "failed", "reason": f"unknown request {op!r}"})
        except Unavailable as error:
            reply({"ok": False, "status": "unavailable", "reason": str(error), "versions": _used_versions()})
        except NotMeasured as error:
            reply({"ok": False, "status": "not measured", "reason": str(error), "versions": _used_versions()})
        except Exception as error:  # noqa: BLE001  (any failure of a framework is the entry's result)
            traceback.print_exc(file=sys.stderr)
            reply({"ok": False, "status": "failed", "reason": _last_line(error), "versions": _used_versions()})


def main() -> None:
    """Serve the parent over stdin and a private copy of stdout."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything written to fd 1 from here on (frameworks, C libraries) goes to stderr
    sys.stdout = sys.stderr

    def reply(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    serve(sys.stdin, reply)


if __name__ == "__main__":
    main()
