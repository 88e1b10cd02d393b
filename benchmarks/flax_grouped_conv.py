"""Time the lowerings of RegNet's grouped 3x3 convolution in regnet_flax.grouped_conv on this machine.

For every distinct grouped conv of the chosen zoo models at 224 x 224 (the stride-2 first
block of each stage and the stride-1 blocks) and each batch size, every lowering is
jit-compiled, warmed up and then timed interleaved (A, B, C, ... per round, several
rounds), so that load from other processes hits all alternatives alike; the best round
ranks them. Prints one line per shape with each method's best time in ms (and its ratio
to XLA's feature_group_count conv), the fastest method and the one "auto" picks::

    PYTHONPATH=. .venv/bin/python benchmarks/flax_grouped_conv.py --models regnet-y-040 regnet-x-002 --batches 1 8 32

``--end-to-end`` instead times ``jax.jit(module.apply)`` of the whole classifier (random
weights, inference) with each lowering forced, against timm's PyTorch model in
channels_last (if timm is installed in .peers), interleaved in one process. On a shared
machine, ``taskset -c 0 ... --torch-threads 1`` compares both on one core, which load from
other processes disturbs far less than two-thread runs (oneDNN's threads wait for each other).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from regnet_core import build_model_spec, get_config
from regnet_flax.grouped_conv import METHODS, choose_method, grouped_conv


def conv_shapes(name: str, image_size: int = 224) -> list[tuple[int, int, int, int, int]]:
    """Distinct grouped 3x3 convs of a zoo model: (input size, channels, groups, stride, count)."""
    spec = build_model_spec(get_config(name))
    size = (image_size + 2 - 3) // 2 + 1  # after the stem
    shapes: dict[tuple[int, int, int, int], int] = {}
    for stage in spec.stages:
        for block in stage.blocks:
            key = (size, block.bottleneck_width, block.groups, block.stride)
            shapes[key] = shapes.get(key, 0) + 1
            size = (size + 2 - 3) // block.stride + 1
    return [(*key, count) for key, count in shapes.items()]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, min_time: float = 0.02) -> dict[str, list]:
    """Per candidate, the time of one call in each round (each round calls every candidate in turn)."""
    repeats = {}
    for name, fn in candidates.items():
        jax.block_until_ready(fn())  # compile
        once = min(_timed(fn) for _ in range(2))
        repeats[name] = max(1, int(min_time / max(once, 1e-6)))
    times: dict[str, list] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            n = repeats[name]
            times[name].append(sum(_timed(fn) for _ in range(n)) / n)
    return times


def bench_convs(models: list[str], batches: list[int], methods: list[str], rounds: int) -> None:
    rng = np.random.default_rng(0)
    print(f"{'model':13} {'B':>3} {'HxW':>4} {'C':>5} {'G':>3} {'s':>2} | " + " ".join(f"{m:>15}" for m in methods))
    for name in models:
        for batch in batches:
            for size, channels, groups, stride, count in conv_shapes(name):
                x = jnp.asarray(rng.normal(size=(batch, size, size, channels)).astype(np.float32))
                k = jnp.asarray(rng.normal(size=(3, 3, channels // groups, channels)).astype(np.float32) * 0.05)
                candidates = {}
                for method in methods:
                    fn = jax.jit(
                        lambda x, k, method=method, stride=stride, groups=groups: grouped_conv(
                            x, k, (stride, stride), ((1, 1), (1, 1)), groups, method
                        )
                    )
                    candidates[method] = lambda fn=fn, x=x, k=k: fn(x, k)
                times = interleaved(candidates, rounds)
                best = {m: min(t) * 1e3 for m, t in times.items()}
                base = best.get("xla")
                cells = " ".join(
                    f"{best[m]:8.2f}" + (f" {best[m] / base:5.2f}x" if base else "      ") for m in methods
                )
                auto = choose_method(channels, channels, groups)
                fastest = min(best, key=best.get)
                print(
                    f"{name:13} {batch:3d} {size:4d} {channels:5d} {groups:3d} {stride:2d} | {cells}"
                    f" | fastest {fastest:6} auto {auto:6} (x{count})",
                    flush=True,
                )


def bench_end_to_end(
    models: list[str], batches: list[int], methods: list[str], rounds: int, threads: int = 2, dtype: str = "float32"
) -> None:
    import torch

    from regnet_core import random_state
    from regnet_flax import from_canonical
    from regnet_flax.grouped_conv import grouped_conv_method

    try:
        from tests.peers import peer

        timm = peer("timm")
    except BaseException:  # noqa: BLE001 - pytest.skip raises a BaseException
        timm = None
    torch.set_num_threads(threads)
    timm_names = {"regnet-y-040": "regnety_040", "regnet-x-002": "regnetx_002"}
    for name in models:
        config = get_config(name)
        module, variables = from_canonical(config, random_state(build_model_spec(config), 0, True), True, dtype=dtype)
        for batch in batches:
            x = np.random.default_rng(1).normal(size=(batch, 224, 224, 3)).astype(np.float32)
            xj = jnp.asarray(x)
            candidates = {}
            for method in methods:
                start = time.perf_counter()
                with grouped_conv_method(method):
                    fn = jax.jit(module.apply).lower(variables, xj).compile()
                print(
                    f"{name:13} B={batch:<3d} flax-{method:7} compiled in {time.perf_counter() - start:6.1f} s",
                    flush=True,
                )
                candidates[f"flax-{method}"] = lambda fn=fn, v=variables, x=xj: fn(v, x).logits
            if timm is not None and name in timm_names:
                model = timm.create_model(timm_names[name], pretrained=False).eval()
                model = model.to(memory_format=torch.channels_last)
                xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=torch.channels_last)

                def run_timm(model=model, xt=xt) -> object:
                    with torch.inference_mode():
                        return model(xt)

                candidates["timm-cl"] = run_timm
            times = interleaved(candidates, rounds, min_time=0.0)
            reference = min(times["timm-cl"]) if "timm-cl" in times else None
            for key, values in times.items():
                best, median = min(values) * 1e3, statistics.median(values) * 1e3
                ratio = f"  speed vs timm-cl {reference * 1e3 / best:5.2f}x" if reference else ""
                print(
                    f"{name:13} B={batch:<3d} {key:12} best {best:9.2f} ms  median {median:9.2f} ms{ratio}", flush=True
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["regnet-y-040", "regnet-x-002"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=None, help=f"of auto, {', '.join(METHODS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--end-to-end", action="store_true", help="whole model against timm channels_last")
    parser.add_argument("--dtype", default="float32", help="computation dtype of the Flax model (end-to-end)")
    parser.add_argument(
        "--torch-threads", type=int, default=2, help="torch.set_num_threads (XLA uses the cores taskset allows)"
    )
    args = parser.parse_args()
    if args.end_to_end:
        bench_end_to_end(
            args.models, args.batches, args.methods or ["auto", "xla"], args.rounds, args.torch_threads, args.dtype
        )
    else:
        bench_convs(args.models, args.batches, args.methods or list(METHODS), args.rounds)


if __name__ == "__main__":
    main()
