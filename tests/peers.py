"""Peer libraries for the optional comparison tests: timm and torchvision from .peers/.

tools/install-test-peers.sh puts them there. PyPI's torchvision is built against CUDA and
its C++ operators do not load beside the CPU build of PyTorch; its model code is pure
Python, so it imports without the module that registers those operators' meta kernels.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from types import ModuleType

import pytest

PEERS = Path(__file__).resolve().parent.parent / ".peers"


def _activate() -> None:
    if PEERS.is_dir() and str(PEERS) not in sys.path:
        sys.path.append(str(PEERS))
    # torchvision/_meta_registrations.py registers meta kernels for C++ operators that the
    # CUDA build cannot load here; an empty stand-in lets the pure-Python parts import.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


def peer(name: str) -> ModuleType:
    """Import a peer library (timm, torchvision), or skip the test saying how to install it."""
    pytest.importorskip("torch")
    _activate()
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (run tools/install-test-peers.sh)")
    return importlib.import_module(name)
