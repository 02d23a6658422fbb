"""Profile a device: measure every op of a search space, then random whole subnets; checkpoint as it goes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from natdeploy.devices import DeviceSpec
from natdeploy.latency.backends import E2E_BATCH, Backend, BackendError, get_backend
from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import OpSig, profile_ops, space_ops
from natdeploy.latency.predictor import fit_table
from natdeploy.latency.speed import implied_anchor_ms
from natdeploy.latency.store import new_table_path, predictor_for
from natdeploy.latency.table import LatencyTable, TableError
from natdeploy.settings import progress_disable
from natdeploy.space import Arch, SearchSpace

__all__ = ["ProfileResult", "profile_device", "predictor_for"]

log = logging.getLogger(__name__)
REFERENCE_EVERY = 50  # re-measure a reference op this often to detect drift (thermal, other load)
DRIFT_LIMIT = 0.05


@dataclass
class ProfileResult:
    table_path: Path
    model_path: Path
    n_ops: int
    n_ops_measured_now: int
    n_e2e: int
    drift: float


def profile_device(spec: DeviceSpec, space: SearchSpace, resolutions: Sequence[int] | None = None,
                   e2e_samples: int = 30, n_classes: int = 1000, out: str | os.PathLike | None = None,
                   force: bool = False, seed: int = 0, quiet: bool = False,
                   backend: Backend | None = None) -> ProfileResult:
    """Measure the ops of ``space`` (at ``resolutions``) and ``e2e_samples`` random subnets on ``spec``.

    Every measurement is saved to the table at once (atomic write), so a killed run resumes on rerun. A table
    made with another runtime version, thread count or host is refused unless ``force``. A ``backend`` passed in
    stays open; one made here is closed at the end.
    """
    if backend is not None:
        return _profile(spec, backend, space, resolutions, e2e_samples, n_classes, out, force, seed, quiet)
    with get_backend(spec) as made:
        return _profile(spec, made, space, resolutions, e2e_samples, n_classes, out, force, seed, quiet)


def _profile(spec: DeviceSpec, backend: Backend, space: SearchSpace, resolutions: Sequence[int] | None,
             e2e_samples: int, n_classes: int, out: str | os.PathLike | None, force: bool, seed: int,
             quiet: bool) -> ProfileResult:
    from tqdm.auto import tqdm

    out = Path(out) if out else new_table_path(spec.name)
    provenance = backend.describe()
    statistic = backend.statistic
    table = open_table(out, spec, provenance, statistic, n_classes, force)
    resolutions = list(resolutions or spec.resolutions or space.resolutions)
    # ``date`` is this run's; ``first_date`` the run's that began the table (a resume keeps it)
    first_date = table.provenance.get("first_date") or table.provenance.get("date") or provenance.get("date")
    table.provenance = {**provenance, "first_date": first_date, "statistic": statistic, "space": space.name,
                        "widths": list(space.widths),
                        "resolutions": sorted(set(resolutions) | set(table.provenance.get("resolutions", [])))}
    ops = profile_ops(space, n_classes, resolutions)
    todo = [op for op in ops if op.key not in table.ops]
    in_space = space_ops(space, n_classes, resolutions)
    reference = in_space[len(in_space) // 2]
    rng = np.random.default_rng(seed)
    sub_space = SearchSpace(resolutions=tuple(resolutions), widths=space.widths)
    archs = [a for a in sub_space.sample(rng, e2e_samples)]
    e2e_todo = [a for a in archs if a.to_string() not in table.e2e]
    bar = tqdm(total=len(todo) + len(e2e_todo), desc=f"profile {spec.name}", unit="meas",
               disable=progress_disable(quiet))
    batch = max(1, int(backend.op_batch_size))
    chunks = [todo[start:start + batch] for start in range(0, len(todo), batch)]
    try:
        if chunks:
            backend.prefetch_ops(chunks[0])  # prepared while the reference op runs
        if todo:
            _measure_reference(backend, table, reference, out)
        since_reference = 0
        for k, chunk in enumerate(chunks):
            if k + 1 < len(chunks):
                backend.prefetch_ops(chunks[k + 1])  # the next batch is prepared while this one runs on the device
            for op, m in _measured_ops(backend, chunk):
                table.add_op(op, m)
                table.save(out)
                bar.update()
                since_reference += 1
            if since_reference >= REFERENCE_EVERY:  # between batches: a batch holds the device's link
                _measure_reference(backend, table, reference, out)
                since_reference = 0
        if todo:
            _measure_reference(backend, table, reference, out)
        e2e_batch = E2E_BATCH if backend.interleaves else 1
        for start in range(0, len(e2e_todo), e2e_batch):
            batch_archs = e2e_todo[start:start + e2e_batch]
            more = f" +{len(batch_archs) - 1}" if len(batch_archs) > 1 else ""
            bar.set_postfix_str(f"subnet {batch_archs[0]}{more}")
            for arch, m in _measured_archs(backend, batch_archs, n_classes):
                table.add_e2e(arch, m)
                table.save(out)
                bar.update()
    finally:
        bar.close()
    final = backend.final_provenance()
    if final:
        table.provenance.update(final)
        table.save(out)
    if table.drift > DRIFT_LIMIT:
        log.warning("reference op %s drifted by %.1f%% during profiling%s (limit %.0f%%): the machine was busy or "
                    "throttled; consider re-profiling", reference.key, 100 * table.drift,
                    " relative to the anchor" if len(table.reference_anchor) == len(table.reference) else "",
                    100 * DRIFT_LIMIT)
    model_path = fit_table(table, out, seed, spec.speed_elasticity)
    return ProfileResult(out, model_path, len(ops), len(todo), len(table.e2e), table.drift)


def open_table(out: Path, spec: DeviceSpec, provenance: dict[str, Any], statistic: str, n_classes: int,
               force: bool) -> LatencyTable:
    """The table at ``out`` to resume (checked against the measuring conditions ``provenance``), else a new one."""
    if out.exists():
        table = LatencyTable.load(out)
        mismatch = table.precision_mismatch(provenance.get("precision"))
        if mismatch:  # not even with --force: an int8 op's cost is not an fp32 op's
            raise TableError(f"{out}: {mismatch}, and {spec.name} measures {spec.precision} models; a table never "
                             "mixes precisions: use --out for a new table")
        why = table.incompatibility(provenance)
        if why and not force:
            raise TableError(f"{out} was measured under different conditions ({why}); mixing them would corrupt "
                             "the table. Use --out for a new table, or --force to mix anyway")
        if table.n_classes != n_classes:
            raise TableError(f"{out} was profiled for {table.n_classes} classes, not {n_classes}; use --out")
        if table.statistic != statistic:  # not even with --force: the table could not read the new measurements
            raise TableError(f"{out} uses the {table.statistic!r} statistic, but this backend measures "
                             f"{statistic!r}; use --out for a new table")
        log.info("resuming %s: %d ops and %d subnets already measured", out, len(table.ops), len(table.e2e))
    else:
        table = LatencyTable(device=spec.name, n_classes=n_classes, statistic=statistic)
    return table


def _measured_ops(backend: Backend, ops: Sequence[OpSig]) -> Iterator[tuple[OpSig, Measurement]]:
    """Each op with its measurement: in one batch where the backend can, and one at a time (with retries) for
    whatever the batch did not deliver."""
    done: set[str] = set()
    if len(ops) > 1:
        try:
            for op, m in backend.measure_ops(ops):
                done.add(op.key)
                yield op, m
        except (BackendError, RuntimeError, OSError, ValueError) as exc:
            pending = next((op.key for op in ops if op.key not in done), "a batch of ops")
            if not _retryable(exc):
                raise BackendError(f"measuring {pending} failed: {exc}\nEverything measured so far is saved: "
                                   "fix the cause and rerun the same command to resume") from exc
            log.warning("a batch of %d ops failed at %s (%s); measuring the rest one at a time", len(ops), pending,
                        exc)
    for op in ops:
        if op.key not in done:
            yield op, _with_retries(lambda: backend.measure_op(op), op.key)


def _measured_archs(backend: Backend, archs: Sequence[Arch], n_classes: int) -> list[tuple[Arch, Measurement]]:
    """Whole subnets with their measurements: as one interleaved batch, else (or after a failure) one at a time."""
    if len(archs) > 1:
        try:
            return list(zip(archs, backend.measure_archs(archs, n_classes)))
        except (BackendError, RuntimeError, OSError, ValueError) as exc:
            log.warning("a batch of %d subnets failed (%s); measuring them one at a time", len(archs), exc)
    return [(a, _with_retries(lambda: backend.measure_arch(a, n_classes), f"subnet {a}")) for a in archs]


def _retryable(exc: BaseException) -> bool:
    """False for failures a backend marks as final (``retryable = False``): trying again at once cannot help."""
    return getattr(exc, "retryable", True) is not False


def _with_retries(measure: Callable[[], Measurement], what: str, attempts: int = 3) -> Measurement:
    """Run a measurement, retrying failures; a measurement that keeps failing raises, naming what it measured."""
    for attempt in range(1, attempts + 1):
        try:
            return measure()
        except (BackendError, RuntimeError, OSError, ValueError) as exc:
            if not _retryable(exc):
                raise BackendError(f"measuring {what} failed: {exc}\nEverything measured so far is saved: fix the "
                                   "cause and rerun the same command to resume") from exc
            if attempt == attempts:
                raise BackendError(f"measuring {what} failed {attempts} times (last: {exc}); everything measured "
                                   "so far is saved: fix the cause and rerun the same command to resume") from exc
            log.warning("measuring %s failed (%s); retrying (%d/%d)", what, exc, attempt, attempts - 1)
    raise AssertionError("unreachable")


def _measure_reference(backend: Backend, table: LatencyTable, op: OpSig, out: Path) -> None:
    if backend.interleaves and backend.spec.anchor:  # with the anchor beside it, as the table's ops are timed
        m = _with_retries(lambda: backend.measure_ops([op])[0][1], op.key)
        if len(table.reference_anchor) == len(table.reference):
            table.reference_anchor.append(implied_anchor_ms(m, table.statistic))
    else:
        m = _with_retries(lambda: backend.measure_op(op), op.key)
    table.reference.append(m.value(table.statistic))
    table.save(out)
