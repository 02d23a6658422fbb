"""The exporter's error type."""

from __future__ import annotations

from natdeploy.errors import NatDeployError


class ExportError(NatDeployError):
    """An export cannot be made as asked, or its verification failed; no bundle is left behind."""
