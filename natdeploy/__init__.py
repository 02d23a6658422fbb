"""natdeploy: hardware-aware Neural Architecture Transfer over a Once-for-All MobileNetV3 supernet."""

__version__ = "0.1.0"

from natdeploy.errors import CheckpointError, ConfigError, NatDeployError  # noqa: E402
from natdeploy.space import Arch, SearchSpace  # noqa: E402

__all__ = ["Arch", "SearchSpace", "NatDeployError", "CheckpointError", "ConfigError", "__version__"]
