#!/usr/bin/env bash
# The runs behind BENCHMARKS.md's inference tables, exactly as written there:
#
#   benchmarks/run_bench.sh            # all four runs, then benchmarks/results/tables.md
#   benchmarks/run_bench.sh --rounds 3 # extra options go to every `regnet bench` run
#
# regnet-y-040 at batch 8 and regnet-x-002 at batch 32, 224 x 224, in float32 and in bfloat16, against every
# installed peer (timm from .peers/ via REGNET_BENCH_PEERS_PATH when it is not installed; transformers PyTorch,
# TF and Flax). Batch-1 latency is part of each run. Cold start and the import time of regnet_core are measured
# in the float32 runs (cold start always loads float32). Each run writes one JSON file under
# benchmarks/results/ (replaced only when the run succeeds); benchmarks/render_bench.py turns them into
# markdown. Run it on a quiet machine: every entry is timed in the same rounds, but other load still shows.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
RESULTS="$ROOT/benchmarks/results"
export REGNET_BENCH_PEERS_PATH="${REGNET_BENCH_PEERS_PATH:-$ROOT/.peers}"
mkdir -p "$RESULTS"

run() {  # run NAME ARGS...: one `regnet bench ... --json` into $RESULTS/NAME.json
    local name="$1"
    shift
    echo "== regnet bench $* ($name)" >&2
    "$PYTHON" -m regnet_core.cli bench "$@" --peers --json > "$RESULTS/$name.json.partial"
    mv "$RESULTS/$name.json.partial" "$RESULTS/$name.json"
}

run regnet-y-040_b8_224_float32   regnet-y-040 --batch 8  --image-size 224 --dtype float32 "$@"
run regnet-x-002_b32_224_float32  regnet-x-002 --batch 32 --image-size 224 --dtype float32 "$@"
run regnet-y-040_b8_224_bfloat16  regnet-y-040 --batch 8  --image-size 224 --dtype bfloat16 --no-cold-start "$@"
run regnet-x-002_b32_224_bfloat16 regnet-x-002 --batch 32 --image-size 224 --dtype bfloat16 --no-cold-start "$@"

"$PYTHON" benchmarks/render_bench.py \
    "$RESULTS/regnet-y-040_b8_224_float32.json" "$RESULTS/regnet-x-002_b32_224_float32.json" \
    "$RESULTS/regnet-y-040_b8_224_bfloat16.json" "$RESULTS/regnet-x-002_b32_224_bfloat16.json" \
    > "$RESULTS/tables.md"
echo "wrote $RESULTS/tables.md" >&2
