"""Candidate residual models for LiteRT's whole-subnet gap, cross-validated on a table's own subnets (issue 17
item 4: choose without the held-out set). Nothing is measured: seconds.

``benchmarks/litert_gap.py`` found that cache state explains most of the gap between a LiteRT subnet and its op sum:
inside a network an op's weights and inputs are cold. These candidates add what that suggests to the shipped
residual models (``natdeploy.latency.predictor``), and score each by repeated 5-fold cross-validation, at the
table's machine speed:

- ``base`` and ``body-groups``: the two shipped feature sets;
- ``bg+act``: body-groups plus log(activation elements), the tensors that stream through the caches;
- ``bg+weights``: body-groups plus log(body params / body op sum), weight bytes per ms of work;
- ``bg+both``: both of those;
- ``additive``: ridge on [per-group body sums, body params, activation elements, op count] for measured less
  the classifier's op, a weight-fetch term added rather than multiplied;
- ``additive+bg``: that, with a body-groups residual on top.

    python benchmarks/residual_candidates.py TABLE.json [--repeats 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

from natdeploy.layout import layer_cost
from natdeploy.latency.predictor import LatencyPredictor, _fit_residual, apply_factor, log_factor_of
from natdeploy.latency.table import LatencyTable
from natdeploy.space import Arch, layer_plan

try:
    from _common import machine_line, record
    from few_shot import scores as within
except ImportError:
    from benchmarks._common import machine_line, record
    from benchmarks.few_shot import scores as within

CANDIDATES = ("base", "body-groups", "bg+act", "bg+weights", "bg+both", "additive", "additive+bg")


def cache_features(arch: Arch, n_classes: int) -> tuple[float, float, int]:
    """(activation elements written and read by the layers, params of all but the classifier, layer count)."""
    act = weights = 0
    layers = layer_plan(arch, n_classes)
    for layer in layers:
        if layer.kind in ("mbconv", "block0"):  # the expanded map in and out of the depthwise conv, and the output
            act += (layer.in_hw ** 2 + layer.out_hw ** 2) * layer.mid + layer.out_hw ** 2 * layer.out_c
        else:
            act += layer.out_hw ** 2 * layer.out_c
        if layer.kind != "classifier":
            weights += layer_cost(layer)[1]
    return float(act), float(weights), len(layers)


def folds(n: int, repeats: int):
    """(train, held-out) index arrays of ``repeats`` shuffled 5-fold splits, as the library's own choices split."""
    for rep in range(repeats):
        yield from KFold(n_splits=5, shuffle=True, random_state=rep).split(np.arange(n))


def cross_validate(table: LatencyTable, repeats: int) -> dict[str, tuple[float, float]]:
    fitted = LatencyPredictor.fit(table, residual_features="base")
    archs = [Arch.from_string(a) for a in table.e2e]
    measured = np.array([fitted.speed.normalise(m) for m in table.e2e.values()])
    extra = np.array([cache_features(a, table.n_classes) for a in archs])
    feats_of = {}
    for name in ("base", "body-groups"):
        p = LatencyPredictor(table, fitted.op_models, speed=fitted.speed, residual_features=name)
        feats_of[name] = p._evaluate_archs(archs, table.n_classes)
    lut, bg, kept = feats_of["body-groups"]
    body = lut - kept
    columns = {"bg+act": [np.log(extra[:, 0])], "bg+weights": [np.log(extra[:, 1] / body)],
               "bg+both": [np.log(extra[:, 0]), np.log(extra[:, 1] / body)]}
    additive_x = np.column_stack([bg[:, -4:] * body[:, None], extra])
    out = {}
    for name in CANDIDATES:
        preds, truths = [], []
        for train, held in folds(len(archs), repeats):
            if name.startswith("additive"):
                model = RidgeCV(alphas=np.logspace(-6, 2, 17)).fit(additive_x[train], measured[train] - kept[train])
                total, feats, k = kept + np.maximum(model.predict(additive_x), 0.1 * body), bg, kept
            else:
                total, feats, k = feats_of["base" if name == "base" else "body-groups"]
                if name in columns:
                    feats = np.column_stack([feats, *columns[name]])
            if name == "additive":
                pred = total[held]
            else:
                y = log_factor_of(measured, total, k)
                linear, trees, (lo, hi) = _fit_residual(feats[train], y[train], 0)
                factor = np.clip(linear.predict(feats[held]) + trees.inplace_predict(feats[held]), lo, hi)
                pred = apply_factor(total[held], k[held], factor)
            preds.append(pred)
            truths.append(measured[held])
        out[name] = within(np.concatenate(preds), np.concatenate(truths))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path)
    ap.add_argument("--repeats", type=int, default=10, help="shuffles of the 5-fold split (default 10)")
    ap.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    table = LatencyTable.load(args.table)
    scores = cross_validate(table, args.repeats)
    lines = [f"Command: `python benchmarks/residual_candidates.py {args.table} --repeats {args.repeats}` (nothing "
             f"measured), {time.perf_counter() - t0:.0f} s. Table: {len(table.ops)} ops, {len(table.e2e)} subnets, "
             f"{table.n_classes} classes, host {table.provenance.get('host', '?')}. Machine: {machine_line(1)}.",
             "", f"5-fold cross-validation x {args.repeats} shuffles on the table's own subnets, at its machine speed:",
             "", "| candidate | within +-5% | within +-10% |", "|---|---|---|"]
    lines += [f"| {name} | {a:.1f}% | {b:.1f}% |" for name, (a, b) in scores.items()]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        record("residual_candidates", body)


if __name__ == "__main__":
    sys.exit(main())
