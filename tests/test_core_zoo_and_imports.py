"""Zoo lookup, and the core's promise to load numpy only."""

import subprocess
import sys

import pytest

from regnet_core import UnknownModelError, get_config, list_models


def test_zoo_lists_every_published_model():
    names = list_models()
    assert len(names) == 34
    for kind in ("x", "y"):
        for size in ("002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320"):
            assert f"regnet-{kind}-{size}" in names
    for seer in ("320", "640", "1280", "2560", "10b"):
        assert f"regnet-y-{seer}-seer" in names and f"regnet-y-{seer}-seer-in1k" in names


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownModelError, match="did you mean regnet-y-040"):
        get_config("regnet-y-04")
    with pytest.raises(ValueError, match="unknown RegNet 'resnet50'"):
        get_config("resnet50")


def test_timm_names_are_aliases():
    assert get_config("regnety_040") == get_config("regnet-y-040")


def test_trunks_have_no_classifier():
    config = get_config("regnet-y-10b-seer")
    assert config.num_labels == 0 and config.architectures == ["RegNetModel"]
    assert get_config("regnet-y-10b-seer-in1k").num_labels == 1000


def test_importing_the_core_loads_no_framework():
    code = (
        "import sys, regnet_core, regnet_core.cli, regnet_core.backends, regnet_core.checkpoint;"
        "heavy = [m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
