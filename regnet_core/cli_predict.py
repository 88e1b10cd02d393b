"""`regnet predict`: registered on the command line by regnet_core.cli (placeholder until implemented)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `predict` subcommand to the `regnet` parser."""
