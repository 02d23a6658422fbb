"""NAT search overhead per iteration (no training) and budget keeping on a real latency table.

Part 1: surrogate fit + NSGA (II for 2 objectives, III for 3) + subset selection, timed per iteration on archives of
100-300 subnets, on the search's real code path (NATSearch._nsga / _select_subset). Accuracy values are a
synthetic stand-in (the cost of the search does not depend on them). Target: <= 10 s per iteration.

Part 2: for budgets spread across the feasible range on a device, run the search, take the most accurate
(surrogate) Arch within the budget, and measure it end to end: predicted <= budget every time, measured <= 1.05 x
budget in >= 95% of cases, and >= 85% of the budget used.

    python benchmarks/search_overhead.py [--device cpu] [--budgets 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from natdeploy.devices import load_device
from natdeploy.latency.backends import get_backend
from natdeploy.latency.store import predictor_for
from natdeploy.search.nat import ArchiveEntry, NATConfig, NATSearch, SearchState
from natdeploy.search.report import latency_range
from natdeploy.space import SearchSpace, madds

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record


def synthetic_accuracy(space: SearchSpace, genome: np.ndarray) -> float:
    # Bigger subnets are more accurate, with diminishing returns: enough structure for a surrogate to rank.
    return float(1 - 0.5 * np.exp(-madds(space.decode(genome), 10) / 2e7))


def make_search(space: SearchSpace, device: str, predictor, budgets: dict, n_archive: int, objectives, seed: int):
    cfg = NATConfig(objectives=tuple(objectives), seed=seed)
    state = SearchState(config={**cfg.__dict__, "objectives": list(objectives)}, devices=[device], budgets=budgets,
                        space={"name": space.name, "resolutions": list(space.resolutions), "widths": [1.0]},
                        data={}, n_classes=10)
    search = NATSearch(None, state, None, None, {device: predictor}, [])  # no supernet or data: search only
    rng = np.random.default_rng(seed)
    for arch in space.sample(rng, n_archive):
        g = space.encode(arch)
        search.archive.append(ArchiveEntry(g.tolist(), str(arch), synthetic_accuracy(space, g),
                                           {device: float(predictor.predict(arch)[0])}, madds(arch, 10), 0, 0))
    return search


def one_iteration(search: NATSearch, it: int) -> tuple[float, np.ndarray]:
    from natdeploy.search.surrogates import make_surrogate

    t0 = time.perf_counter()
    X = np.array([e.genome for e in search.archive], dtype=float)
    y = np.array([1 - e.accuracy for e in search.archive])
    surrogate = make_surrogate(search.cfg.surrogate, seed=it).fit(X, y)
    cands = search._nsga(surrogate, it)
    chosen = search._select_subset(cands, surrogate, search.cfg.candidates_per_iter)
    return time.perf_counter() - t0, chosen, surrogate, cands


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--space", default="small")
    ap.add_argument("--budgets", type=int, default=15)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    space = SearchSpace.preset(args.space, widths=[1.0])
    predictor = predictor_for(args.device)
    fastest, slowest = latency_range(predictor, space, 10)
    mid = {args.device: (fastest + slowest) / 2}
    rows = []
    for objectives in (("error", "latency"), ("error", "latency", "madds")):
        for n in (100, 300):
            search = make_search(space, args.device, predictor, mid, n, objectives, seed=n)
            secs = [one_iteration(search, it)[0] for it in range(3)]
            rows.append((len(objectives), n, float(np.median(secs)), max(secs)))
            print(f"{len(objectives)} objectives, archive {n}: median {np.median(secs):.2f} s, max {max(secs):.2f} s")
    backend = get_backend(load_device(args.device))
    stat = predictor.table.statistic
    results, chosen = [], []
    for b in np.linspace(fastest * 1.15, slowest * 0.9, args.budgets):
        search = make_search(space, args.device, predictor, {args.device: float(b)}, 100, ("error", "latency"), 7)
        _, _, surrogate, cands = one_iteration(search, 0)
        pool = np.concatenate([cands, np.array([e.genome for e in search.archive])])
        lat = predictor.predict_genomes(space, pool, 10)
        ok = lat <= b
        acc = -surrogate.predict(pool[ok].astype(float))
        best = pool[ok][int(np.argmax(acc))]
        arch = space.decode(best)
        pred = float(lat[ok][int(np.argmax(acc))])
        chosen.append((float(b), pred, arch))
    # measured together, round-robin, as the table's subnets were (see the device spec's rounds)
    ms = backend.measure_archs([a for _, _, a in chosen], 10)
    for (b, pred, arch), m in zip(chosen, ms):
        meas, norm = m.value(stat), predictor.speed.normalise(m)
        results.append((b, pred, meas, norm))
        print(f"budget {b:.3f} ms: predicted {pred:.3f}, measured {meas:.3f} ({meas / b:.2f} x budget), at the "
              f"table's machine speed {norm:.3f} ({norm / b:.2f} x) {arch}")
    res = np.array(results)
    pred_ok = 100 * float((res[:, 1] <= res[:, 0]).mean())
    meas_ok = 100 * float((res[:, 2] <= 1.05 * res[:, 0]).mean())
    norm_ok = 100 * float((res[:, 3] <= 1.05 * res[:, 0]).mean())
    used = 100 * float((res[:, 1] >= 0.85 * res[:, 0]).mean())
    table1 = "\n".join(f"| {o} | {n} | {med:.2f} | {mx:.2f} |" for o, n, med, mx in rows)
    table2 = "\n".join(f"| {b:.3f} | {p:.3f} | {m:.3f} | {m / b:.3f} | {n:.3f} | {n / b:.3f} |"
                       for b, p, m, n in results)
    body = f"""
Machine: {machine_line(1)}.
Command: `python benchmarks/search_overhead.py --device {args.device} --space {args.space} --budgets {args.budgets}`
Search space `{args.space}` (w1.0), table statistic `{stat}`, predicted latency range {fastest:.3f}..{slowest:.3f} ms.

Per-iteration search overhead (surrogate `rbf` fit + NSGA population 100 x 20 generations + subset of 8), 3 iterations:

| objectives | archive | median s | max s |
|---|---|---|---|
{table1}

Target <= 10 s per iteration.

Budget keeping over {len(results)} budgets: predicted <= budget in {pred_ok:.0f}%, measured <= 1.05 x budget in
{meas_ok:.0f}% as measured and {norm_ok:.0f}% anchor-normalised to the table's machine speed (target >= 95%),
predicted >= 85% of the budget in {used:.0f}% (target: every time). The chosen subnets were measured together,
round-robin with the anchor subnet, as the table was.

| budget ms | predicted ms | measured ms | measured / budget | normalised ms | normalised / budget |
|---|---|---|---|---|---|
{table2}
"""
    print(body)
    if not args.no_record:
        record(f"search_overhead --device {args.device}", body)


if __name__ == "__main__":
    main()
