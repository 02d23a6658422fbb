"""The OFA MobileNetV3 elastic supernet, static subnet extraction, BN recalibration, checkpoints, named downloads."""

from natdeploy.supernet.checkpoint import load_supernet, save_supernet
from natdeploy.supernet.hub import (OFA_SUPERNETS, DownloadError, SupernetInfo, fetch_supernet, list_supernets,
                                    resolve_supernet)
from natdeploy.supernet.network import MobileNetV3Subnet, OFAMobileNetV3Supernet, extract_subnet, recalibrate_bn

__all__ = ["OFAMobileNetV3Supernet", "MobileNetV3Subnet", "extract_subnet", "recalibrate_bn", "load_supernet",
           "save_supernet", "resolve_supernet", "fetch_supernet", "list_supernets", "SupernetInfo", "DownloadError",
           "OFA_SUPERNETS"]
