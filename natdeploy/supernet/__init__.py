"""The OFA MobileNetV3 elastic supernet, static subnet extraction, BN recalibration, checkpoints, named downloads.

The names below are imported from their modules on first use, so that what needs only the catalogue of published
supernets (``natdeploy supernets``, ``natdeploy.supernet.hub``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"load_supernet": "checkpoint", "save_supernet": "checkpoint",
         "OFA_SUPERNETS": "hub", "DownloadError": "hub", "SupernetInfo": "hub", "fetch_supernet": "hub",
         "list_supernets": "hub", "resolve_supernet": "hub",
         "MobileNetV3Subnet": "network", "OFAMobileNetV3Supernet": "network", "extract_subnet": "network",
         "recalibrate_bn": "network"}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
