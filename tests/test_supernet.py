import numpy as np
import pytest
import torch
from torch import nn

from natdeploy.errors import CheckpointError
from natdeploy.space import SearchSpace, madds, params
from natdeploy.supernet import (MobileNetV3Subnet, OFAMobileNetV3Supernet, extract_subnet, load_supernet,
                                recalibrate_bn, save_supernet)

SMALL = SearchSpace.preset("small")


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BN statistics and kernel-transform matrices, so that nothing matches by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("_matrix"):
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return net


class MacCounter:
    """Exact integer multiply-add count of a module's forward pass, from forward hooks on conv and linear layers."""

    def __init__(self, module: nn.Module):
        self.total = 0
        self.handles = [m.register_forward_hook(self._hook) for m in module.modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear))]

    def _hook(self, m, inputs, out):
        if isinstance(m, nn.Conv2d):
            self.total += m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] * out.numel()
        else:
            self.total += m.in_features * m.out_features * (out.numel() // m.out_features)


@pytest.fixture(scope="module")
def supernet():
    return randomise(OFAMobileNetV3Supernet(n_classes=10, width=1.0)).eval()


def test_supernet_matches_extracted_subnet(supernet):
    for arch in SMALL.sample(np.random.default_rng(1), 6) + [SMALL.smallest(), SMALL.largest()]:
        x = torch.randn(2, 3, arch.r, arch.r)
        sub = extract_subnet(supernet, arch)
        assert isinstance(sub, MobileNetV3Subnet) and not sub.training
        with torch.no_grad():
            torch.testing.assert_close(sub(x), supernet(x, arch), atol=1e-5, rtol=0)


def test_analytic_madds_and_params_equal_hook_count(supernet):
    for arch in SMALL.sample(np.random.default_rng(2), 8):
        sub = extract_subnet(supernet, arch)
        counter = MacCounter(sub)
        with torch.no_grad():
            sub(torch.zeros(1, 3, arch.r, arch.r))
        assert counter.total == madds(arch, n_classes=10)
        assert sum(p.numel() for p in sub.parameters()) == params(arch, n_classes=10)


def test_forward_rejects_wrong_arch(supernet):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"w=1.2 does not match .* allowed: \[1.0\]"):
        supernet(x, SMALL.smallest().replace(w=1.2))
    with pytest.raises(TypeError, match="Arch"):
        supernet(x, {"ks": [3] * 20})


def test_training_step_updates_only_active_bn_slice():
    net = OFAMobileNetV3Supernet(n_classes=4, width=1.0).train()
    arch = SMALL.smallest()
    bn = net.blocks[1].conv.inverted_bottleneck.bn.bn
    before = bn.running_mean.clone()
    loss = net(torch.randn(4, 3, 32, 32), arch).logsumexp(1).mean()
    loss.backward()
    mid = 16 * 3
    assert not torch.equal(bn.running_mean[:mid], before[:mid])
    assert torch.equal(bn.running_mean[mid:], before[mid:])
    assert net.blocks[1].conv.depth_conv.conv.conv.weight.grad is not None
    assert getattr(net.blocks[1].conv.depth_conv.conv, "7to5_matrix").grad is not None  # k3 goes through both
    assert net.blocks[4].conv.point_linear.conv.conv.weight.grad is None  # depth 2: block 3 of stage 0 unused


def test_recalibrate_bn_sets_batch_statistics():
    torch.manual_seed(0)
    sub = OFAMobileNetV3Supernet(n_classes=3).extract_subnet(SMALL.smallest()).eval()
    data = [torch.randn(8, 3, 32, 32) * 3 + 1 for _ in range(4)]
    used = recalibrate_bn(sub, [(x, torch.zeros(8)) for x in data], n_batches=3)
    assert used == 3 and not sub.training
    stem_bn = sub.first_conv.bn
    with torch.no_grad():
        expected = torch.stack([sub.first_conv.conv(x).mean((0, 2, 3)) for x in data[:3]]).mean(0)
    torch.testing.assert_close(stem_bn.running_mean, expected, atol=1e-4, rtol=1e-4)
    assert stem_bn.momentum == 0.1
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(sub, [], n_batches=2)


def test_natdeploy_checkpoint_round_trip(tmp_path, supernet):
    path = save_supernet(supernet, tmp_path / "sn" / "supernet.pt", extra={"epoch": 3})
    loaded = load_supernet(path).eval()
    arch = SMALL.sample(np.random.default_rng(5))
    x = torch.randn(1, 3, arch.r, arch.r)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, arch), supernet(x, arch), atol=0, rtol=0)
    assert not list((tmp_path / "sn").glob("*.tmp"))


def test_new_task_reinitialises_classifier(tmp_path, supernet, caplog):
    path = save_supernet(supernet, tmp_path / "supernet.pt")
    net = load_supernet(path, n_classes=7)
    assert net.classifier.linear.out_features == 7
    assert "re-initialised the classifier for 7 classes" in caplog.text
    torch.testing.assert_close(net.first_conv.conv.weight, supernet.first_conv.conv.weight)


def test_bad_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth does not exist"):
        load_supernet(missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pth could not be read"):
        load_supernet(corrupt)
    truncated = tmp_path / "truncated.pth"
    save_supernet(OFAMobileNetV3Supernet(n_classes=2), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_supernet(truncated)
    wrong = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, wrong)
    with pytest.raises(CheckpointError, match="resnet.pth"):
        load_supernet(wrong)
    partial = tmp_path / "partial.pth"
    state = OFAMobileNetV3Supernet(n_classes=2).state_dict()
    del state["blocks.3.conv.point_linear.conv.conv.weight"]
    torch.save({"state_dict": state}, partial)
    with pytest.raises(CheckpointError, match="partial.pth does not fit .* 1 missing"):
        load_supernet(partial)


def test_supernet_and_static_subnet_work_channels_last(supernet):
    arch = SMALL.sample(np.random.default_rng(9))
    x = torch.randn(2, 3, arch.r, arch.r)
    net_cl = randomise(OFAMobileNetV3Supernet(n_classes=10)).eval().to(memory_format=torch.channels_last)
    net = randomise(OFAMobileNetV3Supernet(n_classes=10)).eval()
    with torch.no_grad():
        torch.testing.assert_close(net_cl(x.to(memory_format=torch.channels_last), arch), net(x, arch),
                                   atol=1e-5, rtol=0)



@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_without_the_taps_that_meet_only_padding_is_the_full_convolution(stride):
    """On tiny maps DynamicDWConv leaves out the kernel rings that reach only zero padding: the output and the
    gradients equal the full kernel's, and no more rings go than may (one more ring changes the output)."""
    from natdeploy.supernet.layers import DynamicDWConv, unused_taps

    conv = randomise(DynamicDWConv(6, stride))
    weight = conv.conv.weight
    g = torch.Generator().manual_seed(1)
    trimmed = 0
    for kernel in (3, 5, 7):
        for size in range(1, 10):
            x = torch.randn(2, 6, size, size, generator=g).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            full = torch.nn.functional.conv2d(x, conv.weight(6, kernel), None, stride, kernel // 2, 1, 6)
            out = conv(x, kernel)
            assert out.shape == full.shape
            gy = torch.randn(full.shape, generator=g)
            for a, b in zip(torch.autograd.grad(out, (x, weight), gy), torch.autograd.grad(full, (x, weight), gy)):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
            torch.testing.assert_close(out, full, atol=1e-5, rtol=0)
            trim = unused_taps(kernel, stride, size)
            trimmed += trim > 0
            if trim < kernel // 2:
                t, w = trim + 1, conv.weight(6, kernel).detach()
                less = torch.nn.functional.conv2d(x.detach(), w[:, :, t:kernel - t, t:kernel - t], None, stride,
                                                  kernel // 2 - t, 1, 6)
                assert less.shape != full.shape or not torch.allclose(less, full.detach(), atol=1e-5)
    assert trimmed >= 6
