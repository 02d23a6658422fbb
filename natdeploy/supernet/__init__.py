"""The OFA MobileNetV3 elastic supernet, static subnet extraction, BN recalibration, checkpoints."""

from natdeploy.supernet.checkpoint import load_supernet, save_supernet
from natdeploy.supernet.network import MobileNetV3Subnet, OFAMobileNetV3Supernet, extract_subnet, recalibrate_bn

__all__ = ["OFAMobileNetV3Supernet", "MobileNetV3Subnet", "extract_subnet", "recalibrate_bn", "load_supernet",
           "save_supernet"]
