from pathlib import Path

import numpy as np
import pytest

from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search import (NATConfig, NATSearch, OFAAccuracyPredictor, SearchEngineError, load_callable,
                              search_front)
from natdeploy.search.problem import CostCache
from natdeploy.search.surrogates import Surrogate, make_surrogate
from natdeploy.space import Arch, SearchSpace, madds, params

SPACE = SearchSpace.preset("small", widths=[1.0])
TABLE = Path(__file__).resolve().parents[1] / "latency_tables" / "cpu.json"
W = np.random.default_rng(0).normal(size=22)
SMALL = dict(population=12, generations=6)


@pytest.fixture(scope="module")
def lat():
    return LatencyPredictor.load(TABLE)


def acc_genomes(genomes):
    """A smooth synthetic accuracy of genomes (bigger blocks, higher accuracy)."""
    g = np.asarray(genomes, dtype=float)
    return 0.5 + 0.02 * np.tanh(g @ W / 10) + 0.01 * (g[:, 2:] > 0).sum(1) / 20 + 0.005 * g[:, 0]


def acc_archs(archs):
    return acc_genomes(np.stack([SPACE.encode(a) for a in archs]))


acc_archs.takes = "archs"


def test_empty_initial_population_works(lat):
    for initial in (None, [], np.zeros((0, 22), dtype=int)):
        res = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 2.5}, initial=initial, seed=1, **SMALL)
        assert len(res) > 0


def test_nat_nsga_with_an_empty_archive(lat):
    from natdeploy.run_folder import SearchState

    cfg = NATConfig(population=8, generations=2)
    state = SearchState(config=cfg.to_record(), devices=["cpu"], budgets={"cpu": 3.0},
                        space={"name": "small", "resolutions": list(SPACE.resolutions), "widths": [1.0]},
                        data={}, n_classes=10)
    search = NATSearch(None, state, None, None, {"cpu": lat}, [])
    X = np.stack([SPACE.encode(a) for a in SPACE.sample(np.random.default_rng(0), 10)]).astype(float)
    out = search._nsga(make_surrogate("rbf", seed=0, n_members=5).fit(X, acc_genomes(X)), 1)
    assert out.ndim == 2 and out.shape[1] == 22 and len(out) > 0


def test_every_objective_value_agrees_with_the_predictors(lat):
    res = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 2.5}, objectives=("error", "latency", "madds"),
                       seed=2, **SMALL)
    assert set(res.values) == {"accuracy", "error", "latency:cpu", "madds", "params"}
    assert res.columns == ["error", "latency:cpu", "madds"]
    np.testing.assert_allclose(res.accuracy, acc_genomes(res.genomes))
    np.testing.assert_allclose(res.error, 1 - res.accuracy)
    np.testing.assert_allclose(res.latency("cpu"), lat.predict(res.archs, 10))
    assert res.madds.tolist() == [madds(a, 10) for a in res.archs]
    assert res.params.tolist() == [params(a, 10) for a in res.archs]
    assert [SPACE.decode(g) for g in res.genomes] == res.archs
    rows = res.rows()
    assert rows[0]["arch"] == str(res.archs[0]) and rows[0]["latency:cpu"] == pytest.approx(res.latency("cpu")[0])
    # a front: no row dominates another in the searched columns
    F = np.column_stack([res.values[c] for c in ["error", "latency:cpu", "madds"]])
    dominated = ((F[:, None] <= F[None]).all(2) & (F[:, None] < F[None]).any(2))
    assert not dominated.any()
    assert res.timings["engine_s"] >= 0 and res.n_evaluations <= 12 * 6
    with pytest.raises(SearchEngineError, match="no latency for device 'gpu'"):
        res.latency("gpu")


def test_callable_on_archs_and_on_genomes_find_the_same_front(lat):
    a = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 2.0}, seed=3, **SMALL)
    b = search_front(SPACE, acc_archs, {"cpu": lat}, {"cpu": 2.0}, seed=3, **SMALL)
    c = search_front(SPACE, lambda archs: acc_archs(archs), {"cpu": lat}, {"cpu": 2.0}, seed=3, takes="archs",
                     **SMALL)
    assert (a.genomes == b.genomes).all() and (a.genomes == c.genomes).all()
    np.testing.assert_array_equal(a.accuracy, b.accuracy)


def test_fitted_surrogate_predicting_error(lat):
    X = np.stack([SPACE.encode(a) for a in SPACE.sample(np.random.default_rng(0), 40)]).astype(float)
    surrogate = make_surrogate("rbf", seed=0, n_members=5).fit(X, 1 - acc_genomes(X))
    res = search_front(SPACE, surrogate, {"cpu": lat}, {"cpu": 2.5}, predicts="error", seed=0, **SMALL)
    np.testing.assert_allclose(res.error, surrogate.predict(res.genomes.astype(float)))


def test_budgets_are_kept(lat):
    for budget in (1.4, 2.0, 3.5):
        res = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": budget}, seed=4, **SMALL)
        assert len(res) and (res.latency("cpu") <= budget).all()
        assert res.best() is not None and res.best({"cpu": 0.0}) is None
    with pytest.raises(SearchEngineError, match="no latency predictor"):
        search_front(SPACE, acc_genomes, {"cpu": lat}, {"gpu": 2.0}, **SMALL)


def test_deterministic_for_a_seed(lat):
    for algorithm in ("fast", "pymoo"):
        runs = [search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 2.5}, seed=s, algorithm=algorithm, **SMALL)
                for s in (5, 5, 6)]
        assert (runs[0].genomes == runs[1].genomes).all()
        np.testing.assert_array_equal(runs[0].latency("cpu"), runs[1].latency("cpu"))
        assert runs[0].genomes.shape != runs[2].genomes.shape or (runs[0].genomes != runs[2].genomes).any()


def test_bad_accuracy_predictors_are_clear_errors(lat):
    with pytest.raises(SearchEngineError, match="must be callable"):
        search_front(SPACE, 3.0, {"cpu": lat}, **SMALL)
    with pytest.raises(SearchEngineError, match="returned 1 values for"):
        search_front(SPACE, lambda g: [0.5], {"cpu": lat}, **SMALL)
    with pytest.raises(SearchEngineError, match="NaN"):
        search_front(SPACE, lambda g: np.full(len(g), np.nan), {"cpu": lat}, **SMALL)
    with pytest.raises(SearchEngineError, match="unknown objective"):
        search_front(SPACE, acc_genomes, {"cpu": lat}, objectives=("error", "energy"), **SMALL)


def test_load_callable():
    assert load_callable("numpy:mean") is np.mean
    assert load_callable("natdeploy.space:SearchSpace.preset") == SearchSpace.preset
    with pytest.raises(SearchEngineError, match="module:function"):
        load_callable("numpy.mean")
    with pytest.raises(SearchEngineError, match="cannot import module 'no_such_module_xyz'"):
        load_callable("no_such_module_xyz:f")
    with pytest.raises(SearchEngineError, match="has no attribute 'nope'"):
        load_callable("numpy:nope")
    with pytest.raises(SearchEngineError, match="not a callable"):
        load_callable("numpy:pi")


def test_make_surrogate_accepts_a_trained_object():
    class Trained:
        def predict(self, X):
            return np.zeros(len(X))

    model = Trained()
    assert isinstance(model, Surrogate)  # predict alone is enough
    assert make_surrogate(model) is model
    with pytest.raises(ValueError, match="options"):
        make_surrogate(model, n_members=3)
    with pytest.raises(ValueError, match="object with predict"):
        make_surrogate(object())


def test_cost_cache_equals_the_per_arch_count():
    space = SearchSpace.preset("ofa")
    archs = space.sample(np.random.default_rng(0), 30) + [space.smallest(), space.largest(1.2)]
    m, p = CostCache(space, 1000)(np.stack([space.encode(a) for a in archs]))
    assert m.tolist() == [madds(a) for a in archs] and p.tolist() == [params(a) for a in archs]


def _ofa_reference_features(arch: Arch, layout: str, sizes=None) -> np.ndarray:
    """OFA's encodings written out per Arch: one-hot kernel and expand per existing block, and the resolution."""
    ks = np.zeros(60)
    ex = np.zeros(60)
    for s in range(5):
        for j in range(arch.d[s]):
            i = 4 * s + j
            ks[3 * i + [3, 5, 7].index(arch.ks[i])] = 1
            ex[3 * i + [3, 4, 6].index(arch.e[i])] = 1
    if layout == "tutorial":
        r = np.zeros(8)
        r[(arch.r - 112) // 16] = 1
        return np.concatenate([ks, ex, r])
    r = np.zeros(len(sizes))
    r[list(sizes).index(arch.r)] = 1
    return np.concatenate([r, ks, ex])


def test_ofa_predictor_adapter_with_an_mlp_of_the_same_shape(lat):
    import torch

    torch.manual_seed(0)
    layers = []
    for i in range(3):
        layers += [torch.nn.Linear(128 if i == 0 else 400, 400), torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers, torch.nn.Linear(400, 1))  # OFA's tutorial predictor's shape, untrained
    space = SearchSpace.preset("ofa", widths=[1.0])
    adapter = OFAAccuracyPredictor(mlp, space)
    archs = space.sample(np.random.default_rng(1), 20)
    genomes = np.stack([space.encode(a) for a in archs])
    feats = adapter.features(genomes)
    assert feats.shape == (20, 128)
    np.testing.assert_array_equal(feats, np.stack([_ofa_reference_features(a, "tutorial") for a in archs]))
    with torch.no_grad():
        expected = mlp(torch.from_numpy(feats)).squeeze(1).numpy()
    np.testing.assert_allclose(adapter(genomes), expected, rtol=1e-6)

    res = search_front(space, adapter, {"cpu": lat}, {"cpu": 12.0}, seed=0, population=10, generations=3)
    with torch.no_grad():
        direct = mlp(torch.from_numpy(adapter.features(res.genomes))).squeeze(1).numpy()
    # float32 sums depend on the batch size: near-zero outputs need an absolute tolerance
    np.testing.assert_allclose(res.accuracy, direct, rtol=1e-6, atol=1e-7)
    assert (res.latency("cpu") <= 12.0).all()

    sizes = (32, 40, 48, 56, 64, 72)
    nas = OFAAccuracyPredictor(mlp, SPACE, layout="nas", image_sizes=sizes)
    small = SPACE.sample(np.random.default_rng(2), 10)
    np.testing.assert_array_equal(nas.features(np.stack([SPACE.encode(a) for a in small])),
                                  np.stack([_ofa_reference_features(a, "nas", sizes) for a in small]))
    with pytest.raises(SearchEngineError, match="112..239"):
        OFAAccuracyPredictor(mlp, SPACE)


def test_batch_repair_keeps_the_genome_rules():
    from natdeploy.search.nsga import _repair

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 10, size=(300, 22)).astype(float) + rng.normal(0, 0.4, (300, 22))
    raw[:, 0] = rng.uniform(-1, 6, 300)
    raw[:, 1] = 0
    raw[::3, 2:] = 0  # whole genomes of skipped blocks
    fixed = _repair(SPACE, raw, rng)
    SPACE.check_genomes(fixed)  # in bounds, two blocks or more per stage
    assert (SPACE.canonical(fixed) == fixed).all()
    valid = SPACE.repair(raw[1::3], np.random.default_rng(1))  # already valid rows come back as they were
    assert (_repair(SPACE, valid.astype(float), rng) == valid).all()


def test_fronts_by_sweep_equal_the_domination_matrix():
    from natdeploy.search.nsga import _matrix_fronts, _sweep_fronts, rank_and_crowding

    rng = np.random.default_rng(0)
    for trial in range(400):
        n, m = int(rng.integers(1, 120)), 1 + trial % 2
        F = rng.random((n, m)) if trial % 3 == 0 else rng.integers(0, 4, (n, m)).astype(float)  # ties, duplicates
        if trial % 5 == 0:
            F[::4] = -0.0
        needed = int(rng.integers(0, n + 1))
        expected = _matrix_fronts(F, needed)
        assert np.array_equal(_sweep_fronts(F, needed), expected), (trial, n, m, needed)
        assert (expected >= 0).sum() >= needed
    F = np.array([[0.1, 1.0], [np.nan, 0.5], [0.2, 2.0]])  # a NaN objective takes the matrix path, and ends
    rank, _ = rank_and_crowding(F, np.zeros(3), 3, rng)
    assert list(rank) == [0, 0, 1]


def test_first_occurrences_of_keys():
    from natdeploy.search.nsga import _first_occurrences

    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(1, 300))
        re = rng.integers(0, int(rng.integers(1, 40)), n).astype(float)  # many shared parts and duplicates
        im = rng.integers(0, int(rng.integers(1, 6)), n).astype(float)
        keys = re + 1j * im
        if trial % 7 == 0:  # keys whose mixes clash: (0.618..., 0) against (0, 1)
            keys[:2] = [0.6180339887498949, 1j]
        assert np.array_equal(_first_occurrences(keys), np.sort(np.unique(keys, return_index=True)[1])), trial


def test_each_offspring_latency_is_predicted_once(lat, monkeypatch):
    """The feasibility check's latencies are the ones evaluated: offspring never go to the predictor twice."""
    import natdeploy.search.engine as engine

    rows = {"predicted": 0}
    original = lat.predict_genomes

    def counting(space, genomes, n_classes=None):
        rows["predicted"] += len(genomes)
        return original(space, genomes, n_classes)

    monkeypatch.setattr(lat, "predict_genomes", counting)
    seen = {}
    nsga2 = engine.nsga2

    def watched(evaluate, space, start, *args):
        seen["before"], seen["start"] = rows["predicted"], len(start)
        *head, feasible = args

        def check(genomes):
            seen["checked"] = seen.get("checked", 0) + len(genomes)
            return feasible(genomes)

        return nsga2(evaluate, space, start, *head, check)

    monkeypatch.setattr(engine, "nsga2", watched)
    res = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 2.5}, seed=0, population=20, generations=8)
    assert res.n_evaluations > seen["start"] and seen["checked"] >= res.n_evaluations - seen["start"]
    # the start population is evaluated once; each offspring only by the feasibility check
    assert rows["predicted"] == seen["before"] + seen["start"] + seen["checked"]


def test_polynomial_mutation_option(lat):
    res = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 2.5}, seed=1, mutation=None, **SMALL)
    assert len(res) and (res.latency("cpu") <= 2.5).all()


def test_initial_population_of_archs_or_genomes(lat):
    archs = SPACE.sample(np.random.default_rng(3), 5)
    a = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 3.0}, initial=archs, seed=0, **SMALL)
    b = search_front(SPACE, acc_genomes, {"cpu": lat}, {"cpu": 3.0}, initial=np.stack([SPACE.encode(x) for x in archs]),
                     seed=0, **SMALL)
    assert (a.genomes == b.genomes).all()
    with pytest.raises(SearchEngineError, match="initial population: genome\\[0\\]=9 is out of range"):
        search_front(SPACE, acc_genomes, {"cpu": lat}, initial=np.full((1, 22), 9), **SMALL)


def test_cli_searches_with_a_plugged_in_accuracy_predictor(tmp_path, monkeypatch, capsys):
    import json

    from natdeploy.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["search", "--device", "cpu", "--max-latency", "2ms", "--resolutions", "32", "--population", "10",
               "--generations", "5", "--accuracy-predictor", "plugged_accuracy:accuracy", "--name", "p"])
    assert rc == 0
    record = json.loads((tmp_path / "runs" / "p" / "front.json").read_text())
    assert record["front"] and record["best"]["latency:cpu"] <= 2.0
    assert "best within budget" in capsys.readouterr().out


def test_cli_refuses_nat_flags_with_a_plugged_in_predictor(tmp_path, monkeypatch, capsys):
    from natdeploy.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rc = main(["search", "--device", "cpu", "--max-latency", "2ms", "--data", "data", "--accuracy-predictor",
               "plugged_accuracy:accuracy"])
    assert rc != 0 and "--data apply to NAT's own search" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written


class _CountLatency:
    """A toy latency: 1 ms per block, 0.25 ms per resolution step."""

    def predict_genomes(self, space, genomes, n_classes=None):
        g = np.asarray(genomes)
        return (g[:, 2:] > 0).sum(1) + 0.25 * g[:, 0]


def test_default_search_finds_the_known_optimum_within_the_budget():
    # accuracy grows by 0.05 a block and 0.01 a resolution step; within 14.6 ms the best is 14 blocks at step 2
    # (14.5 ms, 0.72), ahead of 13 blocks at step 4 (14.0 ms, 0.69)
    seen = []

    def acc(genomes):
        seen.append(np.array(genomes))
        return (genomes[:, 2:] > 0).sum(1) / 20 + 0.01 * genomes[:, 0]

    res = search_front(SPACE, acc, {"toy": _CountLatency()}, {"toy": 14.6}, seed=0, n_classes=10, population=16,
                       generations=15)
    best = res.best()
    assert best is not None and res.accuracy[best] == pytest.approx(0.72) and res.latency("toy")[best] == 14.5
    # offspring are drawn within the budget before the accuracy predictor is asked about them
    assert (_CountLatency().predict_genomes(SPACE, np.concatenate(seen)) <= 14.6).all()
    assert res.n_evaluations == len(np.concatenate(seen)) <= 16 * 15
    with pytest.raises(SearchEngineError, match="budget_share"):
        search_front(SPACE, acc, {"toy": _CountLatency()}, {"toy": 14.6}, n_classes=10, budget_share=1.0, **SMALL)
