"""ImageFolders streamed from disk when their decoded images do not fit a memory budget, and the choice of mode.

:class:`StreamData` has the interface of :class:`natdeploy.data.ImageData`: DataLoader worker processes decode,
centre-crop and resize each file to the storage size exactly as the in-memory loader does, and hand uint8 batches
(pinned for CUDA) to the main process, which crops, flips, resizes and normalises the whole batch on the target
device. Shuffling and augmentation draw from the caller's ``rng`` through the same schedule as memory mode
(:func:`natdeploy.data.batch_plan`), so both modes yield the same tensors for the same seed.

:func:`load_image_data` picks memory or stream (``mode="auto"``) from the decoded size against a budget.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from natdeploy.data import (DECODE_ERRORS, DataError, ImageData, Shard, batch_plan, channel_stats, crop_flip,
                            decode_image, epoch_order, folder_loader_args, list_folder, load_digits_data,
                            load_image_folder, prepare, shard_bounds, split_indices, stats_tensors)
from natdeploy.errors import ConfigError

log = logging.getLogger(__name__)

LOADING_MODES = ("memory", "stream", "auto")
# Default budget: this share of the memory available now. The other half holds the model, the optimizer, float
# copies of batches and the DataLoader workers.
MEMORY_BUDGET_FRACTION = 0.5
STATS_IMAGES = 512  # training images decoded up front for the normalisation statistics in stream mode


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | None) -> int:
    """DataLoader worker count: ``None`` means the cores available; more than that warns and uses the cores."""
    cores = available_cores()
    if workers is None:
        return cores
    if workers < 0:
        raise ConfigError(f"--workers {workers} must be 0 (decode in the main process) or more")
    if workers > cores:
        log.warning("--workers %d is more than the %d core(s) available to this process; using %d", workers, cores,
                    cores)
        return cores
    return workers


def available_memory_bytes() -> int:
    """Memory available now: MemAvailable from /proc/meminfo, else free pages from ``os.sysconf``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_memory_budget() -> int:
    """The default ``--memory-budget``: :data:`MEMORY_BUDGET_FRACTION` of the memory available now, in bytes."""
    return int(available_memory_bytes() * MEMORY_BUDGET_FRACTION)


class _Files(Dataset):
    """Files decoded to uint8 storage-size tensors; an unreadable file gives ``None`` and the error, not a raise."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, decode_image(self.paths[i], self.size), ""
        except DECODE_ERRORS as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


class _Collate:
    """Stacks the readable images of a batch: (positions kept within the batch, uint8 N x 3 x S x S, bad files)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
        keep = [k for k, (_, t, _) in enumerate(items) if t is not None]
        bad = [(i, err) for i, t, err in items if t is None]
        x = (torch.stack([items[k][1] for k in keep]) if keep
             else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8))
        return torch.tensor(keep, dtype=torch.long), x, bad


def _loader(paths: Sequence[Path], size: int, index_batches: list[list[int]], workers: int,
            pin: bool) -> DataLoader:
    # Its own generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG, which
    # would shift the dropout masks of training against memory mode. Workers draw no random numbers.
    return DataLoader(_Files(paths, size), batch_sampler=index_batches, num_workers=workers,
                      collate_fn=_Collate(size), pin_memory=pin, generator=torch.Generator().manual_seed(0))


@dataclass
class StreamData:
    """An ImageFolder read on the fly: file lists, labels, class names and normalisation statistics.

    Holds the interface train and evaluation use from :class:`ImageData` (``train_y``, ``val_y``, ``classes``,
    ``mean``, ``std``, ``batches``, ``describe``, ``to``). Corrupt files found while streaming are skipped,
    logged once each and counted in :attr:`skipped`.
    """

    train_files: list[Path]
    train_y: torch.Tensor
    val_files: list[Path]
    val_y: torch.Tensor
    classes: list[str]
    source: str
    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    notes: list[str] = field(default_factory=list)
    hflip: bool = True
    bad: dict[str, dict[int, str]] = field(default_factory=lambda: {"train": {}, "val": {}})
    loaded_with: dict = field(default_factory=dict)  # as ImageData.loaded_with
    skips_mid_epoch: ClassVar[bool] = True  # a batch holding an unreadable file comes that much shorter

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> int:
        """Distinct unreadable files met so far (while computing statistics or streaming)."""
        return sum(len(v) for v in self.bad.values())

    def describe(self) -> dict:
        """What a run records about its data (the keys of :meth:`ImageData.describe`)."""
        return {"source": self.source, "classes": self.classes, "n_train": len(self.train_y),
                "n_val": len(self.val_y), "storage_size": self.size, "mean": list(self.mean),
                "std": list(self.std), "skipped_images": self.skipped, "color_order": "RGB", "scale": "0..1",
                **self.loaded_with}

    def to(self, device: torch.device | str) -> "StreamData":
        """The same data, yielding its batches on ``device`` by default (as :meth:`ImageData.to`)."""
        return replace(self, device=torch.device(device), notes=list(self.notes))

    def _note_bad(self, split: str, files: Sequence[Path], bad: list[tuple[int, str]]) -> None:
        for i, err in bad:
            if i not in self.bad[split]:
                self.bad[split][i] = err
                log.warning("skipping unreadable image %s (%s); %d skipped so far", files[i], err, self.skipped)

    def batches(self, split: str, batch_size: int, resolution: int, rng: np.random.Generator | None = None,
                augment: bool = False, limit: int | None = None, *, device: torch.device | str | None = None,
                shard: Shard = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches at ``resolution`` (channels_last), as :meth:`ImageData.batches` yields them.

        A batch holding a corrupt file is that much smaller. With one process (``shard[1] == 1``) a batch left
        empty is dropped; with several, every rank yields every batch (possibly empty) so that ranks stay in step.
        """
        files, y_all = (self.train_files, self.train_y) if split == "train" else (self.val_files, self.val_y)
        dev = torch.device(device) if device is not None else self.device
        order = epoch_order(len(y_all), rng, limit)
        plan = batch_plan(order, batch_size, rng, augment, self.size, self.hflip, shard)
        parts = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            lo, hi = shard_bounds(len(idx), shard)
            parts.append(idx[lo:hi].tolist())
        # No more workers than batches: a short pass (BN recalibration, a capped evaluation) starts fewer processes.
        loader = _loader(files, self.size, parts, min(self.workers, len(parts)),
                         pin=dev.type == "cuda" and torch.cuda.is_available())
        mean, std = stats_tensors(self.mean, self.std, dev)
        for (idx, lo, hi, draws), (keep, u, bad) in zip(plan, loader):
            if bad:
                self._note_bad(split, files, bad)
            if len(keep) == 0 and shard[1] == 1:
                continue
            y = y_all[torch.from_numpy(idx[lo:hi])[keep]]
            u = u.to(dev, non_blocking=True)
            if draws is not None:
                k = keep.numpy()
                u = crop_flip(u, None, draws[0][lo:hi][k], draws[1][lo:hi][k])
            yield prepare(u, resolution, mean, std), y.to(dev)


def stream_image_folder(root: str | Path, val: str | Path | None = None, size: int = 64, val_fraction: float = 0.2,
                        seed: int = 0, limit_per_class: int | None = None, val_limit_per_class: int | None = None,
                        workers: int | None = None, stats_images: int = STATS_IMAGES) -> StreamData:
    """An ImageFolder as :class:`StreamData`: the files, split and labels :func:`load_image_folder` would use.

    The normalisation statistics come from up to ``stats_images`` training images (all of them when there are no
    more; then they equal memory mode's), a seeded sample otherwise.
    """
    root = Path(root)
    workers = resolve_workers(workers)
    paths, labels, classes = list_folder(root, limit_per_class=limit_per_class, seed=seed)
    y = torch.tensor(labels, dtype=torch.long)
    if val is not None:
        vpaths, vlabels, _ = list_folder(Path(val), classes, val_limit_per_class, seed + 1)
        train_files, train_y, val_files, val_y = paths, y, vpaths, torch.tensor(vlabels, dtype=torch.long)
    else:
        tr, va = split_indices(y, val_fraction, seed)
        train_files, val_files = [paths[i] for i in tr.tolist()], [paths[i] for i in va.tolist()]
        train_y, val_y = y[tr], y[va]
    data = StreamData(train_files, train_y, val_files, val_y, classes, str(root), size, workers=workers,
                      loaded_with=folder_loader_args(root, val, limit_per_class, val_limit_per_class, val_fraction,
                                                     seed))
    n = len(train_files)
    sample = (np.arange(n) if n <= stats_images
              else np.sort(np.random.default_rng(seed).choice(n, stats_images, replace=False)))
    chunks = [torch.empty(0, 3, size, size, dtype=torch.uint8)]
    index_batches = [sample[i:i + 64].tolist() for i in range(0, len(sample), 64)]
    for _, u, bad in _loader(train_files, size, index_batches, min(workers, len(index_batches)), pin=False):
        data._note_bad("train", train_files, bad)
        chunks.append(u)
    decoded = torch.cat(chunks)
    if len(decoded) < 2:
        raise DataError(f"fewer than 2 readable images among {len(sample)} training files sampled under "
                        f"{root}; the folder needs more images")
    data.mean, data.std = channel_stats(decoded)  # type: ignore[assignment]
    return data


def load_image_data(root: str | Path | None, val: str | Path | None = None, size: int = 64,
                    val_fraction: float = 0.2, seed: int = 0, limit_per_class: int | None = None,
                    val_limit_per_class: int | None = None, *, mode: str = "auto",
                    memory_budget_bytes: int | None = None, workers: int | None = None) -> ImageData | StreamData:
    """The training data in memory or streamed: ``mode`` is ``memory``, ``stream`` or ``auto``.

    ``auto`` streams when the decoded images (n_images x 3 x size x size bytes, train and val) exceed
    ``memory_budget_bytes`` (default :func:`default_memory_budget`). One log line says which mode and why.
    ``root=None`` gives scikit-learn's digits, always in memory.
    """
    if mode not in LOADING_MODES:
        raise ConfigError(f"--data-loading {mode!r} is not one of {', '.join(LOADING_MODES)}")
    workers = resolve_workers(workers)
    if root is None:
        log.info("data loading: memory (the embedded digits are small)")
        return load_digits_data(size=size, seed=seed)
    chosen, why = mode, "as asked"
    if mode == "auto":
        paths, _, classes = list_folder(Path(root), limit_per_class=limit_per_class, seed=seed)
        n = len(paths)
        if val is not None:
            n += len(list_folder(Path(val), classes, val_limit_per_class, seed + 1)[0])
        need = n * 3 * size * size
        budget_from = "--memory-budget" if memory_budget_bytes is not None else (
            f"default: {MEMORY_BUDGET_FRACTION:.0%} of the memory available")
        budget = memory_budget_bytes if memory_budget_bytes is not None else default_memory_budget()
        chosen = "memory" if need <= budget else "stream"
        why = (f"{n} images decoded at {size} px take {_gb(need)}, {'within' if chosen == 'memory' else 'over'} "
               f"the budget of {_gb(budget)} ({budget_from})")
    log.info("data loading: %s (%s)", chosen, why + (f"; {workers} worker(s)" if chosen == "stream" else ""))
    if chosen == "memory":
        return load_image_folder(root, val=val, size=size, val_fraction=val_fraction, seed=seed,
                                 limit_per_class=limit_per_class, val_limit_per_class=val_limit_per_class)
    return stream_image_folder(root, val=val, size=size, val_fraction=val_fraction, seed=seed,
                               limit_per_class=limit_per_class, val_limit_per_class=val_limit_per_class,
                               workers=workers)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB"
