"""Outputs appear whole or not at all, and an existing one is replaced only when asked.

``regnet convert``, ``regnet init`` and every backend's ``save_pretrained`` build the output
in a hidden sibling and rename it into place (regnet_core.io.atomic_output). Here: refusal
without ``--overwrite`` / ``overwrite=True``; failures and SIGKILL at named points and at
random times (a subprocess) leave the destination absent or byte-identical to what it was;
the next run tidies every leftover.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import regnet_core.checkpoint
import regnet_core.io
from regnet_core import RegNetConfig
from regnet_core.checkpoint import save_checkpoint
from regnet_core.cli import main
from regnet_core.errors import CheckpointError, OutputExistsError
from regnet_core.io import KILL_AT_VARIABLE, atomic_output, clean_stale_temporaries
from regnet_core.specs import build_model_spec
from regnet_core.weights import random_state
from tests.helpers import requires

CONFIG = RegNetConfig(hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, embedding_size=8, num_labels=3)
ROOT = Path(__file__).resolve().parents[1]


def _snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under a directory (or the file itself) with its bytes; None when absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def _save(directory: Path, seed: int, **kwargs) -> Path:
    state = random_state(build_model_spec(CONFIG), seed=seed)
    return save_checkpoint(directory, CONFIG, state, architecture="RegNetForImageClassification", **kwargs)


# ----------------------------------------------------------------------------- save_pretrained, every backend


def _model(framework: str, seed: int):
    """A tiny model of a backend holding seeded random weights (no initialiser run: quick in every backend)."""
    from regnet_core.backends import get_backend

    return get_backend(framework).from_canonical(CONFIG, random_state(build_model_spec(CONFIG), seed=seed), True)


def _pt_save(directory: Path, seed: int, **kwargs) -> None:
    _model("pt", seed).save_pretrained(directory, **kwargs)


def _tf_save(directory: Path, seed: int, **kwargs) -> None:
    _model("tf", seed).save_pretrained(directory, **kwargs)


def _flax_save(directory: Path, seed: int, **kwargs) -> None:
    import regnet_flax

    module, variables = _model("flax", seed)
    regnet_flax.save_pretrained(module, variables, directory, **kwargs)


SAVERS = [
    pytest.param(_pt_save, marks=requires("torch"), id="pt"),
    pytest.param(_tf_save, marks=requires("tensorflow"), id="tf"),
    pytest.param(_flax_save, marks=requires("flax"), id="flax"),
]


@pytest.mark.parametrize("save", SAVERS)
def test_save_pretrained_replaces_only_with_overwrite(tmp_path, save):
    directory = tmp_path / "ckpt"
    save(directory, 0, max_shard_size="2KB")
    (directory / "README.md").write_text("my notes")
    before = _snapshot(directory)
    with pytest.raises(OutputExistsError, match=r"already holds .*; pass overwrite=True to replace it"):
        save(directory, 1)
    assert _snapshot(directory) == before and not _leftovers(directory)
    save(directory, 1, overwrite=True)
    after = _snapshot(directory)
    # one file now, the old shards and index gone; the user's file carried over
    assert sorted(after) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert after["README.md"] == b"my notes" and after["model.safetensors"] != before.get("model.safetensors")
    assert not _leftovers(directory)


@pytest.mark.parametrize("save", SAVERS)
def test_save_pretrained_into_an_empty_directory_or_a_file(tmp_path, save):
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty", 0)
    assert (tmp_path / "empty" / "model.safetensors").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="expected a directory to save into, got the file"):
        save(tmp_path / "file", 0)


def test_a_symlinked_directory_is_replaced_where_it_points(tmp_path):
    real = tmp_path / "real"
    _save(real, 0)
    os.symlink(real, tmp_path / "link")
    _save(tmp_path / "link", 1, overwrite=True)
    assert (tmp_path / "link").is_symlink() and (real / "model.safetensors").is_file()
    assert _snapshot(real) == _snapshot(tmp_path / "link")


def test_a_failed_sharded_save_leaves_nothing_or_the_old_checkpoint(tmp_path, monkeypatch):
    real_write = regnet_core.checkpoint.write_safetensors
    calls = []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(regnet_core.checkpoint, "write_safetensors", failing)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path / "new", 0, max_shard_size="2KB")
    assert not (tmp_path / "new").exists() and not _leftovers(tmp_path / "new")
    monkeypatch.setattr(regnet_core.checkpoint, "write_safetensors", real_write)
    _save(tmp_path / "old", 0, max_shard_size="2KB")
    before = _snapshot(tmp_path / "old")
    calls.clear()
    monkeypatch.setattr(regnet_core.checkpoint, "write_safetensors", failing)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path / "old", 1, max_shard_size="2KB", overwrite=True)
    assert _snapshot(tmp_path / "old") == before and not _leftovers(tmp_path / "old")


def test_no_shard_appears_at_the_destination_before_all_are_written(tmp_path, monkeypatch):
    real_write = regnet_core.checkpoint.write_safetensors
    _save(tmp_path / "ckpt", 0, max_shard_size="2KB")
    before = _snapshot(tmp_path / "ckpt")
    seen = []

    def watching(path, *args, **kwargs):
        seen.append(_snapshot(tmp_path / "ckpt") == before)
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(regnet_core.checkpoint, "write_safetensors", watching)
    _save(tmp_path / "ckpt", 1, max_shard_size="1KB", overwrite=True)
    assert len(seen) > 3 and all(seen)
    assert _snapshot(tmp_path / "ckpt") != before


# ----------------------------------------------------------------------------- the CLI


@requires("torch")
def test_init_refuses_an_existing_directory_without_overwrite(tmp_path, capsys):
    out = tmp_path / "x002"
    assert main(["init", "regnet-x-002", "--out", str(out), "--seed", "1"]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["init", "regnet-x-002", "--out", str(out), "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds config.json" in err and "pass --overwrite to replace it" in err
    assert _snapshot(out) == before
    assert main(["init", "regnet-x-002", "--out", str(out), "--seed", "2", "--overwrite"]) == 0
    assert _snapshot(out) != before and not _leftovers(out)


def test_convert_refuses_an_existing_destination_without_overwrite(tmp_path, capsys):
    _save(tmp_path / "a", 0)
    _save(tmp_path / "b", 1)
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "empty"), "--quiet"]) == 0  # empty: nothing lost
    before = _snapshot(tmp_path / "b")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists; pass --overwrite" in err
    assert _snapshot(tmp_path / "b") == before
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--quiet", "--overwrite"]) == 0
    assert _snapshot(tmp_path / "b") == _snapshot(tmp_path / "empty") != before
    assert not _leftovers(tmp_path / "b")


def test_convert_to_a_file_format_replaces_the_file_only_with_overwrite(tmp_path, capsys):
    _save(tmp_path / "a", 0)
    target = tmp_path / "w.msgpack"
    assert main(["convert", str(tmp_path / "a"), str(target), "--quiet"]) == 0
    before = target.read_bytes()
    assert main(["convert", str(tmp_path / "a"), str(target), "--quiet"]) == 2
    assert target.read_bytes() == before
    assert main(["convert", str(tmp_path / "a"), str(target), "--quiet", "--overwrite"]) == 0
    assert target.read_bytes() == before and not _leftovers(target)


# ----------------------------------------------------------------------------- the swap, without renameat2


class _Killed(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing on the way catches it."""


def test_without_an_atomic_swap_a_crash_between_renames_is_undone_by_the_next_run(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    monkeypatch.setattr(regnet_core.io, "_exchange", lambda first, second: False)

    def crash(name):
        if name == "output-aside":
            raise _Killed

    monkeypatch.setattr(regnet_core.io, "crash_point", crash)
    with pytest.raises(_Killed), atomic_output(target, overwrite=True) as temporary:
        temporary.mkdir()
        (temporary / "a").write_text("new")
    assert not target.exists()  # killed with the old one moved aside: absent, as allowed
    assert any(".regnet-old-" in name for name in _leftovers(target))
    clean_stale_temporaries(target)  # what the next write to it does first
    assert (target / "a").read_text() == "old" and not _leftovers(target)
    monkeypatch.setattr(regnet_core.io, "crash_point", lambda name: None)
    with atomic_output(target, overwrite=True) as temporary:
        temporary.mkdir()
        (temporary / "a").write_text("new")
    assert (target / "a").read_text() == "new" and not _leftovers(target)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_processes_are_tidied_and_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    dead, live = _dead_pid(), os.getppid()
    (tmp_path / f".out.regnet-tmp-{dead}-0badc0de").mkdir()
    (tmp_path / f".out.regnet-old-{dead}-0badc0de").mkdir()
    (tmp_path / f".out.regnet-old-{dead}-0badc0de" / "a").write_text("previous")
    (tmp_path / f".out.regnet-tmp-{live}-feedf00d").write_text("someone else's write in progress")
    (tmp_path / ".outer.regnet-tmp-1-00000000").write_text("another target's")
    clean_stale_temporaries(target)
    assert (target / "a").read_text() == "previous"  # the moved-aside original is put back
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".out.regnet-tmp-{live}-feedf00d",
        ".outer.regnet-tmp-1-00000000",
        "out",
    ]
    (tmp_path / f".out.regnet-old-{dead}-0badc0de").write_text("stale copy")
    clean_stale_temporaries(target)  # the target exists: a moved-aside copy is only removed
    assert not (tmp_path / f".out.regnet-old-{dead}-0badc0de").exists() and (target / "a").read_text() == "previous"


# ----------------------------------------------------------------------------- SIGKILL, in a subprocess

_RUNNER = """
import sys
import regnet_core.io
if {no_exchange}:
    regnet_core.io._exchange = lambda first, second: False
from regnet_core.cli import main
sys.exit(main({argv!r}))
"""


def _convert(source: Path, target: Path, *, kill_at: str | None = None, no_exchange: bool = False, shard="1KB"):
    argv = ["convert", str(source), str(target), "--overwrite", "--quiet", "--max-shard-size", shard]
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_VARIABLE}
    if kill_at:
        env[KILL_AT_VARIABLE] = kill_at
    code = _RUNNER.format(no_exchange=no_exchange, argv=argv)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two different checkpoints, and what converting the first writes (the reference for a completed run)."""
    root = tmp_path_factory.mktemp("sources")
    _save(root / "new", 0)
    _save(root / "previous", 1)
    process = _convert(root / "new", root / "reference")
    assert process.wait() == 0, process.stderr.read()
    reference = _snapshot(root / "reference")
    assert sum(name.startswith("model-") for name in reference) > 4  # sharded
    return root, reference


@pytest.mark.parametrize(
    "kill_at, no_exchange",
    [
        ("shard-1", False),
        ("shard-3", False),
        ("output-written", False),
        ("output-swapped", False),
        ("output-aside", True),
        ("output-swapped", True),
    ],
)
def test_sigkill_leaves_the_previous_checkpoint_or_the_new_one_whole(tmp_path, sources, kill_at, no_exchange):
    root, reference = sources
    target = tmp_path / "ckpt"
    assert _convert(root / "previous", target, shard="2KB").wait() == 0
    previous = _snapshot(target)
    process = _convert(root / "new", target, kill_at=kill_at, no_exchange=no_exchange)
    assert process.wait() == -signal.SIGKILL
    after = _snapshot(target)
    assert after in (previous, reference) or (after is None and kill_at == "output-aside")
    if kill_at.startswith("shard") or kill_at == "output-written":
        assert after == previous and _leftovers(target)  # the partial new one is beside it, hidden
    clean_stale_temporaries(target)  # the next run's first step
    assert _snapshot(target) in (previous, reference) and not _leftovers(target)
    assert _convert(root / "new", target).wait() == 0
    assert _snapshot(target) == reference and not _leftovers(target)


def test_sigkill_of_a_first_conversion_leaves_no_destination(tmp_path, sources):
    root, reference = sources
    target = tmp_path / "fresh"
    assert _convert(root / "new", target, kill_at="shard-2").wait() == -signal.SIGKILL
    assert not target.exists() and _leftovers(target)
    assert _convert(root / "new", target).wait() == 0
    assert _snapshot(target) == reference and not _leftovers(target)


def _kill_at_random_times(tmp_path: Path, root: Path, reference: dict, runs: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    target = tmp_path / "ckpt"
    assert _convert(root / "previous", target, shard="2KB").wait() == 0
    previous = _snapshot(target)
    outcomes = []
    for _ in range(runs):
        process = _convert(root / "new", target)
        deadline = time.monotonic() + 30
        mark = f"-{process.pid}-"  # the write has begun once its hidden sibling appears
        while not any(mark in name for name in _leftovers(target)) and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.3))  # writing takes about 0.2 s here: some kills land after it
        process.send_signal(signal.SIGKILL)
        code = process.wait()
        after = _snapshot(target)
        assert after in (previous, reference), f"killed (exit {code}): the destination is neither old nor new"
        outcomes.append("new" if after == reference and after != previous else "previous")
        if after == reference:  # start again from the previous one
            assert _convert(root / "previous", target, shard="2KB").wait() == 0
    assert _convert(root / "new", target).wait() == 0
    assert _snapshot(target) == reference and not _leftovers(target)
    return outcomes


def test_sigkill_at_random_times(tmp_path, sources):
    root, reference = sources
    _kill_at_random_times(tmp_path, root, reference, runs=3, seed=0)


@pytest.mark.slow
def test_sigkill_at_many_random_times(tmp_path, sources):
    root, reference = sources
    outcomes = _kill_at_random_times(tmp_path, root, reference, runs=40, seed=1)
    assert "previous" in outcomes


def test_the_reference_conversion_is_deterministic(tmp_path, sources):
    root, reference = sources
    assert _convert(root / "new", tmp_path / "again").wait() == 0
    assert _snapshot(tmp_path / "again") == reference
    assert json.loads(reference["config.json"])["hidden_sizes"] == [8, 16]
    assert np.frombuffer(reference[f"model-00001-of-{_shard_count(reference):05d}.safetensors"][:8], "<u8")[0] > 0


def _shard_count(snapshot: dict[str, bytes]) -> int:
    return sum(name.startswith("model-") and name.endswith(".safetensors") for name in snapshot)
