"""The README's file-to-label examples run as written, in every backend, and print the label the pipeline gives."""

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\s*```python\n(.*?)```", re.S)
NEEDS = {"pt": "torch", "tf": "tensorflow", "flax": "flax"}


def _blocks() -> dict[str, str]:
    return dict(BLOCK.findall(README.read_text()))


def test_every_backend_has_a_file_to_label_example():
    assert set(_blocks()) == set(NEEDS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory holding `ckpt` (regnet-x-002, seeded random weights, 1000 placeholder labels) and `cat.jpg`."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from regnet_core import build_model_spec, get_config, random_state, save_checkpoint

    directory = tmp_path_factory.mktemp("readme")
    config = get_config("regnet-x-002")
    save_checkpoint(directory / "ckpt", config, random_state(build_model_spec(config), 0, True))
    Image.fromarray(skdata.chelsea()).save(directory / "cat.jpg")
    return directory


@pytest.fixture(scope="module")
def expected(workdir):
    from regnet_core import predict

    return predict(workdir / "ckpt", workdir / "cat.jpg", top_k=1)[0][0]["label"]


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_readme_example_prints_the_top_label(workdir, expected, name, monkeypatch):
    if importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{NEEDS[name]} not installed")
    monkeypatch.chdir(workdir)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_blocks()[name], f"README.md[{name}]", "exec"), {})
    assert printed.getvalue().strip() == expected
