"""Few-shot transfer against a fully profiled table (issue 17 item 2).

For each pair (a source table, a target device on this host) it measures, on the target: a pool of whole subnets
the transfer may use (its first N, N = 10, 20, 50, 100), and held-out subnets that no predictor is fitted on, the
first ``--repeat`` of them twice (the noise floor). It then scores on the held-out set, each predictor at the
machine speed of its own table:

- the fully profiled table of the target (``natdeploy profile`` on this host, profiled here once and cached);
- the source table untransferred;
- the few-shot transfer at each N (``natdeploy.latency.transfer``, method ``auto``, and every method on its own,
  so that the choice is seen to be right or wrong);
- the second measurement (the noise floor: the best any predictor can be judged to do here).

Profiling time: the transfer's is the measured time of its N subnets (a share of their batches) plus the fit; the
full table's is the wall time of its profile. Everything measured is cached per target and host under
``benchmarks/.cache/few_shot`` (gitignored) and shared between pairs with the same target, so a rerun measures only
what is missing; ``--max-minutes`` stops before the next stage once over the limit, and a rerun continues.

With ``--pool-from-held`` the pool is the held-out set's second half and everything is judged on its first half:
pool and held-out then come from one measuring session. Without it they come from two, and LiteRT's anchor-normalised
values can differ by ~10% between sessions on a shared VM (the "median predicted / measured" column shows it): a
few-shot predictor carries its pool's offset, the full table its profile's.

    python benchmarks/few_shot.py --quick                       # shipped cpu table (other host) -> cpu here
    python benchmarks/few_shot.py [--pairs host runtime int8 threads host-cpu host-int8] [--pool-from-held] [--max-minutes 14]

Cost of the full run on an idle 2-core machine, estimated from benchmarks/RESULTS.md (LiteRT ~7 s per whole subnet
in interleaved batches, onnxruntime at 2 threads ~3.5 s, a full LiteRT profile ~20 min): 450 subnets on each of
cpu-litert, cpu-litert-int8 and cpu at 2 threads, and 4 full profiles (cpu-litert, cpu-litert-int8, cpu at 1 and 2
threads), about 3.5 hours in all. Run it in pieces: `timeout 900 python benchmarks/few_shot.py --max-minutes 14`
again until it prints the tables; a kill (SIGTERM) mid-profile keeps what was measured and its time.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import time
from pathlib import Path

import numpy as np

from natdeploy.devices import DeviceSpec, load_device
from natdeploy.fileio import atomic_write_text
from natdeploy.latency.backends import E2E_BATCH, get_backend, host_cpu
from natdeploy.latency.measure import Measurement
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.profiler import profile_device
from natdeploy.latency.speed import SpeedModel, nominal_anchor_ms
from natdeploy.latency.transfer import METHODS, few_shot_archs, measure_subnets, transfer_measured
from natdeploy.space import Arch, SearchSpace

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / ".cache" / "few_shot"
SHIPPED = ROOT / "latency_tables"
# name -> (what it shows, source table: a shipped file or "full:<target key>", target key)
PAIRS = {
    "host": ("shipped cpu-litert table (other host) -> cpu-litert here", "cpu-litert.json", "cpu-litert"),
    "runtime": ("cpu (onnxruntime, shipped) -> cpu-litert here", "cpu.json", "cpu-litert"),
    "int8": ("cpu-litert fp32 (profiled here) -> cpu-litert-int8 here", "full:cpu-litert", "cpu-litert-int8"),
    "threads": ("cpu 1 thread (profiled here) -> cpu 2 threads here", "full:cpu", "cpu-2t"),
    "host-cpu": ("shipped cpu table (other host) -> cpu here", "cpu.json", "cpu"),
    "host-int8": ("shipped cpu-litert-int8 table (other host) -> cpu-litert-int8 here", "cpu-litert-int8.json",
                  "cpu-litert-int8"),
}
# Every subnet and every table of this benchmark has a 10-class head, as the shipped tables do: a table profiled
# with another head would be judged on subnets it does not predict (the 1280 x 1000 logits alone are ~0.3 ms).
N_CLASSES = 10
TARGETS = {"cpu-litert": ("cpu-litert", None), "cpu-litert-int8": ("cpu-litert-int8", None), "cpu": ("cpu", None),
           "cpu-2t": ("cpu", 2)}


class OutOfTime(BaseException):
    """Time to stop (--max-minutes or SIGTERM); a BaseException so that no backend's error handling takes it for a
    failed measurement."""


class Bench:
    """Cached measurements and full tables on this host, with a wall-time limit checked between stages."""

    def __init__(self, max_minutes: float | None) -> None:
        self.t0 = time.perf_counter()
        self.limit = None if max_minutes is None else 60 * max_minutes
        self.host = re.sub(r"[^A-Za-z0-9]+", "-", host_cpu()).strip("-").lower()
        CACHE.mkdir(parents=True, exist_ok=True)

    def spec(self, target: str) -> DeviceSpec:
        name, threads = TARGETS[target]
        return load_device(name).with_overrides(threads=threads)

    def _check_time(self) -> None:
        if self.limit is not None and time.perf_counter() - self.t0 > self.limit:
            raise OutOfTime

    def _file(self, target: str, what: str) -> Path:
        return CACHE / f"{target}-{self.host}-c{N_CLASSES}-{what}.json"

    def measured(self, target: str, archs: list[Arch], what: str = "first") -> tuple[list, list]:
        """(measurements, seconds spent per subnet) of ``archs`` on ``target``, measuring only what the cache
        lacks, in the profiler's interleaved batches, saved after each batch."""
        path = self._file(target, what)
        cache = json.loads(path.read_text()) if path.is_file() else {}
        todo = [a for a in archs if a.to_string() not in cache]
        if todo:
            spec = self.spec(target)
            with get_backend(spec) as backend:
                for start in range(0, len(todo), E2E_BATCH):
                    self._check_time()
                    batch = todo[start:start + E2E_BATCH]
                    t = time.perf_counter()
                    ms = measure_subnets(backend, batch, N_CLASSES)
                    each = (time.perf_counter() - t) / len(batch)
                    # a batch that fell back to one subnet at a time has no anchor ratios: not comparable, so not kept
                    kept = [(a, m) for a, m in zip(batch, ms) if m.anchor_ratio is not None or not spec.anchor]
                    if len(kept) < len(batch):
                        raise SystemExit(f"{target}: {len(batch) - len(kept)} subnets were measured without the "
                                         "anchor (the interleaved batch failed); rerun to measure them again")
                    cache.update({a.to_string(): {"m": m.to_dict(), "s": each} for a, m in kept})
                    atomic_write_text(path, json.dumps(cache))
                    print(f"{target} {what}: {len(cache)} measured ({time.perf_counter() - self.t0:.0f} s)",
                          flush=True)
        rows = [cache[a.to_string()] for a in archs]
        return [Measurement.from_dict(r["m"]) for r in rows], [float(r["s"]) for r in rows]

    def full_table(self, target: str, e2e_samples: int) -> tuple[Path, float]:
        """The target's fully profiled table on this host (profiled here once; resumed if a run was cut), and the
        wall time its profile took over all runs."""
        path, meta_path = self._file(target, "full"), self._file(target, "full-time")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"profile_s": 0.0, "done": False}
        if not meta["done"]:
            self._check_time()
            spec = self.spec(target)
            t = time.perf_counter()
            try:
                profile_device(spec, SearchSpace.preset(spec.space), e2e_samples=e2e_samples, n_classes=N_CLASSES,
                               out=path)
                meta["done"] = True
            finally:
                meta["profile_s"] += time.perf_counter() - t
                atomic_write_text(meta_path, json.dumps(meta))
        return path, float(meta["profile_s"])


def scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    rel = np.abs(pred / true - 1)
    return 100 * float((rel <= 0.05).mean()), 100 * float((rel <= 0.10).mean())


def judge(predictor: LatencyPredictor, held: list[Arch], first: list[Measurement],
          second: list[Measurement]) -> dict:
    """Within +-5/10% of the first measurement of every held-out subnet and of the second one of the repeated,
    both at the machine speed of the predictor's own table."""
    speed = predictor.table.speed
    pred = predictor.predict(held)
    t1 = np.array([speed.normalise(m) for m in first])
    t2 = np.array([speed.normalise(m) for m in second])
    return {"first": scores(pred, t1), "second": scores(pred[:len(second)], t2),
            "bias": float(np.median(pred / t1))}


def run_pair(bench: Bench, name: str, ns: list[int], n_held: int, repeat: int, full: bool,
             e2e_samples: int, pool_from_held: bool = False) -> str:
    label, source_ref, target = PAIRS[name]
    spec = bench.spec(target)
    if source_ref.startswith("full:"):
        source_path, _ = bench.full_table(source_ref[5:], e2e_samples)
    else:
        source_path = SHIPPED / source_ref
    source = LatencyPredictor.load(source_path)
    if source.table.n_classes != N_CLASSES:
        raise SystemExit(f"{source_path} has {source.table.n_classes} classes; this benchmark compares "
                         f"{N_CLASSES}-class subnets")
    space = SearchSpace(resolutions=tuple(source.table.provenance["resolutions"]), widths=(1.0,))
    pool = few_shot_archs(space, max(ns), seed=777)
    held = few_shot_archs(space, n_held, seed=12345, exclude=[a.to_string() for a in pool])
    first, first_s = bench.measured(target, held)
    second, _ = bench.measured(target, held[:repeat], "second")
    if pool_from_held:  # one measuring session for both: the pool is the held-out set's second half
        half = len(held) // 2
        pool, pool_ms, pool_s = held[half:], first[half:], first_s[half:]
        held, first = held[:half], first[:half]
    else:
        pool_ms, pool_s = bench.measured(target, pool)
    rows = []
    if full:
        full_path, full_s = bench.full_table(target, e2e_samples)
        full_pred = LatencyPredictor.load(full_path)
        overlap = set(full_pred.table.e2e) & {a.to_string() for a in held}
        assert not overlap, f"held-out subnets in the full table: {sorted(overlap)[:3]}"
        rows.append((f"fully profiled ({len(full_pred.table.ops)} ops + {len(full_pred.table.e2e)} subnets)",
                     full_s, judge(full_pred, held, first, second)))
    else:
        full_s = float("nan")
    rows.append(("source table untransferred", 0.0, judge(source, held, first, second)))
    provenance = {**get_backend_description(spec)}
    for n in ns:
        t = time.perf_counter()
        auto = transfer_measured(source, source_path, spec, provenance, pool[:n], pool_ms[:n])
        fit_s = time.perf_counter() - t
        chosen = auto.table.provenance["transfer"]["method"]
        rows.append((f"few-shot N={n} (auto: {chosen})", sum(pool_s[:n]) + fit_s, judge(auto, held, first, second)))
        for method in METHODS:
            pred = transfer_measured(source, source_path, spec, provenance, pool[:n], pool_ms[:n], method)
            rows.append((f"  N={n} {method}", float("nan"), judge(pred, held, first, second)))
    # the noise floor as the predictors are judged: both measurements at one machine speed (anchor-normalised)
    floor = SpeedModel.of(first + second, 0.0, source.table.statistic)
    noise = scores(np.array([floor.normalise(m) for m in second]),
                   np.array([floor.normalise(m) for m in first[:repeat]]))
    lines = ["| predictor | profiling time | x faster than full | within +-5% | within +-10% | "
             f"vs 2nd measurement (n={repeat}) +-5% / +-10% | median predicted / measured |",
             "|---|---|---|---|---|---|---|"]
    for what, secs, j in rows:
        t_txt = "" if np.isnan(secs) else f"{secs:.0f} s"
        x_txt = f"{full_s / secs:.1f}x" if secs and not np.isnan(secs) and not np.isnan(full_s) else ""
        lines.append(f"| {what} | {t_txt} | {x_txt} | {j['first'][0]:.1f}% | {j['first'][1]:.1f}% | "
                     f"{j['second'][0]:.1f}% / {j['second'][1]:.1f}% | {j['bias']:.3f} |")
    lines.append(f"| 2nd measurement (noise floor) | | | | | {noise[0]:.1f}% / {noise[1]:.1f}% | |")
    # Where the sets were measured at different machine speeds (or with other anchor sessions), a predictor fitted
    # on one set carries that set's offset: the median column shows it.
    speeds = [("held-out", nominal_anchor_ms(first)), ("pool", nominal_anchor_ms(pool_ms))]
    if full:
        speeds.append(("full table", full_pred.table.speed.nominal_anchor_ms))
    return (f"### {name}: {label}\n\nSource `{Path(source_path).name}` ({source.table.provenance.get('host')}, "
            f"{source.table.precision}); target `{spec.name}` ({spec.threads} thread(s), {spec.precision}); "
            f"{len(held)} held-out subnets (first {repeat} measured twice), pool of {len(pool)}. Median anchor "
            "latency (the machine speed each set was measured at): "
            + ", ".join(f"{what} {v:.3f} ms" if v else f"{what} none" for what, v in speeds) + ".\n\n" + "\n".join(lines))


def get_backend_description(spec: DeviceSpec) -> dict:
    with get_backend(spec) as backend:
        return backend.describe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["host", "runtime", "int8", "threads"])
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--held-out", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=50, help="held-out subnets measured twice (noise floor)")
    ap.add_argument("--full-e2e", type=int, default=30, help="whole subnets of a full profile (the CLI default)")
    ap.add_argument("--no-full", action="store_true", help="skip the fully profiled tables (what --quick does)")
    ap.add_argument("--pool-from-held", action="store_true",
                    help="draw the pool from the held-out set's second half and judge on its first half: pool and "
                         "held-out measured in one session, at one machine speed (no new measurements)")
    ap.add_argument("--max-minutes", type=float, help="stop before the next stage once over this; rerun to continue")
    ap.add_argument("--quick", action="store_true", help="smoke run: host-cpu pair, 30 held-out, N = 10 and 20, "
                                                          "no full table, not recorded")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.ns, args.held_out, args.repeat, args.no_full = ["host-cpu"], [10, 20], 30, 10, True
    bench = Bench(args.max_minutes)

    def stop(signum: int, frame: object) -> None:  # `timeout` sends SIGTERM: stop as at the time limit
        raise OutOfTime

    signal.signal(signal.SIGTERM, stop)
    sections = []
    try:
        for name in args.pairs:
            sections.append(run_pair(bench, name, sorted(args.ns), args.held_out, args.repeat, not args.no_full,
                                     args.full_e2e, args.pool_from_held))
            print(sections[-1], flush=True)
    except OutOfTime:
        print(f"stopped after {time.perf_counter() - bench.t0:.0f} s (--max-minutes {args.max_minutes}); "
              "everything measured is cached: rerun the same command to continue")
        return
    flags = " --quick" if args.quick else f" --pairs {' '.join(args.pairs)}" + (
        " --pool-from-held" if args.pool_from_held else "")
    body = (f"Machine: {machine_line(1)}.\nCommand: `python benchmarks/few_shot.py{flags}` "
            f"(wall {time.perf_counter() - bench.t0:.0f} s this run; cached measurements reused). Each predictor is "
            "judged at the machine speed of its own table (anchor-normalised).\n\n" + "\n\n".join(sections))
    print(body)
    if not (args.quick or args.no_record):
        record("few_shot" + flags, body)  # a section per command: runs of other pairs (other hosts) are kept


if __name__ == "__main__":
    main()
