import json
import time
from dataclasses import replace

import numpy as np
import pytest

from natdeploy.cli import main, parse_latency_ms
from natdeploy.devices import load_device
from natdeploy.errors import ConfigError, NatDeployError
from natdeploy.latency import LatencyPredictor, LatencyTable, Measurement, OpSig, TableError, arch_ops, space_ops
from natdeploy.latency.backends import ANCHOR_SESSIONS, get_backend
from natdeploy.latency.measure import time_interleaved
from natdeploy.latency.ofa_import import import_ofa_tables
from natdeploy.latency.ops import CLASSIFIER_LADDER, profile_ops
from natdeploy.latency.predictor import calibrate_speed_elasticity, op_features
from natdeploy.latency.profiler import profile_device
from natdeploy.space import Arch, SearchSpace

SMALL = SearchSpace.preset("small")


def fast(name: str):
    return load_device(name).with_overrides(warmup=1, runs=3, e2e_warmup=1, e2e_runs=3, rounds=1, min_span_s=0,
                                            e2e_repeats=1)


def test_op_keys_render_like_ofa_and_parse_back():
    arch = SearchSpace.preset("ofa", widths=[1.2]).largest().replace(r=160)
    ops = arch_ops(arch)
    assert ops[0].key == "Conv-input:160x160x3-output:80x80x24"
    assert ops[1].key == "expanded_conv-input:80x80x24-output:80x80x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0"
    assert ops[2].key == "expanded_conv-input:80x80x24-output:40x40x32-expand:144-kernel:7-stride:2-idskip:0-se:0-hs:0"
    assert [o.kind for o in ops[-4:]] == ["Conv_1", "AvgPool2D", "Conv_2", "Logits"]
    assert ops[-1].key == "Logits-input:1x1x1536-output:1000"
    for op in space_ops(SMALL, n_classes=10):
        assert OpSig.from_key(op.key) == op
    with pytest.raises(ValueError, match="unrecognised op key"):
        OpSig.from_key("Conv-input:1x1")


def test_space_ops_are_unique_and_cover_every_arch():
    keys = {op.key for op in space_ops(SMALL, 10)}
    for arch in SMALL.sample(np.random.default_rng(0), 30):
        assert {op.key for op in arch_ops(arch, 10)} <= keys


def test_ofa_tables_import_exact_at_imported_resolutions(shared_data, tmp_path):
    table = import_ofa_tables(shared_data / "ofa_note10_lut", "note10")
    assert table.provenance["resolutions"] == [160, 176, 192, 208, 224] and table.n_classes == 1000
    predictor = LatencyPredictor.fit(table)
    space = SearchSpace.preset("ofa", widths=[1.2])
    for arch in space.sample(np.random.default_rng(1), 20):
        arch = arch.replace(r=int(np.random.default_rng(arch.d[0]).choice([160, 176, 192, 208, 224])))
        expected = sum(table.op_at(op.key, arch.r).mean_ms for op in arch_ops(arch))  # its own resolution's value
        part = predictor.predict_parts([arch])[0]
        assert part.n_missing == 0 and part.latency_ms == pytest.approx(expected, rel=1e-12)
        # In between imported resolutions, XGBoost fills the gaps and the prediction lies between the neighbours.
        lo, mid, hi = predictor.predict([arch.replace(r=192), arch.replace(r=200), arch.replace(r=208)])
        assert lo < mid < hi
    predictor.save(tmp_path / "n.xgb.json")
    table.save(tmp_path / "n.json")
    again = LatencyPredictor.load(tmp_path / "n.json", tmp_path / "n.xgb.json")
    arch = space.sample(np.random.default_rng(3)).replace(r=184)
    assert again.predict(arch)[0] == pytest.approx(predictor.predict(arch)[0], rel=1e-6)


def test_table_round_trip_and_corrupt_files(tmp_path):
    t = LatencyTable(device="x", provenance={"threads": 1})
    op = space_ops(SMALL, 10)[0]
    t.add_op(op, Measurement(1.0, 1.1, 0.1, 30, 10))
    path = t.save(tmp_path / "x.json")
    assert LatencyTable.load(path).ops == t.ops
    path.write_text(path.read_text()[:40])
    with pytest.raises(TableError, match="x.json is corrupt"):
        LatencyTable.load(path)
    path.write_text(json.dumps({"format": "natdeploy.latency_table", "version": 1, "device": "x",
                                "ops": {"bogus-key": {}}}))
    with pytest.raises(TableError, match="corrupt"):
        LatencyTable.load(path)
    with pytest.raises(TableError, match="natdeploy profile --device nothere"):
        LatencyTable.load(tmp_path / "nothere.json")
    (tmp_path / "bad.xgb.json").write_text("{")
    t.save(tmp_path / "bad.json")
    with pytest.raises(TableError, match="bad.xgb.json are corrupt"):
        LatencyPredictor.load(tmp_path / "bad.json")


def test_profile_onnxruntime_resumes_and_refuses_mixing(tmp_path):
    spec = fast("cpu")
    out = tmp_path / "cpu.json"
    calls = {"n": 0}
    backend = get_backend(spec)
    real = backend.measure_op

    def interrupted(op, seed=0):  # Ctrl-C after 20 measurements
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(op, seed)

    backend.measure_op = interrupted
    with pytest.raises(KeyboardInterrupt):
        profile_device(spec, SMALL, resolutions=[32], e2e_samples=6, n_classes=10, out=out, quiet=True,
                       backend=backend)
    saved = LatencyTable.load(out)
    assert len(saved.ops) == 19  # the first call measured the reference op; every finished op was kept
    assert saved.provenance["first_date"] == saved.provenance["date"]
    began = "2026-01-02T03:04:05+00:00"  # as a table from before first_date was recorded: its date is its start
    saved.provenance["date"] = began
    del saved.provenance["first_date"]
    saved.save(out)
    res = profile_device(spec, SMALL, resolutions=[32], e2e_samples=6, n_classes=10, out=out, quiet=True)
    # the space's ops, and the classifier at the ladder's other class counts
    n_ops = len(profile_ops(SMALL, 10, [32]))
    assert res.n_ops == n_ops and res.n_ops_measured_now == n_ops - 19 and res.n_e2e == 6
    table = LatencyTable.load(out)
    assert {k for k in table.ops if k.startswith("Logits")} == {
        f"Logits-input:1x1x1280-output:{n}" for n in CLASSIFIER_LADDER}
    prov = table.provenance
    assert prov["runtime"] == "onnxruntime" and prov["threads"] == 1 and prov["host"] and prov["date"]
    assert prov["first_date"] == began != prov["date"]  # a resume keeps when the table began, dates its own run
    assert all(m.count == 3 and m.median_ms > 0 for m in table.ops.values())
    predictor = LatencyPredictor.load(out)
    assert predictor.residual is not None
    archs = SearchSpace(resolutions=(32, 40)).sample(np.random.default_rng(0), 5)
    assert (predictor.predict(archs) > 0).all()
    # a task of a ladder's class count predicts its classifier from the measurement, not the regressor
    at_32 = SearchSpace(resolutions=(32,)).sample(np.random.default_rng(1), 3)
    assert all(p.n_missing == 0 for p in predictor.predict_parts(at_32, 1000))
    with pytest.raises(TableError, match="threads: table has 1, now 2"):
        profile_device(spec.with_overrides(threads=2), SMALL, resolutions=[32], e2e_samples=6, n_classes=10,
                       out=out, quiet=True)


def test_time_interleaved_runs_round_robin_over_the_span():
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    t0 = time.perf_counter()
    ms = time_interleaved(fns, warmup=2, runs=7, rounds=3, min_span_s=0.3)
    elapsed = time.perf_counter() - t0
    assert "".join(calls) == "aabb" + "aaabbb" + "aabb" + "aabb"  # warm-up, then rounds of 3, 2 and 2 runs
    assert [m.count for m in ms] == [7, 7] and all(m.warmup == 2 for m in ms)
    assert elapsed >= 0.3 * 2 / 3  # slept until the last round's start; sleep never returns early
    assert time_interleaved(fns, warmup=0, runs=2, rounds=5)[0].count == 2  # more rounds than runs: one per run
    with pytest.raises(ValueError, match="rounds >= 1"):
        time_interleaved(fns, warmup=0, runs=3, rounds=0)


class _SimulatedMachine:
    """A clock for natdeploy.latency.measure whose CPU speed changes while items run: work of ``cost`` takes
    ``cost * slowdown(now)``. It stands in for the shared VM, whose speed changes within seconds."""

    def __init__(self, slowdown):
        self.now, self.slowdown, self.calls = 0.0, slowdown, []

    def perf_counter(self):
        return self.now

    def sleep(self, s):
        self.now += s

    def work(self, name, cost):
        def run():
            self.calls.append(name)
            self.now += cost * self.slowdown(self.now)
        return run


def test_anchor_ratio_cancels_speed_changes_within_a_batch(monkeypatch):
    import natdeploy.latency.measure as measure

    # the machine runs 3x slower for 0.05 s out of every 0.1 s, and 1.5x slower during the second half of the batch
    machine = _SimulatedMachine(lambda t: (3.0 if (t % 0.1) < 0.05 else 1.0) * (1.5 if t > 1.0 else 1.0))
    monkeypatch.setattr(measure, "time", machine)
    fns = [machine.work("a", 0.002), machine.work("b", 0.004), machine.work("c", 0.001)]
    ms = time_interleaved(fns, warmup=1, runs=20, rounds=10, min_span_s=2.0, anchor=machine.work("A", 0.002),
                          anchor_every_s=0.0)
    # anchor first in every round and after every item (anchor_every_s=0); each visit runs as often as an item
    assert machine.calls[:4] == ["a", "b", "c", "A"]  # warm-up
    assert "".join(machine.calls[4:4 + 14]) == "AA" + "aa" + "AA" + "bb" + "AA" + "cc" + "AA"
    assert [m.anchor_ratio for m in ms] == pytest.approx([1.0, 2.0, 0.5], rel=0.02)
    assert all(m.anchor_ms and m.count == 20 for m in ms)
    assert time_interleaved(fns, warmup=0, runs=2, rounds=1)[0].anchor_ratio is None  # no anchor, no ratio


def test_anchor_sessions_take_turns_and_ratios_are_to_their_average(monkeypatch):
    import natdeploy.latency.measure as measure

    machine = _SimulatedMachine(lambda t: 2.0 if t > 0.5 else 1.0)
    monkeypatch.setattr(measure, "time", machine)
    # two sessions of one anchor model, one 20% slower than the other (fresh sessions differ like that)
    sessions = [machine.work("A", 0.002), machine.work("B", 0.0024)]
    ms = time_interleaved([machine.work("a", 0.0044)], warmup=1, runs=10, rounds=5, min_span_s=1.0,
                          anchor=sessions, anchor_every_s=0.0)
    assert machine.calls[:3] == ["a", "A", "B"]  # every session is warmed up
    assert "".join(machine.calls[3:3 + 12]) == "AA" + "aa" + "BB" + "BB" + "aa" + "AA"  # visit by visit, in turn
    assert ms[0].anchor_ratio == pytest.approx(2.0, rel=1e-6)  # 4.4 ms over the sessions' mean of 2.2 ms


def test_profile_with_interleaved_batches(tmp_path):
    spec = fast("cpu").with_overrides(rounds=3, runs=6, e2e_runs=6, anchor=True)
    backend = get_backend(spec)
    assert backend.interleaves and backend.op_batch_size > 1
    archs = SMALL.sample(np.random.default_rng(3), 3)
    ms = backend.measure_archs(archs, 10)
    assert len(ms) == 3 and all(m.count == 6 and m.p10_ms > 0 for m in ms)
    assert len({m.anchor_ms for m in ms}) == 1 and ms[0].anchor_ms > 0  # one anchor per batch
    res = profile_device(spec, SMALL, resolutions=[32], e2e_samples=5, n_classes=10, out=tmp_path / "t.json",
                         quiet=True)
    table = LatencyTable.load(res.table_path)
    assert len(table.ops) == len(profile_ops(SMALL, 10, [32])) and len(table.e2e) == 5
    assert all(m.count == 6 and m.anchor_ms > 0 for m in table.ops.values()) and table.provenance["rounds"] == 3
    assert LatencyTable.load(res.table_path).speed.nominal_anchor_ms == pytest.approx(table.speed.nominal_anchor_ms)
    assert len(table.reference_anchor) == len(table.reference) >= 2  # drift is judged relative to the anchor
    with pytest.raises(ConfigError, match="rounds must be a positive integer"):
        spec.with_overrides(rounds=0)


def test_anchor_normalisation_cancels_machine_speed_between_batches():
    def m(p10, anchor):
        return Measurement(median_ms=p10, mean_ms=p10, std_ms=0.0, count=5, warmup=1, p10_ms=p10, min_ms=p10,
                           anchor_ms=anchor)

    ops = space_ops(SMALL, 10, [32])[:3]
    table = LatencyTable(device="cpu", n_classes=10)
    table.add_op(ops[0], m(1.0, 2.0))  # measured at nominal speed
    table.add_op(ops[1], m(1.5, 3.0))  # the same op in a batch where the machine ran 1.5x slower
    table.add_op(ops[2], m(0.8, 2.0))
    speed = table.speed
    assert speed.nominal_anchor_ms == 2.0
    assert speed.normalise(table.ops[ops[0].key]) == pytest.approx(1.0)
    assert speed.normalise(table.ops[ops[1].key]) == pytest.approx(1.0)
    assert speed.normalise(m(0.5, 1.0)) == pytest.approx(1.0)  # an outside measurement, at twice the speed
    assert speed.normalise(m(0.7, None)) == pytest.approx(0.7)  # no anchor: as measured
    # with the per-round ratio to the anchor, the value is that ratio at the table's nominal anchor latency
    timed = Measurement(median_ms=9.0, mean_ms=9.0, std_ms=0.0, count=5, warmup=1, p10_ms=9.0, min_ms=9.0,
                        anchor_ms=4.0, anchor_ratio=0.25)
    assert speed.normalise(timed) == pytest.approx(0.5)
    assert Measurement.from_dict(timed.to_dict()) == timed
    assert LatencyTable(device="cpu").speed.nominal_anchor_ms is None


@pytest.mark.parametrize("device", ["cpu-litert", "cpu-torch"])
def test_other_cpu_backends_measure_ops_and_subnets(device):
    backend = get_backend(fast(device))
    ops = space_ops(SMALL, 10, [32])
    for op in (ops[0], ops[len(ops) // 2], ops[-1]):
        m = backend.measure_op(op)
        assert m.median_ms > 0 and m.count == 3
    assert backend.measure_arch(SMALL.smallest(), 10).median_ms > 0
    assert backend.describe()["runtime"] == device.split("-")[1]
    batched = get_backend(fast(device).with_overrides(rounds=3, anchor=True)).measure_archs(SMALL.sample(
        np.random.default_rng(1), 2), 10)
    assert [m.count for m in batched] == [3, 3] and all(m.anchor_ms > 0 for m in batched)


def test_cuda_device_skips_cleanly_without_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        backend = get_backend(load_device("cuda"))
        assert backend.measure_arch(SMALL.smallest(), 10).median_ms > 0
    else:
        with pytest.raises(Exception, match="needs a CUDA GPU"):
            get_backend(load_device("cuda"))


def test_device_specs_and_errors(tmp_path):
    for name in ("cpu", "cpu-litert", "cpu-torch", "cuda", "pixel4", "pixel4-gpu"):
        assert load_device(name).name == name
    assert load_device("pixel4").cpu_mask == "70"
    with pytest.raises(ConfigError, match="unknown device 'phone'; known devices: cpu, cpu-litert"):
        load_device("phone")
    bad = tmp_path / "bad.yaml"
    bad.write_text("transport: local\nruntime: tensorrt\ndescription: x\n")
    with pytest.raises(ConfigError, match="runtime='tensorrt' is not allowed"):
        load_device(str(bad))
    assert load_device("cpu").speed_elasticity == "auto" and load_device("cpu-litert").speed_elasticity == 0
    bad.write_text("transport: local\nruntime: onnxruntime\ndescription: x\nspeed_elasticity: steep\n")
    with pytest.raises(ConfigError, match="speed_elasticity must be 'auto' or a number"):
        load_device(str(bad))


def test_cpu_mask_pins_local_backends_and_bad_masks_are_refused():
    import os

    before = os.sched_getaffinity(0)
    cpu = min(before)
    try:
        get_backend(load_device("cpu").with_overrides(cpu_mask=format(1 << cpu, "x")))
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        os.sched_setaffinity(0, before)
    with pytest.raises(ConfigError, match="cpu_mask must be a non-zero hex mask"):
        load_device("cpu").with_overrides(cpu_mask="cpu0")
    with pytest.raises(ConfigError, match="cpu_mask must be a quoted hex string"):
        load_device("cpu").with_overrides(cpu_mask=0x70)
    absent = max(before) + 1
    with pytest.raises(NatDeployError, match=f"names CPUs \\[{absent}\\], but this process may run only on"):
        get_backend(load_device("cpu").with_overrides(cpu_mask=format(1 << absent, "x")))
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize("text, ms", [("30ms", 30), ("0.03s", 30), ("30000us", 30), ("30", 30), ("2.5", 2.5)])
def test_latency_units(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


def test_latency_units_bad():
    with pytest.raises(ConfigError, match="cannot read latency"):
        parse_latency_ms("30 minutes")


def test_cli_errors_without_traceback(capsys):
    assert main(["profile", "--device", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown device 'nope'") and "Traceback" not in err
    assert main(["arch", "w1.0-r32-3333-3333-3333-3333-3333", "--space", "small", "--n-classes", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["genome"][:2] == [0, 0] and out["madds"] > 0


def _fast_spec_file(tmp_path):
    spec = tmp_path / "fastcpu.yaml"
    spec.write_text("description: test cpu\ntransport: local\nruntime: onnxruntime\nthreads: 1\nwarmup: 1\nruns: 3\n"
                    "e2e_warmup: 1\ne2e_runs: 3\nspace: small\nresolutions: [32]\n")
    return spec


def test_profile_killed_with_sigkill_resumes_without_loss(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    spec, out = _fast_spec_file(tmp_path), tmp_path / "t.json"
    cmd = [sys.executable, "-m", "natdeploy.cli", "profile", "--device", str(spec), "--out", str(out),
           "--n-classes", "10", "--e2e-samples", "5", "--quiet"]
    env = {**os.environ, "NATDEPLOY_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if out.exists() and len(json.loads(out.read_text())["ops"]) >= 15:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    before = LatencyTable.load(out)  # the file is whole: every write was atomic
    assert 15 <= len(before.ops) < len(space_ops(SMALL, 10, [32]))
    res = profile_device(load_device(str(spec)), SMALL, n_classes=10, e2e_samples=5, out=out, quiet=True)
    after = LatencyTable.load(out)
    assert res.n_ops_measured_now == res.n_ops - len(before.ops)
    assert all(after.ops[k] == m for k, m in before.ops.items())  # nothing re-measured, nothing lost


def test_failed_measurement_is_retried_then_reported_never_stored(tmp_path):
    from natdeploy.latency.backends import BackendError

    spec = load_device(str(_fast_spec_file(tmp_path)))
    backend = get_backend(spec)
    failures = {"n": 0}
    real = backend.measure_op
    bad_key = space_ops(SMALL, 10, [32])[3].key

    def flaky(op, seed=0):
        if op.key == bad_key:
            failures["n"] += 1
            raise BackendError("session did not build")
        return real(op, seed)

    backend.measure_op = flaky
    out = tmp_path / "t.json"
    with pytest.raises(BackendError, match=f"measuring {bad_key} failed 3 times"):
        profile_device(spec, SMALL, n_classes=10, e2e_samples=0, out=out, quiet=True, backend=backend)
    assert failures["n"] == 3
    table = LatencyTable.load(out)
    assert bad_key not in table.ops and len(table.ops) == 3


@pytest.mark.parametrize("smooth", [True, False])
def test_numpy_tree_walk_matches_xgboost(smooth):
    from natdeploy.latency.predictor import _fit, _TreeArrays

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    x[:, 2] = rng.integers(0, 5, 300)  # integer-valued features split at midpoints, like depth or resolution
    y = np.sin(x[:, 0]) + 0.3 * x[:, 2] - x[:, 1] * x[:, 3]
    booster = _fit(x, y, seed=0, smooth=smooth)
    test = rng.normal(size=(500, 6)).astype(np.float32)
    test[:, 2] = rng.integers(-1, 6, 500)
    np.testing.assert_allclose(_TreeArrays(booster).predict(test), booster.inplace_predict(test), atol=1e-5)


def _synthetic_table(n_e2e: int, factor: float) -> LatencyTable:
    """A table of made-up but consistent values: each op's latency grows with its MAdds; whole subnets take
    ``factor`` times their ops' sum, plus a per-resolution overhead."""
    from natdeploy.space import madds

    table = LatencyTable(device="synthetic", n_classes=10, provenance={"threads": 1})
    space = SearchSpace(resolutions=(32, 40), widths=(1.0,))
    for op in space_ops(space, 10):
        ms = 0.01 + 1e-7 * sum(op_features(op)[:3])
        table.add_op(op, Measurement(ms, ms, 0.0, 10, 1, p10_ms=ms, min_ms=ms))
    for arch in space.sample(np.random.default_rng(0), n_e2e):
        ms = factor * sum(table.ops[op.key].p10_ms for op in arch_ops(arch, 10)) + 1e-9 * madds(arch, 10) + 0.001 * arch.r
        table.add_e2e(arch, Measurement(ms, ms, 0.0, 10, 1, p10_ms=ms, min_ms=ms))
    return table


def _table_at_varying_speed(elasticity: float, spread: float) -> LatencyTable:
    """The synthetic table timed beside an anchor of 2 ms: ops at that speed, whole subnets in batches where the
    machine ran at speeds spread over +-``spread`` (log), with ratios distorted as ``elasticity`` says."""
    base = _synthetic_table(80, 1.2)
    table = LatencyTable(device="synthetic", n_classes=10, provenance={"threads": 1})
    for key, m in base.ops.items():
        table.ops[key] = replace(m, anchor_ms=2.0, anchor_ratio=m.p10_ms / 2.0)
    rng = np.random.default_rng(3)
    for k, (arch, m) in enumerate(base.e2e.items()):
        s = spread * (2 * (k % 8) / 7 - 1)  # batches of 8 at one speed each
        ratio = np.exp(np.log(m.p10_ms / 2.0) * (1 + elasticity * s) + rng.normal(0, 0.005))
        table.e2e[arch] = replace(m, p10_ms=2.0 * np.exp(s) * ratio, anchor_ms=2.0 * np.exp(s),
                                  anchor_ratio=float(ratio))
    return table


def test_speed_elasticity_is_calibrated_from_the_tables_own_measurements(tmp_path):
    table = _table_at_varying_speed(-0.6, 0.3)
    assert table.speed.nominal_anchor_ms == 2.0
    c, scores = calibrate_speed_elasticity(table, grid=(-1.0, -0.6, -0.2, 0.0, 0.4))
    assert c == -0.6 and scores[-0.6] < scores[0.0] / 2 and table.speed_elasticity == 0.0  # left as it was
    # a measurement at nominal speed is left alone; one taken 30% slower has its ratio brought back
    table.speed_elasticity = c
    arch, m = next(iter(table.e2e.items()))  # the first batch ran at speed -0.3
    truth = _synthetic_table(80, 1.2).e2e[arch].p10_ms
    assert table.speed.normalise(m) == pytest.approx(truth, rel=0.02)
    assert table.speed.normalise(m) != pytest.approx(m.anchor_ratio * 2.0, rel=0.02)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").speed_elasticity == -0.6
    # measurements all taken at one speed cannot tell elasticities apart: no correction
    assert calibrate_speed_elasticity(_table_at_varying_speed(-0.6, 0.0)) == (0.0, {})
    # `natdeploy tables refit` calibrates, saves the table and its models
    LatencyTable.save(_table_at_varying_speed(-0.6, 0.3), tmp_path / "u.json")
    assert main(["tables", "refit", "--table", str(tmp_path / "u.json")]) == 0
    refit = LatencyPredictor.load(tmp_path / "u.json")
    assert refit.table.speed_elasticity == pytest.approx(-0.6, abs=0.15)
    assert json.loads((tmp_path / "u.xgb.json").read_text())["table_fingerprint"] == refit.table.fingerprint()
    assert main(["tables", "refit", "--table", str(tmp_path / "u.json"), "--elasticity", "0"]) == 0
    assert LatencyTable.load(tmp_path / "u.json").speed_elasticity == 0.0
    assert main(["tables", "refit", "--table", str(tmp_path / "u.json"), "--elasticity", "steep"]) == 2


def test_models_fitted_to_another_version_of_the_table_are_refitted(tmp_path, caplog):
    table = _synthetic_table(40, 1.2)
    table.save(tmp_path / "t.json")
    LatencyPredictor.fit(table).save(tmp_path / "t.xgb.json")
    arch = SearchSpace(resolutions=(32,)).sample(np.random.default_rng(5))
    before = LatencyPredictor.load(tmp_path / "t.json").predict(arch)[0]
    assert "refitting" not in caplog.text  # the models match their table: loaded as they are
    # The table is re-profiled (the machine got 1.5x faster end to end) but the old models stay beside it
    _synthetic_table(40, 0.8).save(tmp_path / "t.json")
    after = LatencyPredictor.load(tmp_path / "t.json")
    assert "do not match" in caplog.text and "refitting" in caplog.text
    assert after.predict(arch)[0] < 0.8 * before
    saved = json.loads((tmp_path / "t.xgb.json").read_text())  # the refitted models replaced the stale ones
    assert saved["table_fingerprint"] == after.table.fingerprint() and saved["residual_linear"]["coef"]
    caplog.clear()
    again = LatencyPredictor.load(tmp_path / "t.json")  # the saved models, linear part included, load as fitted
    assert "refitting" not in caplog.text and again.linear is not None
    assert again.predict(arch)[0] == pytest.approx(after.predict(arch)[0], rel=1e-6)


def test_repeated_subnet_batches_keep_the_median_of_fresh_sessions():
    parts = [Measurement(median_ms=v, mean_ms=v, std_ms=0.1, count=4, warmup=1, p10_ms=v, min_ms=v - 0.1,
                         anchor_ms=2.0 * v, anchor_ratio=v / 2) for v in (1.0, 3.0, 1.2)]
    both = Measurement.combine(parts)
    assert (both.p10_ms, both.anchor_ratio, both.min_ms, both.count) == (1.2, 0.6, pytest.approx(0.9), 12)
    assert both.std_ms > 0.1  # the spread between the parts is pooled in
    assert Measurement.combine(parts[:1]) is parts[0]
    spec = fast("cpu").with_overrides(rounds=2, e2e_runs=4, anchor=True, e2e_repeats=3)
    backend = get_backend(spec)
    assert backend.describe()["e2e_repeats"] == 3
    small, large = SMALL.smallest().replace(r=32), SMALL.largest().replace(r=64)
    opened = []
    runner = backend.runner
    backend.runner = lambda art, shape: opened.append(art) or runner(art, shape)
    ms = backend.measure_archs([large, small], 10)
    assert [m.count for m in ms] == [12, 12]
    assert ms[0].anchor_ratio > ms[1].anchor_ratio  # each subnet keeps its own measurements through the shuffles
    assert len(opened) == 2 * 3 + ANCHOR_SESSIONS  # a fresh session per subnet and batch (+ the anchor's, once)
    with pytest.raises(ConfigError, match="e2e_repeats must be a positive integer"):
        spec.with_overrides(e2e_repeats=0)


def test_anchor_sessions_are_kept_until_fresh_ones_are_asked_for():
    backend = get_backend(fast("cpu").with_overrides(rounds=3, runs=6, anchor=True))
    kept = backend.anchor_runners()
    assert backend.anchor_runners() is kept and len(kept) > 1
    fresh = backend.anchor_runners(fresh=True)
    assert not set(map(id, fresh)) & set(map(id, kept))  # every session new
    assert backend.anchor_runners() is fresh  # and kept from then on


def test_residual_features_are_chosen_by_cross_validation_and_kept_with_the_models(tmp_path):
    from natdeploy.latency.predictor import MIN_E2E_FOR_FEATURE_CHOICE, OP_GROUPS, op_group

    space = SearchSpace(resolutions=(32, 40), widths=(1.0,))

    def table_where_k7_runs_slow_in_networks(n_e2e: int) -> LatencyTable:
        """Each op's latency grows with its MAdds; a whole subnet takes its ops' sum, but its 7x7 ops at 2x (under
        XNNPACK how much a network exceeds its op sum depends on its kernel mix), with 1% noise."""
        table = LatencyTable(device="synthetic", n_classes=10, provenance={"threads": 1})
        for op in space_ops(space, 10):
            ms = 0.002 + 2e-7 * op.madds
            table.add_op(op, Measurement(ms, ms, 0.0, 10, 1, p10_ms=ms, min_ms=ms))
        rng = np.random.default_rng(11)
        for arch in space.sample(rng, n_e2e):
            ms = sum(table.ops[op.key].p10_ms * (2.0 if op_group(op) == "k7" else 1.0) for op in arch_ops(arch, 10))
            ms *= np.exp(rng.normal(0, 0.01))
            table.add_e2e(arch, Measurement(ms, ms, 0.0, 10, 1, p10_ms=ms, min_ms=ms))
        return table

    table = table_where_k7_runs_slow_in_networks(120)
    auto = LatencyPredictor.fit(table)
    assert auto.residual_features == "body-groups"
    # the features the compiled path computes are those of the network's body, the classifier left out: its op
    # sum first, and each group's share of it last
    archs = space.sample(np.random.default_rng(12), 40)
    _, feats, _ = auto._evaluate_archs(archs, 10)
    for arch, row in zip(archs, feats):
        ops = [op for op in arch_ops(arch, 10) if op.kind != "Logits"]
        ms = auto.op_latency(ops, arch.r)
        want = [ms[[op_group(o) == g for o in ops]].sum() / ms.sum() for g in OP_GROUPS]
        np.testing.assert_allclose(row[-len(OP_GROUPS):], want, rtol=1e-9)
        np.testing.assert_allclose(row[0], np.log(ms.sum()), rtol=1e-9)
    # so a task with other classes than the table's moves no feature (only the sum the factor scales)
    lut_1000, feats_1000, _ = auto._evaluate_archs(archs, 1000)
    np.testing.assert_array_equal(feats_1000, feats)
    assert (lut_1000 > auto._evaluate_archs(archs, 10)[0]).all()

    # and its factor scales the body alone: another class count moves a prediction by exactly the change in the
    # classifier's op, unscaled
    def head_ms(n_classes: int) -> np.ndarray:
        return np.array([auto.op_latency([op for op in arch_ops(a, n_classes) if op.kind == "Logits"], a.r).sum()
                         for a in archs])

    np.testing.assert_allclose(auto.predict(archs, 1000) - auto.predict(archs, 10), head_ms(1000) - head_ms(10),
                               rtol=1e-6, atol=1e-9)
    # better than the base set on subnets it never saw
    truth = table_where_k7_runs_slow_in_networks(160)
    held = [a for a in map(Arch.from_string, truth.e2e) if a.to_string() not in table.e2e][:40]
    true_ms = np.array([truth.e2e[a.to_string()].p10_ms for a in held])
    base = LatencyPredictor.fit(table, residual_features="base")
    assert np.abs(auto.predict(held) / true_ms - 1).mean() < np.abs(base.predict(held) / true_ms - 1).mean()
    # the choice is saved with the models and loaded back; an unknown set is a corrupt file
    table.save(tmp_path / "t.json")
    auto.save(tmp_path / "t.xgb.json")
    again = LatencyPredictor.load(tmp_path / "t.json")
    assert again.residual_features == "body-groups"
    np.testing.assert_allclose(again.predict(held), auto.predict(held), rtol=1e-6)
    obj = json.loads((tmp_path / "t.xgb.json").read_text())
    # models saved with a set this natdeploy computes no more are refitted and saved again, not misread
    (tmp_path / "t.xgb.json").write_text(json.dumps({**obj, "residual_features": "groups"}))
    refitted = LatencyPredictor.load(tmp_path / "t.json")
    assert refitted.residual_features == "body-groups"
    assert json.loads((tmp_path / "t.xgb.json").read_text())["residual_features"] == "body-groups"
    np.testing.assert_allclose(refitted.predict(held), auto.predict(held), rtol=1e-6)
    obj["residual_features"] = "everything"
    (tmp_path / "t.xgb.json").write_text(json.dumps(obj))
    with pytest.raises(TableError, match="corrupt.*residual_features"):
        LatencyPredictor.load(tmp_path / "t.json")
    # too few subnets to tell the sets apart: the base set, no cross-validation
    few = table_where_k7_runs_slow_in_networks(MIN_E2E_FOR_FEATURE_CHOICE - 1)
    assert LatencyPredictor.fit(few).residual_features == "base"
    with pytest.raises(TableError, match="unknown residual feature set"):
        LatencyPredictor.fit(few, residual_features="everything")
