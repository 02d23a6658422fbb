"""Latency predictor accuracy on held-out subnets measured end to end.

Measures N random subnets (none used to fit the predictor) on a device and compares three predictors:
(a) a linear fit on MAdds (fitted on the table's end-to-end measurements), (b) the lookup-table sum alone,
(c) the lookup-table sum with XGBoost (per-op regressors for missing ops + the whole-network residual model).
Reports the share within +-5% and +-10%, RMSE and Kendall tau, and the noise floor as the yardstick: the first 50
subnets are measured twice, and each predictor's share within +-5% / +-10% of the second measurement stands next to
the first measurement's (no predictor can be judged to do better than a repeat measurement on this machine). Also reports batched prediction throughput and single-Arch latency.

The held-out measurements are saved to ``--save`` (JSON); ``--measurements FILE`` re-scores a saved set against
the current table and predictor without measuring again (the output says so, with the file's date).

    python benchmarks/latency_predictor.py --device cpu [--n 300] [--repeat 50] [--space small]
    python benchmarks/latency_predictor.py --device cpu --threads 2 --table T
        (T from `natdeploy profile --device cpu --threads 2 --out T`)
    python benchmarks/latency_predictor.py --device cpu --measurements FILE --elasticity 0 --no-record
        (the saved held-out set re-scored without the table's speed elasticity)
    python benchmarks/latency_predictor.py --device cpu --n-classes 1000 --n 60 --repeat 10
        (a task with more classes than the table was profiled for: its classifier is measured on the table's
        classifier ladder, 10 / 100 / 1000 classes, or estimated by the op regressor off it or in older tables)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from natdeploy.devices import load_device
from natdeploy.latency import store
from natdeploy.latency.backends import E2E_BATCH, get_backend
from natdeploy.latency.measure import Measurement
from natdeploy.latency.predictor import RESIDUAL_FEATURES, LatencyPredictor
from natdeploy.space import Arch, SearchSpace, madds

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record


def metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    rel = np.abs(pred / true - 1)
    return {"within5": 100 * float((rel <= 0.05).mean()), "within10": 100 * float((rel <= 0.10).mean()),
            "rmse": float(np.sqrt(((pred - true) ** 2).mean())), "tau": float(kendalltau(pred, true)[0])}


def measure(backend, archs, n_classes: int, t0: float) -> list[Measurement]:
    """End-to-end latencies the way the profiler measures its table: batches timed round-robin where the device
    spec interleaves (``rounds``), else one subnet at a time."""
    out: list[Measurement] = []
    batch = E2E_BATCH if backend.interleaves else 1
    for start in range(0, len(archs), batch):
        out += backend.measure_archs(archs[start:start + batch], n_classes)
        print(f"measured {len(out)}/{len(archs)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--table", help="default latency_tables/<device>.json")
    ap.add_argument("--threads", type=int, help="override the spec's thread count (give the --table profiled so)")
    ap.add_argument("--space", default="small")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=50, help="subnets measured twice for the noise floor")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--save", help="where to save the measurements (default /tmp/natdeploy-bench/"
                                   "latency_predictor-<device>.json)")
    ap.add_argument("--measurements", help="re-score a saved measurement file instead of measuring")
    ap.add_argument("--n-classes", type=int, help="measure and predict the held-out subnets with a classifier of this "
                    "many classes (default: the table's; a count the table did not measure leaves the classifier "
                    "to the op regressor)")
    ap.add_argument("--residual-features", choices=[*RESIDUAL_FEATURES, "auto"],
                    help="score with the models refitted in memory with this residual feature set")
    ap.add_argument("--elasticity", type=float, help="score with this speed elasticity instead of the table's "
                    "(models refitted in memory; a same-run baseline with --measurements and --no-record)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    table_path = args.table or store.table_path(args.device)
    predictor = LatencyPredictor.load(table_path)
    table = predictor.table
    if args.elasticity is not None:
        table.speed_elasticity = args.elasticity
    if args.elasticity is not None or args.residual_features:
        predictor = LatencyPredictor.fit(table, residual_features=args.residual_features or "auto")
    spec = load_device(args.device).with_overrides(threads=args.threads)
    if table.provenance.get("threads") not in (None, spec.threads):
        raise SystemExit(f"{table_path} was profiled with {table.provenance['threads']} thread(s), not {spec.threads}")
    backend = get_backend(spec)
    space = SearchSpace.preset(args.space, widths=[1.0])
    profiled = sorted(set(table.provenance.get("resolutions", [])) & set(space.resolutions))
    rng = np.random.default_rng(args.seed)
    archs = [a for a in space.sample(rng, args.n * 2) if a.to_string() not in table.e2e][:args.n]
    n_classes = args.n_classes or table.n_classes
    t0 = time.perf_counter()
    if args.measurements:
        saved = json.loads(Path(args.measurements).read_text())
        if saved.get("n_classes", table.n_classes) != n_classes:
            raise SystemExit(f"{args.measurements} was measured with {saved.get('n_classes', table.n_classes)} "
                             f"classes, not {n_classes}; give --n-classes {saved.get('n_classes', table.n_classes)}")
        archs = [Arch.from_string(a) for a in saved["archs"]]
        first = [Measurement.from_dict(d) for d in saved["first"]]
        second = [Measurement.from_dict(d) for d in saved["second"]]
        source = f"re-scored from `{args.measurements}` (measured {saved['date']})"
    else:
        first = measure(backend, archs, n_classes, t0)
        second = measure(backend, archs[:args.repeat], n_classes, t0)
        threads = f"-{args.threads}t" if args.threads else ""
        save = Path(args.save or f"/tmp/natdeploy-bench/latency_predictor-{args.device}{threads}.json")
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps({"device": args.device, "n_classes": n_classes,
                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "archs": [str(a) for a in archs], "first": [m.to_dict() for m in first],
                                    "second": [m.to_dict() for m in second]}))
        source = f"measured in this run in {time.perf_counter() - t0:.0f} s (saved to `{save}`)"
    # (a) linear on MAdds, fitted on the table's end-to-end measurements (at the table's nominal speed)
    train = [Arch.from_string(a) for a in table.e2e]
    coef = np.polyfit([madds(a, n_classes) for a in train], [table.speed.normalise(m) for m in table.e2e.values()], 1)
    preds = {"(a) linear on MAdds": np.polyval(coef, np.array([madds(a, n_classes) for a in archs])),
             "(b) LUT sum": LatencyPredictor(table, predictor.op_models, None).predict(archs, n_classes),
             "(c) LUT + XGBoost": predictor.predict(archs, n_classes)}
    views = {"as measured": lambda m: m.value(table.statistic)}
    if table.speed.nominal_anchor_ms and all(m.anchor_ms for m in first + second):
        views["anchor-normalised"] = table.speed.normalise
    sections = []
    for view, value in views.items():
        true = np.array([value(m) for m in first])
        again = np.array([value(m) for m in second])  # the second measurement: the yardstick
        noise = metrics(again, true[:len(second)])
        rows = {name: (metrics(pr, true), metrics(pr[:len(second)], again)) for name, pr in preds.items()}
        lines = [f"| {name} | {m['within5']:.1f}% | {m['within10']:.1f}% | {m['rmse']:.4f} | {m['tau']:.3f} | "
                 f"{m2['within5']:.1f}% | {m2['within10']:.1f}% |" for name, (m, m2) in rows.items()]
        lines.append(f"| 1st measurement (noise floor) | {noise['within5']:.1f}% | {noise['within10']:.1f}% | "
                     f"{noise['rmse']:.4f} | {noise['tau']:.3f} | {noise['within5']:.1f}% | "
                     f"{noise['within10']:.1f}% |")
        best = rows["(c) LUT + XGBoost"][1]
        verdict = ", ".join(f"+-{k}%: {best[f'within{k}']:.1f}% against {noise[f'within{k}']:.1f}% "
                            f"({'met' if best[f'within{k}'] >= noise[f'within{k}'] else 'not met'})" for k in (5, 10))
        sections.append(f"Held-out latency {view} (mean {true.mean():.3f} ms):\n\n"
                        f"| predictor | within +-5% | within +-10% | RMSE ms | Kendall tau | within +-5% of the 2nd "
                        f"measurement (n={len(second)}) | within +-10% of the 2nd |\n|---|---|---|---|---|---|---|\n"
                        + "\n".join(lines) + "\n\nTarget (LUT + XGBoost agrees with the 2nd measurement at least as "
                        f"often as the 1st measurement does), {view}: {verdict}.")
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
    nominal = table.speed.nominal_anchor_ms or float("nan")
    root = Path(__file__).resolve().parents[1]
    shown = Path(table_path).resolve()
    shown = shown.relative_to(root) if shown.is_relative_to(root) else shown
    asked = (f" --n-classes {args.n_classes}" if args.n_classes else "") + (
        f" --residual-features {args.residual_features}" if args.residual_features else "")
    flags = (f" --threads {args.threads}" if args.threads else "") + (f" --table {shown}" if args.table else "")
    flags += asked
    body = f"""
Machine: {machine_line(spec.threads)}.
Command: `python benchmarks/latency_predictor.py --device {args.device}{flags} --n {args.n} --repeat {args.repeat} --space {args.space}`
Table `{shown}`: {len(table.ops)} ops, {len(table.e2e)} end-to-end training subnets, {table.n_classes} classes, statistic `{table.statistic}`, residual features `{predictor.residual_features}`
({table.provenance.get('runtime_version')}, {spec.threads} thread(s), {spec.rounds} round-robin rounds over >= {spec.min_span_s} s
per batch of {E2E_BATCH if backend.interleaves else 1}); profiled resolutions {profiled}.
{len(archs)} held-out random subnets of the `{args.space}` space (w1.0, resolutions {list(space.resolutions)}, {n_classes} classes),
measured end to end with the same backend and statistic, {source}. "Anchor-normalised" is each subnet's
per-round ratio to the anchor subnet timed around it (median over the rounds), times the table's median anchor
latency ({nominal:.4f} ms), with the table's speed elasticity ({table.speed_elasticity:+.2f}; see
`natdeploy/latency/speed.py`): the table's values are brought to that speed the same way.

""" + "\n\n".join(sections) + f"""

Batched prediction: {per_s:,.0f} Archs/s (100,000 genomes); single Arch: {single_ms:.3f} ms.
"""
    print(body)
    if not args.no_record:
        # a table of one's own gets a section of its own: the shipped table's stays
        record(f"latency_predictor --device {args.device}{f' --threads {args.threads}' if args.threads else ''}"
               f"{f' --table {Path(args.table).name}' if args.table else ''}{asked}", body)


if __name__ == "__main__":
    main()
