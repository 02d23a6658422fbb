"""natdeploy against Once-for-All's reference implementation (the ``ofa`` package, a test-only dependency)."""

import json

import numpy as np
import pytest
import torch

from natdeploy.space import Arch, SearchSpace, madds, params
from natdeploy.supernet import load_supernet

ofa_networks = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                                   reason="the ofa package (test extra) is not installed")
from ofa.utils import count_net_flops  # noqa: E402

from test_supernet import randomise  # noqa: E402

N_ARCHS = 25
RESOLUTIONS = (32, 48, 64, 96, 128, 160, 192, 224)
N_CLASSES = 10


@pytest.fixture(scope="module", params=[1.0, 1.2], ids=["w1.0", "w1.2"])
def pair(request, tmp_path_factory):
    w = request.param
    ref = ofa_networks.OFAMobileNetV3(n_classes=N_CLASSES, width_mult=w, ks_list=[3, 5, 7],
                                      expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    randomise(ref, seed=int(w * 10))
    path = tmp_path_factory.mktemp("ofa") / f"ofa_mbv3_w{w}.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    return w, ref.eval(), load_supernet(path).eval()


def _archs(w: float) -> list[Arch]:
    space = SearchSpace(resolutions=RESOLUTIONS, widths=(w,))
    return space.sample(np.random.default_rng(int(w * 100)), N_ARCHS - 2) + [space.smallest(), space.largest()]


def test_outputs_madds_and_configs_match_ofa(pair):
    w, ref, net = pair
    for arch in _archs(w):
        x = torch.randn(2, 3, arch.r, arch.r, generator=torch.Generator().manual_seed(arch.r))
        ref.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
        ref_sub = ref.get_active_subnet(preserve_weight=True).eval()
        ours = net.extract_subnet(arch)
        with torch.no_grad():
            expected = ref_sub(x)
            assert (ref(x) - expected).abs().max().item() == 0.0
            assert (net(x, arch) - expected).abs().max().item() <= 1e-5, str(arch)
            assert (ours(x) - expected).abs().max().item() <= 1e-5, str(arch)
        # OFA accumulates its count in float32, so compare to float32 precision; our own count is exact.
        ref_madds = count_net_flops(ref_sub, (1, 3, arch.r, arch.r))
        assert madds(arch, N_CLASSES) == pytest.approx(ref_madds, rel=2e-7, abs=1)
        assert params(arch, N_CLASSES) == sum(p.numel() for p in ref_sub.parameters())
        config = json.loads(json.dumps(ref_sub.config))
        assert Arch.from_ofa_config(config, resolution=arch.r) == arch
        assert json.loads(json.dumps(arch.to_ofa_config(N_CLASSES))) == config


def test_legacy_ofa_key_names_load(tmp_path):
    ref = ofa_networks.OFAMobileNetV3(n_classes=1000, width_mult=1.0, ks_list=[3, 5, 7],
                                      expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    randomise(ref, seed=3)
    # The published checkpoints predate OFA's renames: blocks' convs were "mobile_inverted_conv".
    legacy = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
              for k, v in ref.state_dict().items()}
    assert any(".mobile_inverted_conv." in k for k in legacy)
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": legacy, "epoch": 180}, path)
    net = load_supernet(path).eval()
    arch = SearchSpace.preset("ofa").sample(np.random.default_rng(0)).replace(w=1.0, r=128)
    ref.eval().set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert (net(x, arch) - ref(x)).abs().max().item() <= 1e-5
    transfer = load_supernet(path, n_classes=N_CLASSES)
    assert transfer.classifier.linear.out_features == N_CLASSES
