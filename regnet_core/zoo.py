"""The RegNet zoo: one line of design numbers per published model.

Numbers from pycls (configs/dds_baselines) and vissl (SEER). Names follow the checkpoints
(facebook/NAME); timm's names are accepted as aliases.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .config import RegNetConfig

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ZooEntry:
    """Design-space numbers of one published RegNet."""

    name: str
    paper_name: str
    depth: int
    w0: int
    wa: float
    wm: float
    group_width: int
    se_ratio: float = 0.0
    num_labels: int = IMAGENET_CLASSES
    timm_name: str | None = None

    @property
    def is_trunk(self) -> bool:
        """True for trunks published without a classifier (SEER)."""
        return self.num_labels == 0

    def config(self) -> RegNetConfig:
        """The RegNetConfig of this model."""
        return RegNetConfig.from_design(
            self.depth,
            self.w0,
            self.wa,
            self.wm,
            self.group_width,
            se_ratio=self.se_ratio,
            num_labels=self.num_labels,
            architectures=["RegNetModel" if self.is_trunk else "RegNetForImageClassification"],
        )


# fmt: off
_ZOO = [
    ZooEntry("regnet-x-002", "RegNetX-200MF", 13, 24, 36.44, 2.49, 8, timm_name="regnetx_002"),
    ZooEntry("regnet-x-004", "RegNetX-400MF", 22, 24, 24.48, 2.54, 16, timm_name="regnetx_004"),
    ZooEntry("regnet-x-006", "RegNetX-600MF", 16, 48, 36.97, 2.24, 24, timm_name="regnetx_006"),
    ZooEntry("regnet-x-008", "RegNetX-800MF", 16, 56, 35.73, 2.28, 16, timm_name="regnetx_008"),
    ZooEntry("regnet-x-016", "RegNetX-1.6GF", 18, 80, 34.01, 2.25, 24, timm_name="regnetx_016"),
    ZooEntry("regnet-x-032", "RegNetX-3.2GF", 25, 88, 26.31, 2.25, 48, timm_name="regnetx_032"),
    ZooEntry("regnet-x-040", "RegNetX-4.0GF", 23, 96, 38.65, 2.43, 40, timm_name="regnetx_040"),
    ZooEntry("regnet-x-064", "RegNetX-6.4GF", 17, 184, 60.83, 2.07, 56, timm_name="regnetx_064"),
    ZooEntry("regnet-x-080", "RegNetX-8.0GF", 23, 80, 49.56, 2.88, 120, timm_name="regnetx_080"),
    ZooEntry("regnet-x-120", "RegNetX-12GF", 19, 168, 73.36, 2.37, 112, timm_name="regnetx_120"),
    ZooEntry("regnet-x-160", "RegNetX-16GF", 22, 216, 55.59, 2.1, 128, timm_name="regnetx_160"),
    ZooEntry("regnet-x-320", "RegNetX-32GF", 23, 320, 69.86, 2.0, 168, timm_name="regnetx_320"),
    ZooEntry("regnet-y-002", "RegNetY-200MF", 13, 24, 36.44, 2.49, 8, 0.25, timm_name="regnety_002"),
    ZooEntry("regnet-y-004", "RegNetY-400MF", 16, 48, 27.89, 2.09, 8, 0.25, timm_name="regnety_004"),
    ZooEntry("regnet-y-006", "RegNetY-600MF", 15, 48, 32.54, 2.32, 16, 0.25, timm_name="regnety_006"),
    ZooEntry("regnet-y-008", "RegNetY-800MF", 14, 56, 38.84, 2.4, 16, 0.25, timm_name="regnety_008"),
    ZooEntry("regnet-y-016", "RegNetY-1.6GF", 27, 48, 20.71, 2.65, 24, 0.25, timm_name="regnety_016"),
    ZooEntry("regnet-y-032", "RegNetY-3.2GF", 21, 80, 42.63, 2.66, 24, 0.25, timm_name="regnety_032"),
    ZooEntry("regnet-y-040", "RegNetY-4.0GF", 22, 96, 31.41, 2.24, 64, 0.25, timm_name="regnety_040"),
    ZooEntry("regnet-y-064", "RegNetY-6.4GF", 25, 112, 33.22, 2.27, 72, 0.25, timm_name="regnety_064"),
    ZooEntry("regnet-y-080", "RegNetY-8.0GF", 17, 192, 76.82, 2.19, 56, 0.25, timm_name="regnety_080"),
    ZooEntry("regnet-y-120", "RegNetY-12GF", 19, 168, 73.36, 2.37, 112, 0.25, timm_name="regnety_120"),
    ZooEntry("regnet-y-160", "RegNetY-16GF", 18, 200, 106.23, 2.48, 112, 0.25, timm_name="regnety_160"),
    ZooEntry("regnet-y-320", "RegNetY-32GF", 20, 232, 115.89, 2.53, 232, 0.25, timm_name="regnety_320"),
    ZooEntry("regnet-y-320-seer", "SEER RegNetY-32GF", 20, 232, 115.89, 2.53, 232, 0.25, 0),
    ZooEntry("regnet-y-320-seer-in1k", "SEER RegNetY-32GF", 20, 232, 115.89, 2.53, 232, 0.25),
    ZooEntry("regnet-y-640-seer", "SEER RegNetY-64GF", 20, 352, 147.48, 2.4, 328, 0.25, 0),
    ZooEntry("regnet-y-640-seer-in1k", "SEER RegNetY-64GF", 20, 352, 147.48, 2.4, 328, 0.25),
    ZooEntry("regnet-y-1280-seer", "SEER RegNetY-128GF", 27, 456, 160.83, 2.52, 264, 0.25, 0),
    ZooEntry("regnet-y-1280-seer-in1k", "SEER RegNetY-128GF", 27, 456, 160.83, 2.52, 264, 0.25),
    ZooEntry("regnet-y-2560-seer", "SEER RegNetY-256GF", 27, 640, 230.83, 2.53, 373, 0.25, 0),
    ZooEntry("regnet-y-2560-seer-in1k", "SEER RegNetY-256GF", 27, 640, 230.83, 2.53, 373, 0.25),
    ZooEntry("regnet-y-10b-seer", "SEER RegNetY-10B", 27, 1744, 620.83, 2.52, 1010, 0.25, 0),
    ZooEntry("regnet-y-10b-seer-in1k", "SEER RegNetY-10B", 27, 1744, 620.83, 2.52, 1010, 0.25),
]
# fmt: on

ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ZOO}
_ALIASES: dict[str, str] = {entry.timm_name: entry.name for entry in _ZOO if entry.timm_name}


class UnknownModelError(ValueError, KeyError):
    """A name that is not in the zoo; the message suggests the closest names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def list_models() -> list[str]:
    """Every zoo name, in table order."""
    return list(ZOO)


def _canonical_name(name: str) -> str:
    return _ALIASES.get(name.lower(), name.lower().replace("_", "-"))


def is_zoo_name(name: str) -> bool:
    """True when ``name`` (or its timm alias) is in the zoo."""
    return isinstance(name, str) and _canonical_name(name) in ZOO


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for a name; unknown names raise UnknownModelError with suggestions."""
    key = _canonical_name(name) if isinstance(name, str) else name
    if key not in ZOO:
        candidates = list(ZOO) + list(_ALIASES)
        prefixed = [c for c in ZOO if c.startswith(str(key))]
        close = prefixed[:3] or difflib.get_close_matches(str(key), candidates, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `regnet list` shows the zoo"
        raise UnknownModelError(f"unknown RegNet {name!r}{hint}")
    return ZOO[key]


def get_config(name: str) -> RegNetConfig:
    """The RegNetConfig of a zoo model, e.g. ``get_config("regnet-y-040")``."""
    return get_entry(name).config()
