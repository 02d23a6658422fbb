"""A profiling farm: one latency table measured on several phones of one model at once.

``natdeploy profile --device pixel4 --serial A --serial B ...`` runs :func:`profile_farm`:

1. **Identity.** Every phone is described (model, SoC, benchmark_model build, threads, ...). A phone whose
   measuring conditions (:data:`natdeploy.latency.table.COMPAT_FIELDS`) differ from the table being resumed, or,
   for a new table, from the farm's majority, is refused and named: its numbers could not share a table.
2. **Speed.** The :data:`REFERENCE_OPS` largest ops are measured on every phone in :data:`REFERENCE_REPEATS`
   round-robin rounds after a warm-up round. A phone's speed is the median over those ops of its fastest run over
   the farm's (:func:`phone_speeds`); a phone off by more than the tolerance (:func:`speed_tolerance`, from the
   rounds' own noise) is refused and named. Where the rounds repeat too unevenly for a tolerance of
   :data:`WIDE_TOLERANCE` or less, more rounds are measured, up to :data:`MAX_REFERENCE_REPEATS`. The timings are
   kept in the table's provenance, so a resumed farm does not measure a phone twice.
3. **Shards.** The ops still missing, then the whole subnets, form one queue of batches that every phone's thread
   takes from, so a fast phone does more. Each measurement is saved at once (atomic write) with the serial that
   measured it (``provenance["farm"]["ops"]`` / ``["e2e"]``). A phone that drops out (its link does not come
   back within ``reconnect_wait_s``, or its runs keep failing) puts its unsaved batch back for the others.
4. **End.** When every phone has dropped out, the table keeps what was measured and the run ends with one line
   that says how to resume; rerunning the same command measures only what is missing.

Measurements are stored as measured: a phone within the tolerance is not rescaled, its speed is recorded.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import threading
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from natdeploy.devices import DeviceSpec
from natdeploy.errors import NatDeployError
from natdeploy.latency.backends import Backend, BackendError, get_backend
from natdeploy.latency.ops import OpSig, profile_ops, space_ops
from natdeploy.latency.predictor import fit_table
from natdeploy.latency.profiler import _measured_archs, _measured_ops, open_table
from natdeploy.latency.store import new_table_path
from natdeploy.latency.table import COMPAT_FIELDS, LatencyTable
from natdeploy.space import SearchSpace

__all__ = ["FarmError", "FarmResult", "profile_farm", "speed_tolerance", "TOLERANCE_FLOOR"]

log = logging.getLogger(__name__)

REFERENCE_OPS = 3
REFERENCE_REPEATS = 5
# Noise that comes in bursts (a phone switching cores or clocks; the fake phones of the tests share this host's
# cores, whose speed here flipped between two levels 1.5x apart for tenths of a second at a time) can leave one
# half of 5 rounds without a fast round, and the tolerance then admits a 30% slower phone. The fastest run over
# more rounds is more likely to be a fast one, so rounds are added, REFERENCE_REPEATS at a time, until the
# tolerance is no wider than WIDE_TOLERANCE or MAX_REFERENCE_REPEATS rounds are in.
WIDE_TOLERANCE = 0.25
MAX_REFERENCE_REPEATS = 3 * REFERENCE_REPEATS
# A phone this far from the farm's speed is refused even where the reference ops repeat perfectly: the latency
# predictor is judged within +-10% of a measurement, so a shard measured 10% off would spend that whole band.
TOLERANCE_FLOOR = 0.10
NOISE_SIGMAS = 3.0  # the tolerance also covers this many standard errors of a phone's measured speed


class FarmError(NatDeployError):
    """A farm cannot start (no usable phone) or ended with every phone gone."""


@dataclass
class FarmResult:
    table_path: Path
    model_path: Path
    n_ops: int
    n_ops_measured_now: int
    n_e2e: int
    per_phone: dict[str, int]  # serial -> measurements it made in this run
    refused: dict[str, str]  # serial -> why it was refused
    dropped: dict[str, str]  # serial -> why it dropped out mid-run
    tolerance: float


@dataclass
class _Phone:
    serial: str
    backend: Backend
    provenance: dict[str, Any]
    measured: int = 0


def speed_tolerance(repeats: dict[str, dict[str, list[float]]]) -> float:
    """The relative speed difference beyond which a phone is refused, from the reference ops' own noise.

    ``repeats``: serial -> op key -> the fastest run of each repeat. Each phone's fastest time of an op is taken
    twice, over its odd and over its even repeats; half the variance of the log difference of the two, pooled over
    phones and ops with a robust scale (1.4826 x the median absolute difference, so that one disturbed repeat does
    not widen it), is the variance ``sigma**2`` of one such fastest time. It overstates the noise of the fastest
    time over all repeats, which :func:`phone_speeds` uses. A speed is a median over ``K`` ops of a ratio of two
    such times, so its standard error is about ``sigma * sqrt(2 / K)``. The tolerance is :data:`NOISE_SIGMAS`
    standard errors, so that noise alone refuses no phone, and never below :data:`TOLERANCE_FLOOR`, the accuracy
    band the predictor is scored in.
    """
    diffs = [math.log(min(v[::2]) / min(v[1::2])) for by_op in repeats.values() for v in by_op.values()
             if len(v) >= 2 and min(v) > 0]
    if not diffs:
        return TOLERANCE_FLOOR
    sigma = 1.4826 * statistics.median(abs(d) for d in diffs) / math.sqrt(2)
    n_ops = max(len(by_op) for by_op in repeats.values())
    return max(TOLERANCE_FLOOR, math.expm1(NOISE_SIGMAS * sigma * math.sqrt(2.0 / n_ops)))


def phone_speeds(repeats: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Serial -> speed relative to the farm (1.3: takes 30% longer), the median over the reference ops.

    A phone's time of an op is its fastest run over all repeats: contention, background work and throttling
    only ever add time, so the fastest run is the statistic they move least. The farm's time of an op is the
    lower median over phones: phones lose speed rather than gain it, so where two phones disagree the faster one
    is taken as the model's speed."""
    ops = sorted({k for by_op in repeats.values() for k in by_op})
    fastest = {s: {k: min(v) for k, v in by_op.items() if v and min(v) > 0} for s, by_op in repeats.items()}
    farm = {k: statistics.median_low([f[k] for f in fastest.values() if k in f]) for k in ops
            if any(k in f for f in fastest.values())}
    return {s: math.exp(statistics.median([math.log(f[k] / farm[k]) for k in f])) for s, f in fastest.items() if f}


def reference_ops(ops: Sequence[OpSig]) -> list[OpSig]:
    """The :data:`REFERENCE_OPS` ops of most multiply-adds: the longest runs, so the least noise relative to
    their time (a phone's fixed per-invoke overhead hides in a tiny op)."""
    return sorted(ops, key=lambda op: (-op.madds, op.key))[:REFERENCE_OPS]


def profile_farm(spec: DeviceSpec, serials: Sequence[str], space: SearchSpace,
                 resolutions: Sequence[int] | None = None, e2e_samples: int = 30, n_classes: int = 1000,
                 out: str | os.PathLike | None = None, force: bool = False, seed: int = 0,
                 tolerance: float | None = None) -> FarmResult:
    """Profile ``space`` on the phones ``serials`` (all of ``spec``'s model) into one table (module docstring).

    ``tolerance``: the relative speed difference beyond which a phone is refused (default: from the reference
    ops' noise, :func:`speed_tolerance`). Raises :class:`FarmError` when no phone is usable, or when every phone
    dropped out before the end (the table keeps everything measured; rerun to resume)."""
    import numpy as np

    if len(set(serials)) != len(serials):
        raise FarmError(f"--serial names a phone twice: {', '.join(serials)}")
    out = Path(out) if out else new_table_path(spec.name)
    refused: dict[str, str] = {}
    phones = _connect(spec, serials, refused)
    try:
        existing = LatencyTable.load(out) if out.exists() else None
        _check_identity(phones, existing, force, refused)
        if not phones:
            raise FarmError(f"no phone of the farm can measure {out}: " + "; ".join(f"{s} {why}"
                                                                                  for s, why in refused.items()))
        first = phones[0]
        table = open_table(out, spec, first.provenance, first.backend.statistic, n_classes, force)
        farm = table.provenance.get("farm", {})
        resolutions = list(resolutions or spec.resolutions or space.resolutions)
        base = {k: v for k, v in first.provenance.items() if k != "adb"}
        table.provenance = {**base, "statistic": first.backend.statistic, "space": space.name,
                            "widths": list(space.widths),
                            "resolutions": sorted(set(resolutions) | set(table.provenance.get("resolutions", [])))}
        farm = {"phones": dict(farm.get("phones", {})), "ops": dict(farm.get("ops", {})),
                "e2e": dict(farm.get("e2e", {}))}
        table.provenance["farm"] = farm
        for p in phones:
            farm["phones"].setdefault(p.serial, {}).update(p.provenance.get("adb", {}))
        ops = profile_ops(space, n_classes, resolutions)
        todo = [op for op in ops if op.key not in table.ops]
        archs = SearchSpace(resolutions=tuple(resolutions), widths=space.widths).sample(np.random.default_rng(seed),
                                                                                         e2e_samples)
        e2e_todo = [a for a in archs if a.to_string() not in table.e2e]
        lock = threading.Lock()
        references = reference_ops(space_ops(space, n_classes, resolutions))  # the space's: no classifier ladder
        tol = _check_speed(phones, references, table, out, lock, tolerance, refused) if (
            todo or e2e_todo) else (tolerance or TOLERANCE_FLOOR)
        if not phones:
            raise FarmError("no phone of the farm is left after the speed check: " +
                            "; ".join(f"{s} {why}" for s, why in refused.items()))
        batch = max(1, int(first.backend.op_batch_size))
        queue: deque[tuple[str, list[Any]]] = deque(
            [("op", todo[i:i + batch]) for i in range(0, len(todo), batch)] + [("arch", [a]) for a in e2e_todo])
        dropped: dict[str, str] = {}
        threads = [threading.Thread(target=_worker, args=(p, queue, table, out, lock, n_classes, dropped),
                                    name=f"natdeploy-farm-{p.serial}", daemon=True) for p in phones]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in phones:
            if p.serial not in dropped:
                farm["phones"][p.serial].update(p.backend.final_provenance().get("adb", {}))
        table.save(out)
        if queue:
            left_ops = sum(len(items) for kind, items in queue if kind == "op")
            raise FarmError(
                f"all {len(phones)} phones dropped out ({', '.join(dropped)}); {len(table.ops)} of {len(ops)} ops "
                f"and {len(table.e2e)} of {len(archs)} subnets are saved in {out} ({left_ops} ops left): reconnect "
                "a phone and rerun the same command to resume")
    finally:
        for p in phones:
            p.backend.close()
    model_path = fit_table(table, out, seed, spec.speed_elasticity)
    return FarmResult(out, model_path, len(ops), len(todo), len(table.e2e), {p.serial: p.measured for p in phones},
                      refused, dropped, tol)


def _connect(spec: DeviceSpec, serials: Sequence[str], refused: dict[str, str]) -> list[_Phone]:
    """A backend per reachable phone, described (connected, binary pushed) in parallel; the others refused."""
    found: dict[str, _Phone] = {}

    def describe(serial: str) -> None:
        backend = get_backend(spec.with_overrides(serial=serial))
        try:
            found[serial] = _Phone(serial, backend, backend.describe())
        except BackendError as exc:
            backend.close()
            refused[serial] = f"is unreachable ({str(exc).splitlines()[0]})"
            log.warning("refusing phone %s: %s", serial, refused[serial])

    if serials:
        describe(serials[0])  # first alone: it makes the ADB key pair that the other links then load
    threads = [threading.Thread(target=describe, args=(s,), daemon=True) for s in serials[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [found[s] for s in serials if s in found]


def _check_identity(phones: list[_Phone], table: LatencyTable | None, force: bool, refused: dict[str, str]) -> None:
    """Refuse (remove and name) the phones whose measuring conditions differ from the table's, or for a new
    table from the farm's majority (the first phone's on a tie)."""
    if table is not None and not force:
        reference, whose = table.provenance, "the table"
    else:
        keys = [tuple(repr(p.provenance.get(k)) for k in COMPAT_FIELDS) for p in phones]
        top = Counter(keys).most_common(1)[0][0] if keys else None
        reference, whose = next((p.provenance for p, k in zip(phones, keys) if k == top), {}), "the farm"
    for p in list(phones):
        diffs = [f"{k}: {whose} has {reference.get(k)!r}, this phone {p.provenance.get(k)!r}" for k in COMPAT_FIELDS
                 if k in reference and reference.get(k) != p.provenance.get(k)]
        if diffs:
            refused[p.serial] = "differs (" + "; ".join(diffs) + ")"
            log.warning("refusing phone %s: it %s", p.serial, refused[p.serial])
            phones.remove(p)
            p.backend.close()


def _check_speed(phones: list[_Phone], refs: list[OpSig], table: LatencyTable, out: Path, lock: threading.Lock,
                 tolerance: float | None, refused: dict[str, str]) -> float:
    """Measure the reference ops on each phone that has no stored reference timings, then refuse (remove and
    name) the phones whose speed is off by more than the tolerance; returns the tolerance used."""
    stored = table.provenance["farm"]["phones"]
    failed: dict[str, str] = {}

    todo = [p for p in phones if set(stored.get(p.serial, {}).get("reference_ms", {})) != {op.key for op in refs}]
    timings = {p.serial: {op.key: [] for op in refs} for p in todo}

    def rounds(n: int, warm_up: bool = False) -> None:
        # Round-robin, one phone at a time: every phone's repeats are spread over the same stretch of time, and the
        # driving computer converts and talks to one phone at a time. A warm-up round (files cached, clocks
        # raised) is dropped.
        for rep in range(n + warm_up):
            for p in todo:
                if p.serial in failed:
                    continue
                try:
                    for op, m in _measured_ops(p.backend, refs):
                        if rep or not warm_up:
                            timings[p.serial][op.key].append(m.min_ms if m.min_ms else m.value(table.statistic))
                except BackendError as exc:
                    failed[p.serial] = f"failed its reference ops ({str(exc).splitlines()[0]})"

    def repeats() -> dict[str, dict[str, list[float]]]:
        stored_now = {s: e["reference_ms"] for s, e in stored.items() if e.get("reference_ms")}
        return {s: r for s, r in {**stored_now, **timings}.items() if s not in failed}

    rounds(REFERENCE_REPEATS, warm_up=True)
    done = REFERENCE_REPEATS
    while todo and tolerance is None and done < MAX_REFERENCE_REPEATS:
        wide = speed_tolerance(repeats())
        if wide <= WIDE_TOLERANCE:
            break
        more = min(REFERENCE_REPEATS, MAX_REFERENCE_REPEATS - done)
        log.info("the reference ops repeat unevenly (a tolerance of %.0f%%): measuring %d more rounds", 100 * wide,
                 more)
        rounds(more)
        done += more
    with lock:
        for p in todo:
            if p.serial not in failed:
                stored[p.serial]["reference_ms"] = timings[p.serial]
        table.save(out)
    measured = repeats()
    tol = tolerance if tolerance is not None else speed_tolerance(measured)
    if tolerance is None and tol > WIDE_TOLERANCE:
        log.warning("the reference ops repeat too unevenly to tell phones apart finer than %.0f%%: a slower phone "
                    "could join the farm; profile on quieter phones", 100 * tol)
    speeds = phone_speeds(measured)
    for s, speed in speeds.items():
        stored[s]["speed"] = round(speed, 4)
    table.provenance["farm"]["tolerance"] = round(tol, 4)
    for p in list(phones):
        why = failed.get(p.serial)
        speed = speeds.get(p.serial)
        if why is None and speed is not None and abs(math.log(speed)) > math.log1p(tol):
            why = (f"runs at {speed:.2f}x the farm's time on the reference ops, beyond the tolerance of "
                   f"{100 * tol:.0f}%")
        if why:
            refused[p.serial] = why
            log.warning("refusing phone %s: it %s", p.serial, why)
            phones.remove(p)
            p.backend.close()
    table.save(out)
    return tol


def _worker(phone: _Phone, queue: deque[tuple[str, list[Any]]], table: LatencyTable, out: Path,
            lock: threading.Lock, n_classes: int, dropped: dict[str, str]) -> None:
    """Take batches from the shared queue and measure them on one phone until the queue is empty or the phone
    fails; a failed batch's unsaved items go back to the front of the queue for the other phones."""
    farm = table.provenance["farm"]
    while True:
        with lock:
            if not queue:
                return
            kind, items = queue.popleft()
        done: set[str] = set()
        try:
            if kind == "op":
                for op, m in _measured_ops(phone.backend, items):
                    with lock:
                        table.add_op(op, m)
                        farm["ops"][op.key] = phone.serial
                        table.save(out)
                    done.add(op.key)
                    phone.measured += 1
            else:
                for arch, m in _measured_archs(phone.backend, items, n_classes):
                    with lock:
                        table.add_e2e(arch, m)
                        farm["e2e"][arch.to_string()] = phone.serial
                        table.save(out)
                    done.add(arch.to_string())
                    phone.measured += 1
        except Exception as exc:  # noqa: BLE001 - any failure ends this phone's part, never the others'
            rest = [x for x in items if (x.key if isinstance(x, OpSig) else x.to_string()) not in done]
            with lock:
                if rest:
                    queue.appendleft((kind, rest))
                dropped[phone.serial] = str(exc).splitlines()[0]
            log.warning("phone %s dropped out (%s); its %d unsaved measurements go to the other phones",
                        phone.serial, dropped[phone.serial], len(rest))
            return
