"""Where an export starts: a finished NAT run folder (its archive, budgets, adapted supernet and data), or an
Arch with a supernet checkpoint. Picks the Arch and reloads what it needs, refusing what it cannot use."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from natdeploy.data import DataError, ImageData, load_described
from natdeploy.errors import CheckpointError
from natdeploy.export.errors import ExportError
from natdeploy.run_folder import ArchiveEntry, RunFolder, RunFolderError, SearchState, best_within
from natdeploy.search.nat import NATConfig, SearchError
from natdeploy.space import Arch
from natdeploy.supernet import OFAMobileNetV3Supernet, load_supernet
from natdeploy.supernet.hub import resolve_supernet

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What an export reads from a run folder: its state, the search settings, and the matching supernet (of the
    run's first width; ``supernet_paths`` holds the one of every width)."""

    run_dir: Path
    state: SearchState
    supernet_path: Path
    config: NATConfig = field(default_factory=NATConfig)
    supernet_paths: dict[float, Path] = field(default_factory=dict)

    def supernet_path_for(self, arch: Arch) -> Path:
        """The run's supernet checkpoint of ``arch``'s width; an Arch of a width the run did not search is refused."""
        paths = self.supernet_paths or {self.state.widths[0]: self.supernet_path}
        if arch.w not in paths:
            raise ExportError(f"Arch {arch} has width w{arch.w}, but {self.run_dir} searched widths "
                              f"{' '.join(f'w{w}' for w in sorted(paths))}; pick an Arch of one of them")
        return paths[arch.w]

    @property
    def devices(self) -> list[str]:
        return list(self.state.devices)

    @property
    def budgets(self) -> dict[str, float]:
        return {d: float(v) for d, v in self.state.budgets.items()}

    @property
    def archive(self) -> list[ArchiveEntry]:
        return list(self.state.archive)

    @property
    def n_classes(self) -> int:
        return self.state.n_classes

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def bn_batches(self) -> int:
        return self.config.bn_batches

    def entry_for(self, arch: Arch) -> dict[str, Any] | None:
        """The archive entry of ``arch`` (as recorded), when the search evaluated it."""
        return next((asdict(e) for e in self.state.archive if e.arch == arch.to_string()), None)


@dataclass
class Source:
    """Everything the exporter needs about the model, resolved: the Arch, its supernet, data and budgets."""

    arch: Arch
    supernet: OFAMobileNetV3Supernet
    data: ImageData | None
    n_classes: int
    classes: list[str]
    budgets: dict[str, float]
    devices: list[str]
    seed: int = 0
    bn_batches: int = 4
    run: RunInfo | None = None
    supernet_path: Path | None = None
    archive_entry: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def read_run(run_dir: str | Path) -> RunInfo:
    """Read a run folder's state and pick the supernet checkpoint that matches it; refuse unfinished runs."""
    folder = RunFolder(run_dir)
    if not folder.has_state():
        raise ExportError(f"{folder.path} is not a natdeploy run folder (no {folder.STATE}); give the folder that "
                          "`natdeploy search` wrote, or an Arch string with --supernet")
    try:
        state = folder.read_state()
        config = NATConfig.from_record(state.config, str(folder.state_path))
    except (RunFolderError, SearchError) as exc:
        raise ExportError(str(exc)) from None
    done = state.completed_iteration
    if done < 1:
        raise ExportError(f"{folder.path} has no finished NAT iteration (completed_iteration={done}); let the "
                          "search finish at least one iteration (rerun it with --resume), then export")
    if not state.archive:
        raise ExportError(f"{folder.path} has an empty archive; there is no Arch to export")
    try:
        paths = folder.supernet_paths(state)
    except RunFolderError as exc:
        raise ExportError(str(exc)) from None
    return RunInfo(folder.path, state, paths[state.widths[0]], config, paths)


def resolve_budgets(budget: float | Mapping[str, float] | None, devices: Sequence[str],
                    run_budgets: Mapping[str, float]) -> dict[str, float]:
    """A number applies to every device of the run; a mapping names devices; None means the run's own budgets."""
    if budget is None:
        return dict(run_budgets)
    if isinstance(budget, Mapping):
        unknown = sorted(set(budget) - set(devices))
        if unknown:
            raise ExportError(f"budget given for {unknown}, which the run did not search; its devices: {list(devices)}")
        out = {d: float(v) for d, v in budget.items()}
    else:
        if not devices:
            raise ExportError("a budget needs a device, and this run searched none; pick the Arch with --arch")
        out = {d: float(budget) for d in devices}
    bad = {d: v for d, v in out.items() if not (v > 0 and math.isfinite(v))}
    if bad:
        raise ExportError(f"budgets must be positive milliseconds, got {bad}")
    return out


def select_entry(run: RunInfo, budgets: Mapping[str, float]) -> dict[str, Any]:
    """The most accurate archive entry whose predicted latency meets every budget (the search's own rule)."""
    entries = run.archive
    lacking = sorted({d for e in entries for d in budgets if d not in e.latency_ms})
    if lacking:
        raise ExportError(f"the archive of {run.run_dir} holds no predicted latency for {lacking}; budget only "
                          f"devices the run searched: {run.devices}")
    best = best_within(entries, dict(budgets))
    if best is None:
        fastest = min(entries, key=lambda e: max(e.latency_ms[d] / b for d, b in budgets.items()))
        want = ", ".join(f"{d} {b:g} ms" for d, b in budgets.items())
        got = ", ".join(f"{d} {fastest.latency_ms[d]:.3f} ms" for d in budgets)
        raise ExportError(f"no Arch in {run.run_dir} meets the budget ({want}); the closest is the fastest archive "
                          f"entry {fastest.arch} at {got} (accuracy {100 * fastest.accuracy:.2f}%). Raise the "
                          "budget, or pick an Arch with --arch")
    return asdict(best)


def load_run_data(run: RunInfo) -> ImageData:
    """Reload the run's dataset from its recorded description, checking that the classes still match."""
    desc = run.state.data
    try:
        data = load_described(desc, seed=run.seed)
    except DataError as exc:
        raise ExportError(f"could not reload the run's data ({exc}); pass the data explicitly (--data)") from None
    if list(desc.get("classes") or data.classes) != data.classes:
        raise ExportError(f"the data at {desc.get('source')} now has classes {data.classes[:5]}..., but the run "
                          f"was searched on {desc.get('classes', [])[:5]}...; labels would not match")
    if desc.get("n_train") not in (None, len(data.train_y)) or desc.get("n_val") not in (None, len(data.val_y)):
        log.warning("reloaded data has %d train / %d val images; the run recorded %s / %s", len(data.train_y),
                    len(data.val_y), desc.get("n_train"), desc.get("n_val"))
    return data


def from_run(run_dir: str | Path, arch: Arch | str | None = None, budget: float | Mapping[str, float] | None = None,
             data: ImageData | None = None, devices: Sequence[str] | None = None) -> Source:
    """Resolve an export from a run folder: the Arch given, else the best within ``budget`` (default: the run's)."""
    run = read_run(run_dir)
    budgets = resolve_budgets(budget, run.devices, run.budgets)
    if arch is None:
        entry = select_entry(run, budgets)
        chosen = Arch.from_string(entry["arch"])
    else:
        chosen = Arch.parse(arch) if isinstance(arch, str) else arch
        entry = run.entry_for(chosen)
    supernet_path = run.supernet_path_for(chosen)
    try:
        supernet = load_supernet(supernet_path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    _check_fits(supernet, chosen, run.n_classes)
    data = data if data is not None else load_run_data(run)
    if data.n_classes != run.n_classes:
        raise ExportError(f"the data has {data.n_classes} classes, the run's model {run.n_classes}")
    return Source(arch=chosen, supernet=supernet, data=data, n_classes=run.n_classes, classes=list(data.classes),
                  budgets=budgets, devices=list(devices) if devices is not None else run.devices, seed=run.seed,
                  bn_batches=run.bn_batches, run=run, supernet_path=supernet_path, archive_entry=entry)


def from_arch(arch: Arch | str, supernet: str | Path, data: ImageData | None = None,
              budget: float | Mapping[str, float] | None = None, devices: Sequence[str] = (),
              seed: int = 0, bn_batches: int = 4) -> Source:
    """Resolve an export of one Arch from a supernet checkpoint, with optional data for BN, calibration and checks."""
    chosen = Arch.parse(arch) if isinstance(arch, str) else arch
    try:
        net = load_supernet(resolve_supernet(supernet))
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    _check_fits(net, chosen, net.n_classes)
    notes = []
    if data is None:
        notes.append("no data given: BN statistics are the checkpoint's, parity ran on random inputs, and no "
                     "accuracy was measured")
        classes = [f"class_{i}" for i in range(net.n_classes)]
    else:
        if data.n_classes != net.n_classes:
            raise ExportError(f"the data has {data.n_classes} classes but the supernet {supernet} has a "
                              f"{net.n_classes}-class head; give data with the classes it was trained on")
        classes = list(data.classes)
    budgets = resolve_budgets(budget, list(devices), {})
    return Source(arch=chosen, supernet=net, data=data, n_classes=net.n_classes, classes=classes, budgets=budgets,
                  devices=list(devices), seed=seed, bn_batches=bn_batches, supernet_path=Path(supernet), notes=notes)


def _check_fits(supernet: OFAMobileNetV3Supernet, arch: Arch, n_classes: int) -> None:
    if arch.w != supernet.width:
        raise ExportError(f"Arch {arch} has width w{arch.w}, but the supernet is w{supernet.width}")
    if supernet.n_classes != n_classes:
        raise ExportError(f"the supernet has a {supernet.n_classes}-class head, the run {n_classes} classes")
