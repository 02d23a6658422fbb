"""OFA's net.config in both of OFA's layouts: the current one (written by the ofa package) and the older one of
OFA's published specialised subnets (MobileInvertedResidualBlock / mobile_inverted_conv / MBInvertedConvLayer)."""

import copy
import json

import numpy as np
import pytest

from natdeploy.errors import ConfigError
from natdeploy.space import Arch, SearchSpace, madds

ofa_networks = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                                   reason="the ofa package (test extra) is not installed")
from ofa.imagenet_classification.networks import MobileNetV3  # noqa: E402
from ofa.utils import count_net_flops  # noqa: E402

N_CLASSES = 10
RESOLUTIONS = (96, 128, 160, 192, 224)
CONV_LAYERS = ("first_conv", "final_expand_layer", "feature_mix_layer")


def legacy_layout(config: dict) -> dict:
    """``config`` (current layout) as OFA's older code wrote it, the layout of its published net.config files:
    blocks were MobileInvertedResidualBlock with the MBConv under mobile_inverted_conv, the MBConv was an
    MBInvertedConvLayer without a 'groups' key, a ConvLayer had no 'use_se' key, and 'bn' had no 'ws_eps'."""
    old = copy.deepcopy(config)
    old["bn"] = {k: v for k, v in old["bn"].items() if k != "ws_eps"}
    for name in CONV_LAYERS:
        old[name] = {k: v for k, v in old[name].items() if k != "use_se"}
    blocks = []
    for block in old["blocks"]:
        conv = {k: v for k, v in block["conv"].items() if k != "groups"}
        conv["name"] = "MBInvertedConvLayer"
        blocks.append({"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv,
                       "shortcut": block["shortcut"]})
    old["blocks"] = blocks
    return old


@pytest.fixture(scope="module", params=[1.0, 1.2], ids=["w1.0", "w1.2"])
def subnets(request):
    """(Arch, net.config as the ofa package writes it) for a handful of Archs at one width."""
    w = request.param
    ref = ofa_networks.OFAMobileNetV3(n_classes=N_CLASSES, width_mult=w, ks_list=[3, 5, 7],
                                      expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    space = SearchSpace(resolutions=RESOLUTIONS, widths=(w,))
    archs = space.sample(np.random.default_rng(int(w * 10)), 4) + [space.smallest(), space.largest()]
    out = []
    for arch in archs:
        ref.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
        out.append((arch, json.loads(json.dumps(ref.get_active_subnet(preserve_weight=False).config))))
    return out


def _write(path, config):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=4))  # OFA writes net.config with json.dump(..., indent=4)
    return path


def test_both_layouts_read_into_the_same_arch_with_ofa_madds(subnets, tmp_path):
    for n, (arch, config) in enumerate(subnets):
        old = legacy_layout(config)
        assert "conv" not in old["blocks"][1] and old["blocks"][1]["mobile_inverted_conv"]["name"] == \
            "MBInvertedConvLayer"
        for layout, cfg in (("current", config), ("legacy", old)):
            path = _write(tmp_path / f"{n}_{layout}" / "net.config", cfg)
            read = Arch.from_ofa_file(path, resolution=arch.r)
            assert read == arch, (layout, str(arch))
            assert Arch.from_ofa_config(json.loads(path.read_text()), resolution=arch.r) == arch
            # OFA's own count, on the network OFA builds from this very file (it pops keys, so a fresh copy).
            ofa_net = MobileNetV3.build_from_config(json.loads(path.read_text()))
            ofa_madds = count_net_flops(ofa_net, (1, 3, arch.r, arch.r))
            assert madds(read, N_CLASSES) == pytest.approx(ofa_madds, rel=2e-7, abs=1), (layout, str(arch))
        assert arch.to_ofa_config(N_CLASSES) == config  # and the writer writes the current layout


def test_resolution_from_run_config_beside_the_file(subnets, tmp_path):
    arch, config = subnets[0]
    path = _write(tmp_path / "spec" / "net.config", legacy_layout(config))
    (tmp_path / "spec" / "run.config").write_text(json.dumps({"image_size": 160, "n_classes": N_CLASSES}))
    assert Arch.from_ofa_file(path) == arch.replace(r=160)
    assert Arch.from_ofa_file(path, resolution=224) == arch.replace(r=224)  # an explicit resolution wins


def _one_line_error(path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        Arch.from_ofa_file(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_bad_files_are_one_line_errors_that_name_the_file(subnets, tmp_path):
    arch, config = subnets[0]
    assert "does not exist" in _one_line_error(tmp_path / "missing" / "net.config", resolution=224)
    (tmp_path / "folder").mkdir()
    assert "could not be read" in _one_line_error(tmp_path / "folder", resolution=224)
    binary = tmp_path / "binary.config"
    binary.write_bytes(b"\x80\x02\xff\xfe not text")
    assert "could not be read" in _one_line_error(binary, resolution=224)
    text = tmp_path / "text.config"
    text.write_text("blocks: [ResidualBlock]\n")
    assert "is not JSON" in _one_line_error(text, resolution=224)
    assert "records no resolution" in _one_line_error(_write(tmp_path / "nores" / "net.config", config))

    neither = copy.deepcopy(config)
    neither["blocks"][2] = {"name": "InvertedBlock", "body": neither["blocks"][2]["conv"], "shortcut": None}
    assert "block 2" in _one_line_error(_write(tmp_path / "neither.config", neither), resolution=224)
    unnamed = copy.deepcopy(config)
    unnamed["blocks"][3] = {"body": unnamed["blocks"][3]["conv"]}
    assert "block 3" in _one_line_error(_write(tmp_path / "unnamed.config", unnamed), resolution=224)
    proxyless = dict(copy.deepcopy(config), name="ProxylessNASNets")
    assert "ProxylessNASNets" in _one_line_error(_write(tmp_path / "proxyless.config", proxyless), resolution=224)
    assert "first_conv" in _one_line_error(_write(tmp_path / "list.config", [1, 2, 3]), resolution=224)
    stride = copy.deepcopy(config)
    stride["blocks"][1]["conv"]["stride"] = 1
    assert "stride" in _one_line_error(_write(tmp_path / "stride.config", stride), resolution=224)
    kernel = legacy_layout(config)
    kernel["blocks"][1]["mobile_inverted_conv"]["kernel_size"] = 9
    assert "kernel_size 9" in _one_line_error(_write(tmp_path / "kernel.config", kernel), resolution=224)
    assert "r=8" in _one_line_error(_write(tmp_path / "small.config", config), resolution=8)


def test_identity_blocks_are_skipped(subnets):
    """OFA's forward passes the input through a block whose conv is null or a ZeroLayer."""
    arch, config = subnets[0]
    old = legacy_layout(config)
    old["blocks"].insert(3, {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": None,
                             "shortcut": old["blocks"][2]["shortcut"]})
    assert Arch.from_ofa_config(old, resolution=arch.r) == arch
