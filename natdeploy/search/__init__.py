"""NAT search: surrogates, the pymoo problem, the public search engine (:func:`search_front`), the NAT loop, and
its outputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from natdeploy.data import ImageData
from natdeploy.distributed import Runtime, barrier, is_main
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search.engine import (AccuracyModel, OFAAccuracyPredictor, SearchEngineError, SearchResult,
                                     accuracy_model, genomes_to_archs, load_callable, search_front)
from natdeploy.search.nat import ArchiveEntry, NATConfig, NATSearch, SearchError
from natdeploy.search.html_report import write_report
from natdeploy.search.report import best_record, check_budgets, pareto_front, summary_table, write_outputs
from natdeploy.space import SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet, load_supernet
from natdeploy.supernet.hub import resolve_supernet

log = logging.getLogger(__name__)

__all__ = ["run_search", "NATConfig", "NATSearch", "ArchiveEntry", "SearchError", "search_front", "SearchResult",
           "SearchEngineError", "AccuracyModel", "accuracy_model", "load_callable", "genomes_to_archs",
           "OFAAccuracyPredictor"]


def initial_supernet(source: str, n_classes: int, width: float, seed: int,
                     runtime: Runtime | None = None) -> OFAMobileNetV3Supernet:
    """``scratch`` (seeded random initialisation), a checkpoint path (natdeploy's or OFA's), or one of OFA's
    published supernets by name (fetched into the cache on first use)."""
    if source == "scratch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return OFAMobileNetV3Supernet(n_classes=n_classes, width=width)
    if is_main(runtime):  # a named supernet is fetched once, by rank 0, before the others read the cache
        resolve_supernet(source)
    barrier(runtime)
    return load_supernet(resolve_supernet(source), n_classes=n_classes)


def run_search(run_dir: str | Path, data: ImageData, predictors: dict[str, LatencyPredictor],
               budgets: dict[str, float], space: SearchSpace, config: NATConfig, supernet: str = "scratch",
               resume: bool = False, on_event: Callable[[str, dict], None] | None = None,
               extend: bool = False, runtime: Runtime | None = None,
               checkpoint_every_s: float | None = 600.0) -> dict:
    """Run NAT end to end (or continue a run, with ``extend`` to ``config.iterations``) and write its outputs;
    returns the contents of best.json.

    ``runtime`` (:func:`natdeploy.distributed.init_runtime`) puts the run on an accelerator, a precision and the
    processes of a torchrun job; only its rank 0 writes. ``checkpoint_every_s`` bounds what a kill inside a long
    phase loses (the training state is also saved every epoch)."""
    run_dir = Path(run_dir)
    unknown = sorted(set(budgets) - set(predictors))
    if unknown:
        raise SearchError(f"budgets given for {unknown}, which are not searched devices {sorted(predictors)}")
    if resume:
        search = NATSearch.resume(run_dir, data, predictors, iterations=config.iterations if extend else None,
                                  runtime=runtime, checkpoint_every_s=checkpoint_every_s)
        notes: list[str] = []
    else:
        net = initial_supernet(supernet, data.n_classes, space.widths[0], config.seed, runtime)
        space = SearchSpace(resolutions=space.resolutions, widths=(net.width,), name=space.name)
        notes = check_budgets(predictors, budgets, space, data.n_classes)
        for note in notes:
            log.warning(note)
        search = NATSearch.create(run_dir, config, space, data, predictors, budgets, net, supernet, runtime,
                                  checkpoint_every_s)
    archive = search.run(on_event=on_event)
    state = search.state
    extra = {"devices": state.devices, "objectives": state.config["objectives"], "data": state.data,
             "n_classes": state.n_classes, "space": state.space, "kendall_tau": state.tau_history,
             "timings": state.timings, "notes": notes}
    if is_main(runtime):
        record = write_outputs(run_dir, archive, state.devices, state.budgets, state.config["objectives"], extra)
        write_report(run_dir, tables={d: p.table for d, p in predictors.items()})
    else:
        record = best_record(archive, state.budgets, extra)
    barrier(runtime)
    record["summary"] = summary_table(pareto_front(archive, state.devices, state.config["objectives"]), state.devices)
    return record
