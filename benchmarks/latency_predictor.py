"""Latency predictor accuracy on held-out subnets measured end to end.

Measures N random subnets (none used to fit the predictor) on a device and compares three predictors:
(a) a linear fit on MAdds (fitted on the table's end-to-end measurements), (b) the lookup-table sum alone,
(c) the lookup-table sum with XGBoost (per-op regressors for missing ops + the whole-network residual model).
Reports the share within +-5% and +-10%, RMSE and Kendall tau, and the noise floor: the first 50 subnets measured
twice. Also reports batched prediction throughput and single-Arch latency.

    python benchmarks/latency_predictor.py --device cpu [--n 300] [--repeat 50] [--space small]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import kendalltau

from natdeploy.devices import load_device, tables_dir
from natdeploy.latency.backends import get_backend
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.space import SearchSpace, madds

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record


def metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    rel = np.abs(pred / true - 1)
    return {"within5": 100 * float((rel <= 0.05).mean()), "within10": 100 * float((rel <= 0.10).mean()),
            "rmse": float(np.sqrt(((pred - true) ** 2).mean())), "tau": float(kendalltau(pred, true)[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--table", help="default latency_tables/<device>.json")
    ap.add_argument("--space", default="small")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=50, help="subnets measured twice for the noise floor")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    table_path = args.table or tables_dir() / f"{args.device}.json"
    predictor = LatencyPredictor.load(table_path)
    table = predictor.table
    spec = load_device(args.device)
    backend = get_backend(spec)
    space = SearchSpace.preset(args.space, widths=[1.0])
    profiled = sorted(set(table.provenance.get("resolutions", [])) & set(space.resolutions))
    rng = np.random.default_rng(args.seed)
    archs = [a for a in space.sample(rng, args.n * 2) if a.to_string() not in table.e2e][:args.n]
    n_classes = table.n_classes
    t0 = time.perf_counter()
    true = []
    for i, arch in enumerate(archs):
        true.append(backend.measure_arch(arch, n_classes).value(table.statistic))
        if (i + 1) % 25 == 0:
            print(f"measured {i + 1}/{len(archs)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    true = np.array(true)
    again = np.array([backend.measure_arch(a, n_classes).value(table.statistic) for a in archs[:args.repeat]])
    noise = metrics(again, true[:args.repeat])
    # (a) linear on MAdds, fitted on the table's end-to-end measurements
    train = list(table.e2e)
    from natdeploy.space import Arch

    tm = np.array([madds(Arch.from_string(a), n_classes) for a in train])
    ty = np.array([table.e2e[a].value(table.statistic) for a in train])
    coef = np.polyfit(tm, ty, 1)
    pred_lin = np.polyval(coef, np.array([madds(a, n_classes) for a in archs]))
    lut_only = LatencyPredictor(table, predictor.op_models, None)
    pred_lut = lut_only.predict(archs)
    pred_full = predictor.predict(archs)
    rows = {"(a) linear on MAdds": metrics(pred_lin, true), "(b) LUT sum": metrics(pred_lut, true),
            "(c) LUT + XGBoost": metrics(pred_full, true)}
    # throughput
    G = np.stack([space.encode(a) for a in space.sample(np.random.default_rng(1), 100_000)])
    predictor.predict_genomes(space, G[:10])
    t1 = time.perf_counter()
    predictor.predict_genomes(space, G)
    per_s = len(G) / (time.perf_counter() - t1)
    one = archs[0]
    predictor.predict(one)
    t1 = time.perf_counter()
    for _ in range(200):
        predictor.predict(one)
    single_ms = (time.perf_counter() - t1) / 200 * 1e3
    lines = [f"| {name} | {m['within5']:.1f}% | {m['within10']:.1f}% | {m['rmse']:.4f} | {m['tau']:.3f} |"
             for name, m in rows.items()]
    lines.append(f"| noise floor (same {args.repeat} subnets twice) | {noise['within5']:.1f}% | {noise['within10']:.1f}% "
                 f"| {noise['rmse']:.4f} | {noise['tau']:.3f} |")
    body = f"""
Machine: {machine_line(spec.threads)}.
Command: `python benchmarks/latency_predictor.py --device {args.device} --n {args.n} --repeat {args.repeat} --space {args.space}`
Table `{table_path}`: {len(table.ops)} ops, {len(table.e2e)} end-to-end training subnets, statistic `{table.statistic}`
({table.provenance.get('runtime_version')}, {spec.threads} thread(s)); profiled resolutions {profiled}.
{len(archs)} held-out random subnets of the `{args.space}` space (w1.0, resolutions {list(space.resolutions)}),
measured end to end with the same backend and statistic; measuring took {time.perf_counter() - t0:.0f} s.

| predictor | within +-5% | within +-10% | RMSE ms | Kendall tau |
|---|---|---|---|---|
""" + "\n".join(lines) + f"""

Mean measured latency {true.mean():.3f} ms. Batched prediction: {per_s:,.0f} Archs/s (100,000 genomes);
single Arch: {single_ms:.3f} ms.
"""
    print(body)
    if not args.no_record:
        record(f"latency_predictor --device {args.device}", body)


if __name__ == "__main__":
    main()
