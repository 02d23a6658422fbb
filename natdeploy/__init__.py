"""natdeploy: hardware-aware Neural Architecture Transfer over a Once-for-All MobileNetV3 supernet."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from natdeploy.errors import CheckpointError, ConfigError, NatDeployError  # noqa: E402

__all__ = ["Arch", "SearchSpace", "NatDeployError", "CheckpointError", "ConfigError", "__version__"]


def __getattr__(name: str) -> Any:
    # Arch and SearchSpace load numpy; importing them on first use keeps `natdeploy --help` fast.
    if name in ("Arch", "SearchSpace"):
        from natdeploy import space

        return getattr(space, name)
    raise AttributeError(f"module 'natdeploy' has no attribute {name!r}")
