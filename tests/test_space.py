import json

import numpy as np
import pytest

from natdeploy.space import (GENOME_LENGTH, PRESETS, Arch, SearchSpace, layer_plan, madds, make_divisible, params,
                             stage_patterns, stage_widths)


def _arch(**kw):
    base = dict(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r=224, w=1.0)
    base.update(kw)
    return Arch(**base)


def test_widths_match_ofa():
    assert stage_widths(1.0) == (16, 16, 24, 40, 80, 112, 160, 960, 1280)
    assert stage_widths(1.2) == (24, 24, 32, 48, 96, 136, 192, 1152, 1536)
    assert make_divisible(16 * 1.2) == 24


def test_presets():
    nat = SearchSpace.preset("nat")
    assert nat.resolutions == tuple(range(192, 257, 4)) and nat.widths == (1.0, 1.2)
    assert SearchSpace.preset("ofa").resolutions == tuple(range(128, 225, 4))
    assert SearchSpace.preset("small").resolutions[0] == 32
    assert set(PRESETS) >= {"nat", "ofa", "small"}
    with pytest.raises(ValueError, match="unknown search-space preset 'foo'"):
        SearchSpace.preset("foo")


@pytest.mark.parametrize("preset", ["nat", "ofa", "small"])
def test_all_encodings_round_trip(preset):
    space = SearchSpace.preset(preset)
    rng = np.random.default_rng(7)
    for arch in space.sample(rng, 200) + [space.smallest(), space.largest()]:
        g = space.encode(arch)
        assert g.shape == (GENOME_LENGTH,)
        assert space.decode(g) == arch
        assert Arch.from_dict(arch.to_dict()) == arch
        assert Arch.from_dict(json.loads(arch.to_json())) == arch
        assert Arch.from_string(arch.to_string()) == arch
        assert Arch.parse(str(arch)) == arch and Arch.parse(arch.to_json()) == arch
        assert Arch.from_ofa_config(arch.to_ofa_config(10), resolution=arch.r) == arch
        for s in range(5):  # skipped genes sit at the end of each stage, never fewer than 2 kept
            genes = g[2 + 4 * s: 6 + 4 * s]
            kept = int((genes > 0).sum())
            assert kept == arch.d[s] and (genes[:kept] > 0).all() and (genes[kept:] == 0).all()


def test_genome_values_and_skip_pushed_to_end():
    space = SearchSpace.preset("nat")
    arch = _arch(ks=[7, 5] + [3] * 18, e=[6, 4] + [3] * 18, d=[2, 2, 2, 2, 2], r=196, w=1.2)
    g = space.encode(arch)
    assert g[0] == 1 and g[1] == 1
    assert list(g[2:6]) == [1 + 2 + 3 * 2, 1 + 1 + 3 * 1, 0, 0]
    shuffled = g.copy()
    shuffled[2:6] = [0, g[2], 0, g[3]]  # a skipped block in the middle is pushed to the end
    assert space.decode(shuffled) == arch


def test_canonical_pushes_skipped_blocks_back_in_a_stable_order():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 10, (3000, GENOME_LENGTH))
    g[:, 2:][rng.random((3000, 20)) < 0.4] = 0  # every one of the 16 patterns of kept slots occurs
    stages = g[:, 2:].reshape(-1, 5, 4)
    assert len(np.unique(stage_patterns(stages))) == 16
    assert np.array_equal(stage_patterns(stages), ((stages != 0) * [1, 2, 4, 8]).sum(axis=2))
    order = np.argsort(stages == 0, axis=2, kind="stable")  # the rule written out: kept slots first, in order
    expected = g.copy()
    expected[:, 2:] = np.take_along_axis(stages, order, axis=2).reshape(-1, 20)
    out = SearchSpace.canonical(g.astype(float))
    assert out.dtype == np.int64 and np.array_equal(out, expected)
    assert np.array_equal(SearchSpace.canonical(g[7]), expected[7:8])  # one genome
    assert SearchSpace.canonical(np.zeros((0, GENOME_LENGTH))).shape == (0, GENOME_LENGTH)
    with pytest.raises(ValueError, match="C-contiguous int64"):
        SearchSpace.order_stages(g.T.copy().T, stage_patterns(stages))  # a copy in Fortran order


def test_inactive_slots_are_canonical():
    a = _arch(ks=[3, 3, 7, 7] + [3] * 16, e=[3, 3, 6, 6] + [3] * 16)
    b = _arch()
    assert a == b and hash(a) == hash(b)


def test_sampling_uses_only_the_given_generator():
    space = SearchSpace.preset("ofa")
    assert space.sample(np.random.default_rng(3), 20) == space.sample(np.random.default_rng(3), 20)
    assert space.sample(np.random.default_rng(3), 20) != space.sample(np.random.default_rng(4), 20)
    with pytest.raises(TypeError, match="Generator"):
        space.sample(3)


def test_smallest_and_largest_bound_madds():
    space = SearchSpace.preset("nat")
    costs = [madds(a) for a in space.sample(np.random.default_rng(0), 100)]
    assert madds(space.smallest()) <= min(costs) and max(costs) <= madds(space.largest())
    assert params(space.smallest()) < params(space.largest())


@pytest.mark.parametrize("field, kw, allowed", [
    ("ks", dict(ks=[4] + [3] * 19), r"\[3, 5, 7\]"),
    ("e", dict(e=[3] * 19 + [5]), r"\[3, 4, 6\]"),
    ("d", dict(d=[1, 2, 2, 2, 2]), r"\[2, 3, 4\]"),
    ("r", dict(r=16), "32..512"),
    ("w", dict(w=0.75), r"\[1.0, 1.2\]"),
])
def test_invalid_values_name_field_value_and_allowed(field, kw, allowed):
    with pytest.raises(ValueError, match=allowed) as err:
        _arch(**kw)
    assert field in str(err.value)


def test_wrong_lengths_and_bad_genomes():
    with pytest.raises(ValueError, match="ks must have 20 entries, got 19"):
        _arch(ks=[3] * 19)
    with pytest.raises(ValueError, match="d must have 5 entries"):
        _arch(d=[2] * 4)
    space = SearchSpace.preset("nat")
    with pytest.raises(ValueError, match="genome must hold 22 integers"):
        space.decode([0] * 21)
    with pytest.raises(ValueError, match=r"genome\[2\]=10 is out of range 0..9"):
        space.decode([0, 0, 10] + [1] * 19)
    with pytest.raises(ValueError, match="stage 0 keeps 1 blocks"):
        space.decode([0, 0, 1, 0, 0, 0] + [1] * 16)
    with pytest.raises(ValueError, match="r=100 is not in search space 'nat'"):
        space.encode(_arch(r=100))
    with pytest.raises(ValueError, match="cannot parse Arch string"):
        Arch.from_string("w1.0-r224-33")
    with pytest.raises(ValueError, match="unknown keys"):
        Arch.from_dict({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224, "depth": 3})


def test_layer_plan_shapes():
    a = SearchSpace.preset("small").largest().replace(r=32)
    plan = layer_plan(a, n_classes=10)
    assert plan[0].kind == "stem" and plan[0].out_hw == 16
    assert plan[-1].kind == "classifier" and plan[-1].out_c == 10
    assert sum(layer.kind == "mbconv" for layer in plan) == sum(a.d)
    assert plan[-3].kind == "pool" and plan[-4].in_hw == 1  # 32 px -> 1x1 after total stride 32
