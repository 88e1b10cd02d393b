"""`regnet bench`: every field reported with sane types, failures as entries, bad arguments in one line (exit 2).

Speeds are never asserted: the machine is shared. The runs use regnet-x-002 at 32 x 32. Importing and
compiling in the frameworks is most of a run's cost, so the default test measures ours pt against timm and
transformers' Flax (which cannot build X models: the failed entry); the slow test runs every entry.
"""

import json
import math
import re
import subprocess
import sys

import pytest

from regnet_core import save_checkpoint
from regnet_core.bench import ENTRY_NAMES, Worker, WorkerError
from regnet_core.cli import main
from regnet_core.weights import random_state
from tests.helpers import requires, tiny_config
from tests.peers import PEERS

FAST = ["--image-size", "32", "--batch", "2", "--rounds", "2", "--warmup", "1", "--round-time", "0.05", "--quiet"]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _bench_json(capsys, monkeypatch, *options: str) -> dict:
    if PEERS.is_dir():
        monkeypatch.setenv("REGNET_BENCH_PEERS_PATH", str(PEERS))
    code = main(["bench", "regnet_x_002", *FAST, "--peers", "--json", "--no-cold-start", *options])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@requires("torch")
def test_bench_json_reports_every_field_and_failures_with_reasons(capsys, monkeypatch):
    skip = "timm-channels-last,transformers-pt,transformers-tf"
    report = _bench_json(capsys, monkeypatch, "--frameworks", "pt", "--skip", skip)
    _check_report(report, {"pt", "timm", "transformers-flax"})


@pytest.mark.slow
def test_bench_every_entry(capsys, monkeypatch):
    report = _bench_json(capsys, monkeypatch)
    _check_report(report, {"pt", "timm", "timm-channels-last", "transformers-pt", "transformers-flax"})
    entries = {entry["name"]: entry for entry in report["entries"]}
    assert set(entries) == set(ENTRY_NAMES)


def _check_report(report: dict, expected: set) -> None:
    assert set(report) >= {"model", "settings", "machine", "versions", "matmul", "entries", "best_peer", "notes"}
    assert report["model"]["name"] == "regnet_x_002" and report["model"]["timm_name"] == "regnetx_002"
    assert _positive(report["model"]["flops_per_image"]) and _positive(report["model"]["params"])
    settings = report["settings"]
    assert (settings["batch"], settings["image_size"], settings["dtype"], settings["rounds"]) == (2, 32, "float32", 2)
    machine = report["machine"]
    assert isinstance(machine["cpu"], str) and machine["cpu"]
    assert _positive(machine["cores"]) and isinstance(machine["has_bf16_units"], bool)
    assert "torch" in report["versions"]
    assert any("shared and noisy" in note for note in report["notes"])
    assert report["cold_start"] is None and report["import_regnet_core"] is None

    (matmul,) = report["matmul"]
    assert matmul["status"] == "ok" and matmul["dtype"] == "float32"
    assert _positive(matmul["gflops_per_second"]["best"]) and len(matmul["gflops_per_second"]["rounds"]) == 2

    entries = {entry["name"]: entry for entry in report["entries"]}
    assert set(entries) <= set(ENTRY_NAMES) and expected <= set(entries)
    measured = [entry for entry in report["entries"] if entry["status"] == "ok"]
    assert entries["pt"]["status"] == "ok"
    assert sorted(entry["rank"] for entry in measured) == list(range(1, len(measured) + 1))
    for entry in measured:
        for metric in ("images_per_second", "latency_ms"):
            summary = entry[metric]
            assert len(summary["rounds"]) == 2 and all(_positive(value) for value in summary["rounds"])
            assert _positive(summary["best"]) and _positive(summary["median"])
        assert entry["images_per_second"]["best"] >= entry["images_per_second"]["median"]
        assert entry["latency_ms"]["best"] <= entry["latency_ms"]["median"]
        for name in ("gflops_per_second", "matmul_fraction", "peak_rss_mib", "cores_used"):
            assert _positive(entry[name]), (entry["name"], name)
        assert len(entry["raw_rounds"]) == 2 and isinstance(entry["description"], str)
    for entry in report["entries"]:
        if entry["status"] != "ok":
            assert entry["status"] in ("failed", "unavailable", "not measured")
            assert isinstance(entry["reason"], str) and entry["reason"], entry
    # transformers' Flax RegNet cannot build X models: a failed entry with the reason, not a crash.
    if entries["transformers-flax"]["status"] != "unavailable":
        assert entries["transformers-flax"]["status"] == "failed"

    peers = [entry for entry in measured if entry["kind"] == "peer"]
    if not peers:  # timm is neither installed nor in .peers
        assert report["best_peer"] == {"throughput": None, "latency": None}
        assert any("no peer ran" in note for note in report["notes"])
        return
    assert report["best_peer"]["throughput"] in {entry["name"] for entry in peers}
    for entry in measured:
        assert _positive(entry["throughput_vs_best_peer"]) and _positive(entry["latency_vs_best_peer"])
    best = entries[report["best_peer"]["throughput"]]
    assert best["throughput_vs_best_peer"] == 1.0


@requires("torch")
def test_bench_text_with_cold_start_on_a_checkpoint_directory(capsys, tmp_path):
    from regnet_core import build_model_spec

    config = tiny_config("y")
    save_checkpoint(tmp_path / "ckpt", config, random_state(build_model_spec(config), 0))
    code = main(["bench", str(tmp_path / "ckpt"), *FAST, "--frameworks", "pt", "--cold-start-runs", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "shared and noisy" in out and "best round" in out
    assert "bf16 units:" in out and "cores" in out and "torch " in out
    assert re.search(r"matmul: torch \d+x\d+ float32 matmul: [\d.]+ GFLOP/s best", out)
    assert "no peer ran: ratios to the best peer" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("1 ")]
    assert rows and rows[0][1] == "pt"
    assert "cold start (process start to first logits" in out
    cold = next(line for line in out.splitlines() if line.strip().startswith("pt ") and " s (imports " in line)
    assert _positive(float(cold.split()[1]))
    assert "import regnet_core:" in out and "(target < 0.3 s:" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "regnet-y-04"], "unknown RegNet 'regnet-y-04'"),
        (["bench", "regnet-x-002", "--batch", "0"], "expected a positive integer"),
        (["bench", "regnet-x-002", "--image-size", "-3"], "expected a positive integer"),
        (["bench", "regnet-x-002", "--frameworks", "pt,caffe"], "unknown framework 'caffe'"),
        (["bench", "regnet-x-002", "--dtype", "float16"], "invalid choice"),
        (["bench", "regnet-x-002", "--skip", "timm,onnx"], "unknown entry 'onnx'"),
        (["bench", "regnet-x-002", "--round-time", "0"], "expected a positive number"),
        (["bench", "./no-such-checkpoint-dir"], "no-such-checkpoint-dir"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("regnet: error:") and message in err, err


def test_a_worker_that_dies_reports_the_last_line_of_its_stderr():
    script = "import sys; sys.stdin.readline(); sys.stderr.write('loading...\\nRuntimeError: boom\\n'); sys.exit(3)"
    worker = Worker("crash", {}, [sys.executable, "-c", script])
    try:
        with pytest.raises(WorkerError, match=r"exited \(code 3\) during setup: RuntimeError: boom"):
            worker.request({"op": "setup"}, 60, "setup")
    finally:
        worker.close()


def test_a_worker_that_hangs_is_killed_after_the_timeout():
    worker = Worker("hang", {}, [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(WorkerError, match=r"timed out after 1 s during round 1"):
            worker.request({"op": "round"}, 1, "round 1")
        assert worker.process.poll() is not None
    finally:
        worker.close()


def test_importing_regnet_core_and_the_cli_leaves_bench_and_frameworks_out():
    code = (
        "import sys, regnet_core, regnet_core.cli; regnet_core.cli.build_parser(); "
        "loaded = [m for m in ('regnet_core.bench', 'regnet_core.bench_worker', 'torch', 'tensorflow', 'jax') "
        "if m in sys.modules]; print(loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
