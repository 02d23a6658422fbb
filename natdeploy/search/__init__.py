"""NAT search: surrogates, the pymoo problem, the public search engine (:func:`search_front`), the NAT loop, and
its outputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from natdeploy.data import ImageData
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search.engine import (AccuracyModel, OFAAccuracyPredictor, SearchEngineError, SearchResult,
                                     accuracy_model, genomes_to_archs, load_callable, search_front)
from natdeploy.search.nat import ArchiveEntry, NATConfig, NATSearch, SearchError
from natdeploy.search.report import check_budgets, pareto_front, summary_table, write_outputs
from natdeploy.space import SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet, load_supernet

log = logging.getLogger(__name__)

__all__ = ["run_search", "NATConfig", "NATSearch", "ArchiveEntry", "SearchError", "search_front", "SearchResult",
           "SearchEngineError", "AccuracyModel", "accuracy_model", "load_callable", "genomes_to_archs",
           "OFAAccuracyPredictor"]


def initial_supernet(source: str, n_classes: int, width: float, seed: int) -> OFAMobileNetV3Supernet:
    """``scratch`` (seeded random initialisation) or a checkpoint path (natdeploy's or OFA's)."""
    if source == "scratch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return OFAMobileNetV3Supernet(n_classes=n_classes, width=width)
    net = load_supernet(source, n_classes=n_classes)
    return net


def run_search(run_dir: str | Path, data: ImageData, predictors: dict[str, LatencyPredictor],
               budgets: dict[str, float], space: SearchSpace, config: NATConfig, supernet: str = "scratch",
               resume: bool = False, on_event: Callable[[str, dict], None] | None = None,
               extend: bool = False) -> dict:
    """Run NAT end to end (or continue a run, with ``extend`` to ``config.iterations``) and write its outputs;
    returns the contents of best.json."""
    run_dir = Path(run_dir)
    unknown = sorted(set(budgets) - set(predictors))
    if unknown:
        raise SearchError(f"budgets given for {unknown}, which are not searched devices {sorted(predictors)}")
    if resume:
        search = NATSearch.resume(run_dir, data, predictors, iterations=config.iterations if extend else None)
        notes: list[str] = []
    else:
        net = initial_supernet(supernet, data.n_classes, space.widths[0], config.seed)
        space = SearchSpace(resolutions=space.resolutions, widths=(net.width,), name=space.name)
        notes = check_budgets(predictors, budgets, space, data.n_classes)
        for note in notes:
            log.warning(note)
        search = NATSearch.create(run_dir, config, space, data, predictors, budgets, net, supernet)
    archive = search.run(on_event=on_event)
    state = search.state
    extra = {"devices": state.devices, "objectives": state.config["objectives"], "data": state.data,
             "n_classes": state.n_classes, "space": state.space, "kendall_tau": state.tau_history,
             "timings": state.timings, "notes": notes}
    record = write_outputs(run_dir, archive, state.devices, state.budgets, state.config["objectives"], extra)
    record["summary"] = summary_table(pareto_front(archive, state.devices, state.config["objectives"]), state.devices)
    return record
