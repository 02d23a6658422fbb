"""The one owner of a search's run folder (``runs/<name>/``): its state, archive, supernet checkpoints and outputs.

Files, and who reads them:

- ``state.json``: the :class:`SearchState`, the commit point of every checkpoint; resume and export start here.
- ``supernet.pt``: the supernet as of ``state.json``; ``supernet.prev.pt`` is the one before it. A run over several
  widths (NAT's width gene) keeps one pair per width instead: ``supernet-w1.0.pt`` and ``supernet-w1.0.prev.pt``, ...
- ``archive.jsonl``: one :class:`ArchiveEntry` per line, for people and scripts.
- ``pareto.json``, ``best.json``, ``pareto.png``: the outputs of a finished (or resumed) run.
- ``phase.pt``: the training state inside a long phase (warm-up or one iteration's adaptation), written every
  epoch and every few minutes, so that a kill loses at most that much; it is removed when the phase's checkpoint
  commits, and resume uses it only for the phase it names. Several widths train one after the other, each with its
  own ``phase-w<width>.pt``, which also keeps a width's finished training until the phase commits.
- ``metrics.jsonl``: one JSON record per training step and per iteration, appended as the run goes (steps after
  the last checkpoint are logged again when a killed run resumes); ``tensorboard/`` holds the same as TensorBoard
  event files when enabled (``--tensorboard``).

A checkpoint writes the supernet first (moving the previous one to ``supernet.prev.pt``), then ``state.json``,
then ``archive.jsonl``. A kill at any point thus leaves a state whose supernet is one of the two files (per width);
each checkpoint records the iteration and warm-up flag it belongs to, and :meth:`RunFolder.supernet_path` picks the
one that matches the state, or refuses. Nothing here knows how the search runs; ``search`` and ``export`` use it.
"""

from __future__ import annotations

import json
import os
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

from natdeploy.errors import CheckpointError, NatDeployError
from natdeploy.fileio import atomic_write_bytes, atomic_write_text
from natdeploy.supernet import OFAMobileNetV3Supernet, load_supernet, save_supernet
from natdeploy.supernet.checkpoint import checkpoint_extra, load_training_state, save_training_state

STATE_VERSION = 1


class RunFolderError(NatDeployError):
    """A run folder is missing, damaged, or was written by an incompatible natdeploy."""


@dataclass
class ArchiveEntry:
    """One evaluated subnet: its genome and Arch string, measured accuracy, predicted latencies and costs."""

    genome: list[int]
    arch: str
    accuracy: float
    latency_ms: dict[str, float]
    madds: int
    params: int
    iteration: int
    predicted_accuracy: float | None = None


@dataclass
class SearchState:
    """Everything a NAT run needs to continue exactly, and everything an export needs to know about it."""

    config: dict
    devices: list[str]
    budgets: dict[str, float]
    space: dict
    data: dict
    n_classes: int
    completed_iteration: int = -1  # -1: initial archive not done; 0: initial archive evaluated
    warmed_up: bool = False
    supernet_source: str | list[str] = "scratch"  # a list: one source per width of space.widths, in that order
    archive: list[ArchiveEntry] = field(default_factory=list)
    tau_history: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def widths(self) -> list[float]:
        """The widths searched; each has its own supernet."""
        return [float(w) for w in self.space["widths"]]

    def checkpoint_tag(self) -> dict[str, Any]:
        """What the supernet checkpoint of this state records about itself (its ``extra``)."""
        return {"iteration": self.completed_iteration, "warmed_up": self.warmed_up}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json_dict(cls, raw: Any, where: str) -> "SearchState":
        """Validate a parsed state.json (``where`` names it in errors) and build the typed state."""
        if isinstance(raw, dict) and raw.get("version") != STATE_VERSION:
            raise RunFolderError(f"{where} has state version {raw.get('version')!r}; this natdeploy reads "
                                 f"version {STATE_VERSION}: use the natdeploy that wrote it, or start a new run")
        values = _checked_fields(cls, raw, where)
        for key in ("resolutions", "widths"):
            if not isinstance(values["space"].get(key), list):
                raise RunFolderError(f"{where}: space.{key} must be a list; the run folder is damaged")
        lacking = [k for k in ("source", "classes", "n_train") if k not in values["data"]]
        if lacking:
            raise RunFolderError(f"{where}: the data description lacks {lacking}; the run folder is damaged")
        source = values.get("supernet_source", "scratch")
        if isinstance(source, list) and (len(source) != len(values["space"]["widths"])
                                         or not all(isinstance(v, str) for v in source)):
            raise RunFolderError(f"{where}: supernet_source must name one supernet per width of space.widths; the "
                                 "run folder is damaged")
        if not all(isinstance(d, str) for d in values["devices"]):
            raise RunFolderError(f"{where}: devices must be a list of names; the run folder is damaged")
        if not all(_is_number(v) for v in values["budgets"].values()):
            raise RunFolderError(f"{where}: budgets must map devices to milliseconds; the run folder is damaged")
        values["archive"] = [ArchiveEntry(**_checked_fields(ArchiveEntry, e, f"{where} archive[{i}]"))
                             for i, e in enumerate(values["archive"])]
        return cls(**values)


def best_within(archive: Sequence[ArchiveEntry], budgets: dict[str, float]) -> ArchiveEntry | None:
    """The most accurate archive member whose predicted latency meets every budget (ties: the faster one)."""
    ok = [e for e in archive if all(e.latency_ms[d] <= b for d, b in budgets.items())]
    return max(ok, key=lambda e: (e.accuracy, -min(e.latency_ms.values(), default=0))) if ok else None


class RunFolder:
    """``runs/<name>/``: read and write a search's state, checkpoints and outputs, always in the same way."""

    STATE = "state.json"
    SUPERNET = "supernet.pt"
    PREVIOUS = "supernet.prev.pt"
    ARCHIVE = "archive.jsonl"
    PARETO = "pareto.json"
    BEST = "best.json"
    PLOT = "pareto.png"
    PHASE = "phase.pt"
    METRICS = "metrics.jsonl"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tensorboard: Any = None  # a natdeploy.tensorboard_log.TensorBoardLog once enable_tensorboard() ran

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def state_path(self) -> Path:
        return self.path / self.STATE

    def has_state(self) -> bool:
        """Whether a search has committed a state here."""
        return self.state_path.is_file()

    # ----- reading ------------------------------------------------------------------------------------------
    def read_state(self) -> SearchState:
        """The committed state; a missing, truncated or foreign state.json is a :class:`RunFolderError`."""
        path = self.state_path
        if not path.is_file():
            raise RunFolderError(f"{self.path} holds no search state (no {self.STATE})")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{path} could not be read ({exc}); the run folder is damaged") from None
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                                 "it was truncated or edited: the run folder is damaged, start a new run") from None
        return SearchState.from_json_dict(raw, str(path))

    def supernet_names(self, state: SearchState, width: float) -> tuple[str, str]:
        """The current and previous checkpoint file names of ``width``'s supernet: supernet.pt and supernet.prev.pt
        for a single-width run, supernet-w<width>.pt and supernet-w<width>.prev.pt with several widths."""
        if len(state.widths) == 1:
            return self.SUPERNET, self.PREVIOUS
        return f"supernet-w{float(width)}.pt", f"supernet-w{float(width)}.prev.pt"

    def supernet_path(self, state: SearchState, width: float | None = None) -> Path:
        """The supernet checkpoint that belongs to ``state`` (of ``width``; default the run's first width):
        the current file, or the previous one after a kill between the writes of a checkpoint. Never one of
        another iteration: that is an error."""
        want = state.checkpoint_tag()
        seen = []
        for name in self.supernet_names(state, state.widths[0] if width is None else width):
            path = self.path / name
            if not path.is_file():
                seen.append(f"{name} missing")
                continue
            try:
                extra = checkpoint_extra(path)
            except CheckpointError as exc:
                seen.append(f"{name} unreadable ({exc})")
                continue
            if {k: extra.get(k) for k in want} == want:
                return path
            seen.append(f"{name} is of iteration {extra.get('iteration')} (warmed_up {extra.get('warmed_up')})")
        raise RunFolderError(f"{self.path} has no supernet checkpoint matching its state (iteration "
                             f"{want['iteration']}, warmed_up {want['warmed_up']}): {'; '.join(seen)}; the run "
                             "folder is damaged: restore the checkpoint or start a new run")

    def supernet_paths(self, state: SearchState) -> dict[float, Path]:
        """:meth:`supernet_path` of every width of the run."""
        return {w: self.supernet_path(state, w) for w in state.widths}

    def load_supernet(self, state: SearchState) -> OFAMobileNetV3Supernet:
        """The supernet of ``state`` (see :meth:`supernet_path`); of the first width where the run has several."""
        return load_supernet(self.supernet_path(state))

    def load_supernets(self, state: SearchState) -> dict[float, OFAMobileNetV3Supernet]:
        """The supernet of every width of ``state``, by width."""
        nets = {w: load_supernet(p) for w, p in self.supernet_paths(state).items()}
        wrong = {w: n.width for w, n in nets.items() if n.width != w}
        if wrong:
            raise RunFolderError(f"{self.path}: the checkpoint of width {next(iter(wrong))} holds a "
                                 f"w{next(iter(wrong.values()))} supernet; the run folder is damaged")
        return nets

    # ----- writing ------------------------------------------------------------------------------------------
    def write_checkpoint(self, state: SearchState, archive: Sequence[ArchiveEntry],
                         supernet: OFAMobileNetV3Supernet | Mapping[float, OFAMobileNetV3Supernet]) -> None:
        """Commit ``state`` with ``archive`` and the supernet (or one per width, by width): supernets first (each
        keeping its previous file), then state.json, the commit point, then archive.jsonl."""
        self.path.mkdir(parents=True, exist_ok=True)
        nets = dict(supernet) if isinstance(supernet, Mapping) else {state.widths[0]: supernet}
        if sorted(nets) != sorted(state.widths):
            raise ValueError(f"supernets of widths {sorted(nets)} for a run over widths {state.widths}")
        for width in state.widths:
            name, prev = self.supernet_names(state, width)
            current = self.path / name
            if current.exists():
                os.replace(current, self.path / prev)
            save_supernet(nets[width], current, extra=state.checkpoint_tag())
        state.archive = list(archive)
        atomic_write_text(self.state_path, state.to_json())
        atomic_write_text(self.path / self.ARCHIVE, "".join(json.dumps(asdict(e)) + "\n" for e in archive))

    def _phase_path(self, width: float | None) -> Path:
        return self.path / (self.PHASE if width is None else f"phase-w{float(width)}.pt")

    def write_phase(self, tag: str, state: dict[str, Any], width: float | None = None) -> None:
        """Save the training state of the phase ``tag`` (e.g. ``warmup``, ``adapt-3``) inside that phase; with
        ``width``, that width's part of a phase that trains several supernets."""
        save_training_state(self._phase_path(width), {**state, "phase_tag": tag})

    def read_phase(self, tag: str, width: float | None = None) -> dict[str, Any] | None:
        """The saved training state of phase ``tag`` (of ``width``), or None when there is none (or it is of
        another phase)."""
        path = self._phase_path(width)
        if not path.is_file():
            return None
        try:
            state = load_training_state(path)
        except CheckpointError as exc:
            raise RunFolderError(f"{path} is damaged ({exc}); delete it to redo that phase from its start") from None
        return state if state.get("phase_tag") == tag else None

    def clear_phase(self) -> None:
        """Forget the in-phase states (after the phase's checkpoint has committed)."""
        (self.path / self.PHASE).unlink(missing_ok=True)
        for path in self.path.glob("phase-w*.pt"):
            path.unlink(missing_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (one write per line, flushed), and to TensorBoard when enabled."""
        with open(self.path / self.METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tensorboard is not None:
            self.tensorboard.add(record)

    def enable_tensorboard(self) -> None:
        """Mirror every later metrics record into TensorBoard event files under ``tensorboard/``."""
        from natdeploy.tensorboard_log import TensorBoardLog

        if self.tensorboard is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self.tensorboard = TensorBoardLog(self.path, self.path / self.METRICS)

    def close_tensorboard(self) -> None:
        """Flush and close the TensorBoard event files (a no-op when not enabled)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def write_state(self, state: SearchState) -> None:
        """Rewrite state.json alone, for a change that leaves the iteration (and so the supernet) as it is, such as
        new budgets on resume."""
        atomic_write_text(self.state_path, state.to_json())

    def write_outputs(self, front: Sequence[ArchiveEntry], record: dict, plot_png: bytes | None = None) -> None:
        """pareto.json (the front), best.json (``record``) and, when given, the rendered pareto.png."""
        atomic_write_text(self.path / self.PARETO, json.dumps([asdict(e) for e in front], indent=1) + "\n")
        atomic_write_text(self.path / self.BEST, json.dumps(record, indent=1) + "\n")
        if plot_png is not None:
            atomic_write_bytes(self.path / self.PLOT, plot_png)


# ----- validation of what was read --------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_types(hint: Any) -> tuple[type, ...]:
    """The Python types that JSON gives for a field annotated ``hint`` (float admits int)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return tuple(t for arg in get_args(hint) for t in _json_types(arg))
    base = origin or hint
    return (int, float) if base is float else (base,)


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _checked_fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """``raw`` as keyword arguments of dataclass ``cls``: a JSON object with no unknown keys, every required key,
    and values of the annotated JSON types."""
    what = "a natdeploy search state" if cls is SearchState else "an archive entry"
    if not isinstance(raw, dict):
        raise RunFolderError(f"{where} holds {_json_kind(raw)}, not {what}; the run folder is damaged")
    hints = get_type_hints(cls)
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    unknown = sorted(set(raw) - set(hints))
    missing = [k for k in required if k not in raw]
    if unknown or missing:
        problem = "; ".join(filter(None, [f"unknown key(s) {unknown}" if unknown else "",
                                          f"missing key(s) {missing}" if missing else ""]))
        raise RunFolderError(f"{where}: {problem}; it is not {what} of this natdeploy (edited by hand, or "
                             "written by another version)")
    for key, value in raw.items():
        allowed = _json_types(hints[key])
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise RunFolderError(f"{where}: {key} is {_json_kind(value)} ({value!r:.40}), expected "
                                 f"{' or '.join(t.__name__ for t in allowed)}; the run folder is damaged")
    return dict(raw)
