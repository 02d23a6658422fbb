"""TensorBoard event files mirroring a run's ``metrics.jsonl`` (``natdeploy search --tensorboard``).

``metrics.jsonl`` stays the one home of the metric stream: :meth:`natdeploy.run_folder.RunFolder.append_metrics`
hands every record it writes to a :class:`TensorBoardLog`, which only turns the record's numbers into scalars.
A record of kind ``K`` becomes one scalar per number in it, tagged ``K/<key>`` (nested dicts such as the
hypervolume per device become ``K/<key>/<inner key>``), at

- ``step`` records: the record's place among the run's step records (1, 2, ...; a resumed run continues the
  count of the steps already in ``metrics.jsonl``), since each phase restarts its own ``step`` at 1;
- ``iteration`` records: the NAT iteration;
- any other kind: its place among the records of that kind.

Missing values (``None``) are skipped. The ``tensorboard`` package is needed only here, imported when a log opens.
Events are written with tensorboard's protobufs and record framing to a plain file, synchronously and flushed
per record. Neither ``torch.utils.tensorboard.SummaryWriter`` nor tensorboard's ``EventFileWriter`` is used: both
reach ``tensorboard.compat.tf``, which imports TensorFlow when it is installed (natdeploy's TFLite export installs
it), and TensorFlow loaded before torch's first import of triton (by its first optimiser) crashes the process.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from natdeploy.errors import NatDeployError

TB_DIR = "tensorboard"
_X_KEYS = {"step": "step", "iteration": "iteration"}  # a kind's own x-axis key, not a scalar of its own


class TensorBoardError(NatDeployError):
    """--tensorboard was asked for, but the tensorboard package is not installed."""


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every number in a metrics record (see the module docstring for the tags)."""
    kind = str(record.get("kind", "record"))
    skip = {"kind", _X_KEYS.get(kind, "")}

    def walk(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(f"{prefix}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix, float(value)

    for key, value in record.items():
        if key not in skip:
            yield from walk(f"{kind}/{key}", value)


def require_tensorboard() -> None:
    """Fail with one line, before any work, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise TensorBoardError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None


class TensorBoardLog:
    """Scalars of metrics records as TensorBoard event files under ``run_dir/tensorboard``."""

    def __init__(self, run_dir: str | Path, metrics_path: str | Path | None = None) -> None:
        require_tensorboard()
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = Event, Summary
        self.counts: dict[str, int] = {}
        if metrics_path is not None and Path(metrics_path).is_file():  # continue the x axis of a resumed run
            for line in Path(metrics_path).read_text().splitlines():
                if line.strip():
                    kind = str(json.loads(line).get("kind", "record"))
                    self.counts[kind] = self.counts.get(kind, 0) + 1
        folder = Path(run_dir) / TB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        # a new file per writer (TensorBoard reads every events.out.tfevents.* of the folder in order)
        name = f"events.out.tfevents.{time.time():010.0f}.{socket.gethostname()}.{os.getpid()}.{id(self)}"
        self.path = folder / name
        self.writer = RecordWriter(open(self.path, "wb"))
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self.writer.write(event.SerializeToString())
        self.writer.flush()

    def add(self, record: dict[str, Any]) -> None:
        """Write one metrics record's scalars."""
        kind = str(record.get("kind", "record"))
        self.counts[kind] = self.counts.get(kind, 0) + 1
        x = int(record["iteration"]) if kind == "iteration" and "iteration" in record else self.counts[kind]
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars(record)]
        if values:
            self._write(self._event(wall_time=time.time(), step=x, summary=self._summary(value=values)))

    def close(self) -> None:
        self.writer.close()
