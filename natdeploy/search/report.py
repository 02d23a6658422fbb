"""Search outputs: budget checks, the Pareto front, the best Arch within the budgets, the plot, the summary.

What goes into the files is computed here; the run folder (:mod:`natdeploy.run_folder`) writes them.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from natdeploy.fileio import atomic_write_bytes
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.run_folder import ArchiveEntry, RunFolder, best_within
from natdeploy.search.nat import SearchError
from natdeploy.space import SearchSpace

log = logging.getLogger(__name__)
__all__ = ["latency_range", "check_budgets", "pareto_front", "best_within", "write_outputs", "pareto_png",
           "plot_pareto", "summary_table"]


def latency_range(predictor: LatencyPredictor, space: SearchSpace, n_classes: int, n_samples: int = 4000,
                  seed: int = 0) -> tuple[float, float]:
    """(fastest, slowest) predicted latency over the space: its extremes plus a random sample."""
    archs = [space.smallest(w) for w in space.widths] + [space.largest(w) for w in space.widths]
    genomes = np.stack([space.encode(a) for a in archs + space.sample(np.random.default_rng(seed), n_samples)])
    lat = predictor.predict_genomes(space, genomes, n_classes)
    return float(lat.min()), float(lat.max())


def check_budgets(predictors: dict[str, LatencyPredictor], budgets: dict[str, float], space: SearchSpace,
                  n_classes: int) -> list[str]:
    """Refuse budgets no subnet meets (naming the fastest possible); note budgets that constrain nothing."""
    notes = []
    for device, budget in budgets.items():
        fastest, slowest = latency_range(predictors[device], space, n_classes)
        if budget < fastest:
            raise SearchError(f"--max-latency {budget:g} ms on {device} is below the fastest subnet of the space "
                              f"({fastest:.3f} ms predicted); raise the budget to at least {fastest:.3f} ms")
        if budget >= slowest:
            notes.append(f"the {budget:g} ms budget on {device} is above the slowest subnet ({slowest:.3f} ms): "
                         "the constraint is inactive")
    return notes


def _objective_matrix(archive: Sequence[ArchiveEntry], devices: Sequence[str], objectives: Sequence[str]) -> np.ndarray:
    cols = []
    for obj in objectives:
        if obj == "error":
            cols.append([1 - e.accuracy for e in archive])
        elif obj == "latency":
            cols += [[e.latency_ms[d] for e in archive] for d in devices]
        else:
            cols.append([getattr(e, obj) for e in archive])
    return np.array(cols, dtype=float).T


def pareto_front(archive: Sequence[ArchiveEntry], devices: Sequence[str], objectives: Sequence[str]) -> list[ArchiveEntry]:
    """The non-dominated archive members under the run's objectives (accuracy included)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if not archive:
        return []
    objectives = list(objectives) if "error" in objectives else ["error", *objectives]
    front = NonDominatedSorting().do(_objective_matrix(archive, devices, objectives), only_non_dominated_front=True)
    return sorted((archive[i] for i in front), key=lambda e: -e.accuracy)


def best_record(archive: Sequence[ArchiveEntry], budgets: dict[str, float], extra: dict | None = None) -> dict:
    """What best.json holds: the budgets, the most accurate entry within them, and ``extra``."""
    best = best_within(archive, budgets)
    return {"budgets_ms": budgets, "best": asdict(best) if best else None, **(extra or {})}


def write_outputs(run_dir: Path, archive: Sequence[ArchiveEntry], devices: Sequence[str], budgets: dict[str, float],
                  objectives: Sequence[str], extra: dict | None = None) -> dict:
    """pareto.json, best.json and pareto.png in ``run_dir``; returns the best entry's record."""
    front = pareto_front(archive, devices, objectives)
    record = best_record(archive, budgets, extra)
    png = pareto_png(archive, front, devices[0], budgets.get(devices[0])) if devices else None
    RunFolder(run_dir).write_outputs(front, record, png)
    return record


def plot_pareto(path: Path, archive: Sequence[ArchiveEntry], front: Sequence[ArchiveEntry], device: str,
                budget: float | None) -> None:
    """Write :func:`pareto_png` to ``path`` atomically."""
    atomic_write_bytes(path, pareto_png(archive, front, device, budget))


def pareto_png(archive: Sequence[ArchiveEntry], front: Sequence[ArchiveEntry], device: str,
               budget: float | None) -> bytes:
    """Accuracy against predicted latency, one colour per iteration, the front and the budget line, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    its = np.array([e.iteration for e in archive])
    sc = ax.scatter([e.latency_ms[device] for e in archive], [100 * e.accuracy for e in archive], c=its,
                    cmap="viridis", s=18, alpha=0.8)
    fig.colorbar(sc, ax=ax, label="iteration", ticks=sorted(set(its.tolist())))
    pts = sorted((e.latency_ms[device], 100 * e.accuracy) for e in front)
    if pts:
        ax.step(*zip(*pts), where="post", color="crimson", lw=1.2, label="Pareto front")
    if budget is not None:
        ax.axvline(budget, color="k", ls="--", lw=1, label=f"budget {budget:g} ms")
    ax.set_xlabel(f"predicted latency on {device} (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summary_table(front: Sequence[ArchiveEntry], devices: Sequence[str], limit: int = 12) -> str:
    """A plain-text table of the front for the terminal."""
    head = f"{'accuracy':>8}  " + "  ".join(f"{d[:12] + ' ms':>15}" for d in devices) + f"  {'MAdds':>8}  arch"
    rows = [head, "-" * len(head)]
    for e in front[:limit]:
        lat = "  ".join(f"{e.latency_ms[d]:>15.3f}" for d in devices)
        rows.append(f"{100 * e.accuracy:>7.2f}%  {lat}  {e.madds / 1e6:>7.1f}M  {e.arch}")
    return "\n".join(rows)
