"""NAT search: surrogates, the pymoo problem, the public search engine (:func:`search_front`), the NAT loop, and
its outputs."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from natdeploy.data import ImageData
from natdeploy.distributed import Runtime, barrier, is_main
from natdeploy.errors import NatDeployError
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search.engine import (AccuracyModel, OFAAccuracyPredictor, SearchEngineError, SearchResult,
                                     accuracy_model, genomes_to_archs, load_callable, search_front)
from natdeploy.search.nat import ArchiveEntry, NATConfig, NATSearch, SearchError, supernets_by_width
from natdeploy.search.html_report import write_report
from natdeploy.run_folder import RunFolder
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


# The flag that sets each NATConfig field (the CLI's names, for messages); other fields come from --settings.
CONFIG_FLAGS = {"iterations": "--iterations", "epochs_per_iter": "--epochs-per-iter", "warmup_epochs": "--warmup-epochs",
                "initial_archs": "--initial-archs", "population": "--population", "generations": "--generations",
                "candidates_per_iter": "--candidates", "surrogate": "--surrogate", "batch_size": "--batch-size",
                "objectives": "--objectives", "seed": "--seed"}
_AT_LEAST = {"iterations": 0, "initial_archs": 2, "population": 2, "generations": 1, "candidates_per_iter": 1,
             "top_archs": 1, "subnets_per_step": 1, "epochs_per_iter": 1, "warmup_epochs": 0, "batch_size": 1,
             "bn_batches": 1}
COVERAGE_SAMPLE = 200  # random subnets over which a search checks how much of its latency a table measured


def check_inputs(data: ImageData, budgets: dict[str, float], config: NATConfig) -> None:
    """Refuse data, budgets and settings that cannot give a meaningful search, before anything is written."""
    for name, low in _AT_LEAST.items():
        value = getattr(config, name)
        if not isinstance(value, int) or value < low:
            raise SearchError(f"{CONFIG_FLAGS.get(name, name)} must be an integer of at least {low}, got {value!r}")
    bad = {d: b for d, b in budgets.items() if not (b > 0 and math.isfinite(b))}
    if bad:
        raise SearchError(f"budgets must be positive, finite milliseconds, got {bad}")
    if data.n_classes < 2:
        raise SearchError(f"the data has {data.n_classes} class ({', '.join(data.classes)}); classification needs "
                          "at least 2 (one sub-folder per class)")
    per_class = np.bincount(np.asarray(data.train_y.cpu()), minlength=data.n_classes)
    empty = [c for c, n in zip(data.classes, per_class) if n == 0]
    if empty:
        raise SearchError(f"no training images of class(es) {empty[:5]} after the split; give more images per class "
                          "or a separate --val folder")
    if len(data.val_y) == 0:
        raise SearchError("the validation split is empty; give more images per class or a --val folder")


def supernet_sources(supernet: str | Sequence[str]) -> str | list[str]:
    """What a run records of where its supernets start: one source as a string, several as a list (one per
    width); ``scratch`` may not be combined with checkpoints, and no source may repeat."""
    sources = [supernet] if isinstance(supernet, (str, Path)) else list(supernet)
    sources = [str(v) for v in sources]
    if not sources:
        raise SearchError("give at least one --supernet, or 'scratch'")
    if len(sources) > 1 and "scratch" in sources:
        raise SearchError("--supernet scratch cannot be combined with other --supernet checkpoints; for several "
                          "widths from scratch use --width, e.g. --width 1.0 1.2")
    if len(set(sources)) < len(sources):
        twice = next(v for v in sources if sources.count(v) > 1)
        raise SearchError(f"--supernet {twice} is given twice; give one supernet per width")
    return sources[0] if len(sources) == 1 else sources


def scratch_widths(space: SearchSpace, widths: Sequence[float] | None) -> tuple[float, ...]:
    """The widths a from-scratch run trains: ``widths`` (each in ``space``, none twice), else the space's first."""
    if not widths:
        return (space.widths[0],)
    asked = [float(w) for w in widths]
    if len(set(asked)) < len(asked):
        raise SearchError(f"--width {' '.join(f'{w:g}' for w in asked)} names a width twice")
    outside = [w for w in asked if w not in space.widths]
    if outside:
        raise SearchError(f"--width {outside[0]:g} is not in the search space's widths {list(space.widths)}")
    return tuple(sorted(asked))


def _resume_changes(run_dir: Path, budgets: dict[str, float], space: SearchSpace, config: NATConfig,
                    supernet: str | Sequence[str], extend: bool,
                    widths: Sequence[float] | None = None) -> dict[str, float] | None:
    """Compare what a resume asks for with what the run recorded: refuse a change of settings, space or supernet
    (naming the flag); return the new budgets where only those changed (None: the same)."""
    folder = RunFolder(run_dir)
    if not folder.has_state():
        raise SearchError(f"{run_dir} holds no search to resume (no {folder.STATE}); drop --resume to start it")
    try:
        state = folder.read_state()
    except NatDeployError as exc:
        raise SearchError(str(exc)) from None
    recorded = NATConfig.from_record(state.config, str(folder.state_path)).to_record()
    asked = config.to_record()
    changed = [k for k in asked if k in recorded and asked[k] != recorded[k] and not (k == "iterations" and extend)]
    if changed:
        flags = sorted({CONFIG_FLAGS.get(k, "--settings") for k in changed})
        detail = ", ".join(f"{k} {recorded[k]!r} -> {asked[k]!r}" for k in changed[:4])
        raise SearchError(f"--resume with changed {' '.join(flags)} ({detail}); {run_dir} was searched with other "
                          "settings: resume with the original flags, or start a new run (--name)")
    asked_source = supernet_sources(supernet)
    if state.supernet_source != asked_source:
        def flags(source: str | list[str]) -> str:
            return " ".join(f"--supernet {v}" for v in ([source] if isinstance(source, str) else source))

        raise SearchError(f"--resume with changed --supernet ({state.supernet_source} -> {asked_source}); resume "
                          f"with {flags(state.supernet_source)}, or start a new run (--name)")
    asked_widths = list(scratch_widths(space, widths)) if asked_source == "scratch" else state.widths
    if asked_widths != state.widths:
        raise SearchError(f"--resume with changed --width ({' '.join(f'{w:g}' for w in state.widths)} -> "
                          f"{' '.join(f'{w:g}' for w in asked_widths)}); resume with --width "
                          f"{' '.join(f'{w:g}' for w in state.widths)}, or start a new run (--name)")
    if list(state.space["resolutions"]) != list(space.resolutions) or state.space.get("name") != space.name:
        raise SearchError(f"--resume with changed --space/--resolutions ({state.space.get('name')} "
                          f"{state.space['resolutions']} -> {space.name} {list(space.resolutions)}); resume with the "
                          "original flags, or start a new run (--name)")
    recorded_budgets = {d: float(b) for d, b in state.budgets.items()}
    return dict(budgets) if dict(budgets) != recorded_budgets else None


def coverage_notes(predictors: dict[str, LatencyPredictor], space: SearchSpace, n_classes: int,
                   seed: int = 0) -> list[str]:
    """One warning per device whose table leaves much of the space's latency to extrapolation (over a sample)."""
    archs = [space.smallest(), space.largest()] + space.sample(np.random.default_rng(seed), COVERAGE_SAMPLE)
    notes = []
    for device, predictor in predictors.items():
        warning = predictor.coverage_warning(archs, n_classes)
        if warning:
            notes.append(f"{device}: {warning}")
    return notes


def run_search(run_dir: str | Path, data: ImageData, predictors: dict[str, LatencyPredictor],
               budgets: dict[str, float], space: SearchSpace, config: NATConfig,
               supernet: str | Sequence[str] = "scratch", resume: bool = False,
               on_event: Callable[[str, dict], None] | None = None, extend: bool = False,
               runtime: Runtime | None = None, checkpoint_every_s: float | None = 600.0,
               widths: Sequence[float] | None = None, tensorboard: bool = False) -> dict:
    """Run NAT end to end (or continue a run, with ``extend`` to ``config.iterations``) and write its outputs;
    returns the contents of best.json.

    ``supernet``: ``scratch``, or one checkpoint (path or OFA name) per width to search (NAT's w1.0 and w1.2
    supernets, say). From scratch, ``widths`` names the widths to train (default: the space's first); every
    Arch is evaluated and adapted on the supernet of its width.

    ``runtime`` (:func:`natdeploy.distributed.init_runtime`) puts the run on an accelerator, a precision and the
    processes of a torchrun job; only its rank 0 writes. ``checkpoint_every_s`` bounds what a kill inside a long
    phase loses (the training state is also saved every epoch). ``tensorboard`` also writes metrics.jsonl's
    records as TensorBoard event files in ``run_dir/tensorboard`` (rank 0; needs the tensorboard package)."""
    run_dir = Path(run_dir)
    unknown = sorted(set(budgets) - set(predictors))
    if unknown:
        raise SearchError(f"budgets given for {unknown}, which are not searched devices {sorted(predictors)}")
    check_inputs(data, budgets, config)
    sources = supernet_sources(supernet)
    if sources != "scratch" and widths:
        raise SearchError("--width applies from scratch; each --supernet checkpoint has its own width")
    if tensorboard:
        from natdeploy.tensorboard_log import require_tensorboard

        require_tensorboard()
    if resume:
        new_budgets = _resume_changes(run_dir, budgets, space, config, supernet, extend, widths)
        search = NATSearch.resume(run_dir, data, predictors, iterations=config.iterations if extend else None,
                                  runtime=runtime, checkpoint_every_s=checkpoint_every_s)
        notes: list[str] = []
        if new_budgets is not None:
            old = search.state.budgets
            search.state.budgets = new_budgets
            notes.append(f"budgets changed on --resume ({old} -> {new_budgets}): the best subnet is re-selected from "
                         f"the archive of {len(search.state.archive)} evaluated subnets; iterations already done were "
                         "steered by the old budgets")
            if is_main(runtime):
                RunFolder(run_dir).write_state(search.state)
            barrier(runtime)
            log.warning(notes[-1])
    else:
        if RunFolder(run_dir).has_state():
            raise SearchError(f"{run_dir} already holds a search; pass --resume to continue it or --out elsewhere")
        if sources == "scratch":
            nets = [initial_supernet("scratch", data.n_classes, w, config.seed, runtime)
                    for w in scratch_widths(space, widths)]
        else:
            nets = [initial_supernet(src, data.n_classes, space.widths[0], config.seed, runtime)
                    for src in ([sources] if isinstance(sources, str) else sources)]
        by_width = supernets_by_width(nets)
        space = SearchSpace(resolutions=space.resolutions, widths=tuple(by_width), name=space.name)
        notes = check_budgets(predictors, budgets, space, data.n_classes)
        notes += coverage_notes(predictors, space, data.n_classes, config.seed)
        for note in notes:
            log.warning(note)
        search = NATSearch.create(run_dir, config, space, data, predictors, budgets, nets, sources, runtime,
                                  checkpoint_every_s)
    if tensorboard and is_main(runtime):
        search.folder.enable_tensorboard()
    try:
        archive = search.run(on_event=on_event)
    finally:
        search.folder.close_tensorboard()
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
