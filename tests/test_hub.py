"""Hub ids resolve through huggingface_hub's cache offline; without it or the cache they fail fast, naming the alternative."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from regnet_core import build_model_spec, random_state
from regnet_core.checkpoint import save_checkpoint
from regnet_core.cli import main
from regnet_core.hub import HubError, looks_like_hub_id

from .helpers import tiny_config

needs_hub = pytest.mark.skipif(
    importlib.util.find_spec("huggingface_hub") is None, reason="huggingface_hub not installed"
)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(tmp_path: Path, repo_id: str = "facebook/regnet-tiny") -> tuple[Path, dict]:
    """A huggingface_hub cache holding one snapshot of a repository, laid out as the library lays it out."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    config = tiny_config()
    state = random_state(build_model_spec(config), seed=4)
    save_checkpoint(snapshot, config, state, architecture="RegNetForImageClassification")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache, state


def test_hub_ids_are_told_from_paths(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_hub_id("facebook/regnet-y-040")
    assert not looks_like_hub_id("regnet-y-040")
    assert not looks_like_hub_id("a/b/c")
    (tmp_path / "facebook").mkdir()
    (tmp_path / "facebook" / "regnet-y-040").mkdir()
    assert not looks_like_hub_id("facebook/regnet-y-040")  # an existing local path wins


@needs_hub
def test_a_cached_hub_id_loads_offline_in_every_backend(tmp_path: Path, monkeypatch):
    cache, state = _cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch = pytest.importorskip("torch")
    from regnet_pt import RegNetForImageClassification

    model = RegNetForImageClassification.from_pretrained("facebook/regnet-tiny")
    key = "regnet.embedder.embedder.convolution.weight"
    assert np.array_equal(model.state_dict()[key].numpy(), state[key])
    assert main(["convert", "facebook/regnet-tiny", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    del torch


@needs_hub
def test_an_uncached_hub_id_fails_fast_offline_naming_the_local_alternative(tmp_path: Path, capsys):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "regnet_core.cli", "convert", "facebook/regnet-y-040", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert time.perf_counter() - started < 60
    message = result.stderr.strip().splitlines()[-1]
    assert "facebook/regnet-y-040" in message and "offline" in message and "local directory" in message
    assert "Traceback" not in result.stderr


def test_without_huggingface_hub_a_hub_id_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ModuleNotFoundError("No module named 'huggingface_hub'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    from regnet_core.hub import download

    with pytest.raises(HubError, match="huggingface_hub is not installed.*local directory"):
        download("facebook/regnet-y-040")
