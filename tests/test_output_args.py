"""Output arguments that cannot work are refused with our OutputError before anything is written."""

from __future__ import annotations

import pytest

from regnet_core.checkpoint import parse_size
from regnet_core.errors import OutputError
from regnet_core.io import atomic_write, atomic_write_text


@pytest.mark.parametrize("size", ["9" * 400, "1e400GB", "0.5B", "-3GB", "5 parsecs", True])
def test_shard_sizes_that_cannot_be_bytes_are_refused(size):
    with pytest.raises(OutputError, match="max_shard_size"):
        parse_size(size)


def test_shard_sizes_parse_in_decimal_and_binary_units():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size(1234) == 1234


def test_a_file_never_replaces_a_directory(tmp_path):
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="is a directory"):
        atomic_write_text(target, "logits")
    with pytest.raises(OutputError, match="is a directory"):
        atomic_write(target, lambda path: path.write_text("x"))
    assert (target / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
