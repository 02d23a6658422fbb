"""The one error family natdeploy raises for problems a user can fix."""

from __future__ import annotations


class NatDeployError(Exception):
    """Base class: the message says what was wrong and what to do about it."""


class CheckpointError(NatDeployError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


class ConfigError(NatDeployError):
    """A configuration file or command-line value is invalid."""


class ConversionError(NatDeployError):
    """A model could not be converted to a deployment format (ONNX, TFLite), or a conversion setting is missing."""


class ArchError(NatDeployError, ValueError):
    """An Arch, its string/dict/net.config form, or a search-space setting is invalid.

    Also a ValueError, so code that validated with ``except ValueError`` keeps working.
    """


class DeviceSpecError(ConfigError, ValueError):
    """A device-spec value (such as a CPU mask) is invalid; also a ValueError, like :class:`ArchError`."""
