"""Hugging Face Hub ids ("facebook/regnet-y-040") resolved to local directories through huggingface_hub.

huggingface_hub is an optional extra. Without it, or offline with nothing cached, a hub id
fails at once with a message that names the local-directory alternative.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CheckpointError

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
# The files a RegNet checkpoint can need: configs and weights of every framework transformers
# or timm publish; nothing else is downloaded.
ALLOW_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tf_model*.h5",
    "tf_model.h5.index.json",
    "flax_model*.msgpack",
    "flax_model.msgpack.index.json",
]


class HubError(CheckpointError):
    """A hub id that cannot be resolved here (no huggingface_hub, offline, not cached, no such repository)."""


def looks_like_hub_id(text: str) -> bool:
    """True for 'owner/name' strings that are not an existing local path."""
    return isinstance(text, str) and bool(_HUB_ID.fullmatch(text)) and not Path(text).exists()


def _alternative(repo_id: str) -> str:
    return (
        f"download it where the hub is reachable (e.g. `huggingface-cli download {repo_id} --local-dir DIR`) "
        "and pass the local directory instead"
    )


def download(repo_id: str, revision: str | None = None) -> Path:
    """A local snapshot directory of a hub repository (from the cache when offline)."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError
    except ModuleNotFoundError:
        raise HubError(
            f"{repo_id!r} looks like a Hugging Face Hub id, but huggingface_hub is not installed "
            f"(pip install 'regnet-trio[hub]'); or {_alternative(repo_id)}"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=offline, etag_timeout=5
        )
    except LocalEntryNotFoundError:
        state = "offline (HF_HUB_OFFLINE is set)" if offline else "unreachable"
        raise HubError(
            f"{repo_id} is not in the local hub cache and the hub is {state}; {_alternative(repo_id)}"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubError(f"cannot fetch {repo_id} from the hub ({first}); {_alternative(repo_id)}") from None
    return Path(path)
