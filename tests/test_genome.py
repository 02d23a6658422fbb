"""The genome array API, the stage plan and the layer description agree with each other and with Arch."""

import numpy as np

from natdeploy.latency.ops import OpSig, arch_ops, space_ops
from natdeploy.space import Arch, SearchSpace, layer_plan, supernet_plan
from natdeploy.supernet.network import OFAMobileNetV3Supernet

SPACE = SearchSpace.preset("nat")


def test_array_api_agrees_with_decode():
    rng = np.random.default_rng(0)
    g = SPACE.repair(rng.integers(0, 10, (200, 22)) + rng.normal(0, 0.4, (200, 22)), rng)
    assert (SPACE.canonical(g) == g).all() and (SPACE.check_genomes(g) == g).all()
    ks, e, active = SPACE.kernel_expand(g)
    depths = SPACE.depths(g)
    for row in range(len(g)):
        arch = SPACE.decode(g[row])
        assert list(arch.d) == depths[row].tolist() and active[row].sum() == sum(arch.d)
        assert Arch(ks=ks[row].tolist(), e=e[row].tolist(), d=arch.d, r=arch.r, w=arch.w) == arch
        assert (SPACE.encode(arch) == g[row]).all()


def test_op_keys_map_back_to_exactly_their_layer():
    for w in (1.0, 1.2):
        space = SearchSpace.preset("ofa", widths=[w])
        for op in space_ops(space, 1000, resolutions=[160]):
            assert OpSig.from_key(op.key).to_layer() == op.to_layer()
        arch = space.sample(np.random.default_rng(1))
        assert [op.to_layer() for op in arch_ops(arch)] == layer_plan(arch)


def test_supernet_and_ofa_config_follow_the_stage_plan():
    plan = supernet_plan(1.2)
    net = OFAMobileNetV3Supernet(n_classes=10, width=1.2)
    assert [b.skip for b in net.blocks] == [plan.block0.skip] + [s.skip for s in plan.blocks]
    arch = SearchSpace.preset("nat", widths=[1.2]).largest()
    config = arch.to_ofa_config()
    assert [b["conv"]["stride"] for b in config["blocks"][1:]] == [s.stride for s in plan.blocks]
    assert [b["shortcut"] is not None for b in config["blocks"][1:]] == [s.skip for s in plan.blocks]
