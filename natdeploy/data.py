"""Datasets for supernet adaptation and subnet evaluation, held in memory and resized per Arch.

Images are decoded once into a uint8 tensor at a fixed storage size (on the host, or once on the GPU with
:meth:`ImageData.to`); each batch is then augmented and resized, on the tensor's device, to the resolution of the
subnet that consumes it. On a 2-core machine this beats a DataLoader by far. Data that does not fit in memory is
streamed by :mod:`natdeploy.stream`, which shares this module's decoding, split, shuffling and augmentation, so
both give the same batches for the same seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from natdeploy.errors import NatDeployError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# What a failed decode raises: PIL's UnidentifiedImageError and truncated files are OSErrors; odd modes ValueErrors.
DECODE_ERRORS = (OSError, ValueError)
Shard = tuple[int, int]  # (rank, world): this process's contiguous part of every global batch


class DataError(NatDeployError):
    """A dataset folder is missing, empty, or unreadable."""


@dataclass
class ImageData:
    """Train and validation images (uint8, N x 3 x S x S), labels, class names and normalisation statistics."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    source: str
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    hflip: bool = True  # horizontal flips in augmentation (off for data such as digits, where a flip changes the class)
    # the loader's arguments (source as an absolute path, val, limit_per_class, val_limit_per_class, val_fraction,
    # seed), so that describe() records how to load the same images into the same split; empty when built by hand
    loaded_with: dict = field(default_factory=dict)
    # batches() never comes short: unreadable files were left out at load (StreamData's can, mid-epoch)
    skips_mid_epoch: ClassVar[bool] = False

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        """What a run records about its data: its shape and statistics, and how :func:`load_described` reloads it."""
        return {"source": self.source, "classes": self.classes, "n_train": len(self.train_y),
                "n_val": len(self.val_y), "storage_size": int(self.train_x.shape[-1]), "mean": list(self.mean),
                "std": list(self.std), "skipped_images": self.skipped, "color_order": "RGB", "scale": "0..1",
                **self.loaded_with}

    def to(self, device: torch.device | str) -> "ImageData":
        """The same data with its images and labels on ``device`` (once), so batches need no copy per step."""
        dev = torch.device(device)
        return replace(self, train_x=self.train_x.to(dev), train_y=self.train_y.to(dev), val_x=self.val_x.to(dev),
                       val_y=self.val_y.to(dev), notes=list(self.notes))

    def batches(self, split: str, batch_size: int, resolution: int, rng: np.random.Generator | None = None,
                augment: bool = False, limit: int | None = None, *, device: torch.device | str | None = None,
                shard: Shard = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches at ``resolution`` (channels_last). Shuffled when ``rng`` is given.

        Batches come on ``device`` (default: where the images are). With ``shard=(rank, world)`` each global batch
        of ``batch_size`` is cut into ``world`` contiguous parts and only part ``rank`` is yielded; the shuffle and
        the augmentation are drawn for the whole global batch, so the parts concatenated equal the unsharded batch.
        """
        x_all, y_all = (self.train_x, self.train_y) if split == "train" else (self.val_x, self.val_y)
        dev = torch.device(device) if device is not None else x_all.device
        order = epoch_order(len(y_all), rng, limit)
        order_t = torch.from_numpy(order).to(x_all.device)  # one upload per pass, not per batch
        mean, std = stats_tensors(self.mean, self.std, dev)
        plan = batch_plan(order, batch_size, rng, augment, int(x_all.shape[-1]), self.hflip, shard)
        for b, (_, lo, hi, draws) in enumerate(plan):
            part = order_t[b * batch_size + lo:b * batch_size + hi]
            u = crop_flip(x_all, part, *_slice(draws, lo, hi)) if draws is not None else x_all[part]
            yield prepare(u.to(dev, non_blocking=True), resolution, mean, std), y_all[part].to(dev)


Draws = tuple[np.ndarray, np.ndarray]  # per image of a batch: crop offsets (n x 2: top, left) and flips (n,)


def shard_bounds(n: int, shard: Shard) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous part of ``n`` items, for ``shard=(rank, world)``; the first ``n % world`` ranks
    get one more. Concatenating the parts in rank order gives the items in their order.

    The one rule for every split over processes: batches of training data, lists of subnets to evaluate
    (:func:`natdeploy.distributed.shard_range`).
    """
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard={shard} must be (rank, world) with 0 <= rank < world")
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def epoch_order(n_all: int, rng: np.random.Generator | None, limit: int | None = None) -> np.ndarray:
    """The image indices of one pass: a permutation drawn from ``rng`` (else in order), cut to ``limit``."""
    n = n_all if limit is None else min(limit, n_all)
    return rng.permutation(n_all)[:n] if rng is not None else np.arange(n)


def batch_plan(order: np.ndarray, batch_size: int, rng: np.random.Generator | None, augment: bool, size: int,
               hflip: bool, shard: Shard = (0, 1)) -> Iterator[tuple[np.ndarray, int, int, Draws | None]]:
    """The seeded schedule both modes follow: per global batch of ``order`` its image indices, this shard's
    [lo, hi) and the augmentation draws for the whole global batch.

    Each batch's draws are taken from ``rng`` when that batch is asked for, so callers that draw from the same
    ``rng`` between batches (subnet sampling) see one stream in both modes.
    """
    shard_bounds(batch_size, shard)  # validates the shard before anything is drawn
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        draws = draw_augment(rng or np.random.default_rng(start), len(idx), size, hflip) if augment else None
        yield (idx, *shard_bounds(len(idx), shard), draws)


def draw_augment(rng: np.random.Generator, n: int, size: int, hflip: bool = True) -> Draws:
    """Crop offsets within the reflect padding (1/8 of ``size``) and horizontal flips for ``n`` images."""
    pad = max(1, size // 8)
    offs = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flips = (rng.random(n) < 0.5) & hflip
    return offs, flips


def _slice(draws: Draws, lo: int, hi: int) -> Draws:
    return draws[0][lo:hi], draws[1][lo:hi]


def _reflect(j: torch.Tensor, s: int) -> torch.Tensor:
    """Source index of position ``j`` (may be in [-pad, s + pad)) under reflect padding of a side of ``s``."""
    return (s - 1) - ((s - 1) - j.abs()).abs()


def crop_flip(x: torch.Tensor, idx: torch.Tensor | None, offs: np.ndarray, flips: np.ndarray) -> torch.Tensor:
    """Images ``x[idx]`` (uint8 or float, N x C x S x S) cropped after reflect-padding by 1/8 of S, and flipped.

    Two gathers (rows, then columns) on ``x``'s device, with no Python loop per image; they copy exactly the
    pixels that padding, slicing and flipping each image would, so results are bit-identical to that (the CIFAR
    recipe). Gathering uint8 before the float conversion moves a quarter of the bytes.
    """
    s = int(x.shape[-1])
    pad = max(1, s // 8)
    dev = x.device
    ar = torch.arange(s, device=dev)
    o = torch.as_tensor(offs, device=dev).long().view(-1, 2)
    f = torch.as_tensor(flips, device=dev).bool().view(-1, 1)
    rows = _reflect(o[:, :1] - pad + ar, s)
    cols = _reflect(o[:, 1:] - pad + torch.where(f, s - 1 - ar, ar), s)
    xi = x[idx.to(dev)] if idx is not None else x
    n, c = len(o), int(x.shape[1])
    xi = torch.gather(xi, 2, rows.view(n, 1, s, 1).expand(n, c, s, s))
    return torch.gather(xi, 3, cols.view(n, 1, 1, s).expand(n, c, s, s))


def stats_tensors(mean: Sequence[float], std: Sequence[float], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation statistics as 1 x 3 x 1 x 1 float32 tensors on ``device`` (made once per pass)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def prepare(u: torch.Tensor, resolution: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A uint8 batch as the network takes it: scaled to 0..1, resized, normalised with ``mean`` and ``std``
    (1 x 3 x 1 x 1 on ``u``'s device, from :func:`stats_tensors`), channels_last."""
    x = resize(u.float().div_(255), resolution)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of a float NCHW batch to ``resolution`` (a no-op when already that size)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def _augment(x: torch.Tensor, rng: np.random.Generator, hflip: bool = True) -> torch.Tensor:
    """Random crop after reflect-padding by 1/8 of the size, and horizontal flips (the CIFAR recipe)."""
    return crop_flip(x, None, *draw_augment(rng, len(x), int(x.shape[-1]), hflip))


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale, 4 decimals) of uint8 images: the normalisation statistics."""
    f = x.float().div(255)
    mean = f.mean((0, 2, 3))
    std = f.std((0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def split_indices(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split of labels ``y``: (train indices, val indices), each sorted."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(y).tolist():  # stratified, so every class is in both splits
        idx = rng.permutation(np.nonzero(y.numpy() == c)[0])
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return torch.tensor(sorted(train_idx), dtype=torch.long), torch.tensor(sorted(val_idx), dtype=torch.long)


def _split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int) -> tuple:
    tr, va = split_indices(y, val_fraction, seed)
    return x[tr], y[tr], x[va], y[va]


def load_digits_data(size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), upsampled to ``size``: no download needed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    img = torch.from_numpy(digits.images).float().div(16).unsqueeze(1).repeat(1, 3, 1, 1)
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    x = img.mul(255).round().clamp(0, 255).to(torch.uint8)
    y = torch.from_numpy(digits.target).long()
    tx, ty, vx, vy = _split(x, y, val_fraction, seed)
    mean, std = channel_stats(tx)
    return ImageData(tx, ty, vx, vy, [str(i) for i in range(10)], "sklearn digits (embedded default)", mean, std,
                     notes=["no --data given: using scikit-learn's bundled 8x8 digits, upsampled"], hflip=False,
                     loaded_with={"val_fraction": val_fraction, "seed": seed})


def list_folder(root: Path, classes: list[str] | None = None, limit_per_class: int | None = None,
                seed: int = 0) -> tuple[list[Path], list[int], list[str]]:
    """The image files of an ImageFolder (sorted per class; a seeded subset with ``limit_per_class``), their
    labels and the class names. Raises :class:`DataError` for a missing, flat or empty folder."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; give an ImageFolder directory (one sub-folder per class)")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give an ImageFolder directory (one sub-folder per class)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class>/<image files>")
    classes = classes or found
    missing = sorted(set(classes) - set(found))
    if missing:
        raise DataError(f"{root} lacks class folders {missing} that the training data has")
    paths: list[Path] = []
    labels: list[int] = []
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if limit_per_class is not None and len(files) > limit_per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), limit_per_class, replace=False))]
        paths += files
        labels += [label] * len(files)
    return paths, labels, classes


def decode_image(path: Path, size: int) -> torch.Tensor:
    """One image file as uint8 3 x size x size RGB: centre-cropped to a square, then bilinear-resized.

    Raises one of :data:`DECODE_ERRORS` for an unreadable file.
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        im = im.resize((size, size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def _read_folder(root: Path, size: int, classes: list[str] | None = None,
                 limit_per_class: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    paths, labels, classes = list_folder(root, classes, limit_per_class, seed)
    xs, ys, skipped = [], [], 0
    for path, label in zip(paths, labels):
        try:
            xs.append(decode_image(path, size))
            ys.append(label)
        except DECODE_ERRORS as exc:
            skipped += 1
            log.warning("skipping unreadable image %s (%s)", path, exc)
    if not xs:
        raise DataError(f"no readable images under {root} ({skipped} files could not be decoded)")
    if skipped:
        log.warning("%d unreadable image(s) skipped under %s", skipped, root)
    return torch.stack(xs), torch.tensor(ys), classes, skipped


def load_image_folder(root: str | Path, val: str | Path | None = None, size: int = 64, val_fraction: float = 0.2,
                      seed: int = 0, limit_per_class: int | None = None,
                      val_limit_per_class: int | None = None) -> ImageData:
    """An ImageFolder directory (``root/<class>/*.jpg``), with a ``val`` folder or else a seeded split.

    Images are centre-cropped to squares and stored at ``size`` pixels; pick ``size`` >= the largest resolution
    searched. ``limit_per_class`` takes a seeded random subset.
    """
    root = Path(root)
    x, y, classes, skipped = _read_folder(root, size, limit_per_class=limit_per_class, seed=seed)
    if val is not None:
        vx, vy, _, vskipped = _read_folder(Path(val), size, classes, val_limit_per_class, seed + 1)
        tx, ty, skipped = x, y, skipped + vskipped
    else:
        tx, ty, vx, vy = _split(x, y, val_fraction, seed)
    mean, std = channel_stats(tx)
    return ImageData(tx, ty, vx, vy, classes, str(root), mean, std, skipped=skipped,
                     loaded_with=folder_loader_args(root, val, limit_per_class, val_limit_per_class, val_fraction, seed))


def folder_loader_args(root: str | Path, val: str | Path | None, limit_per_class: int | None,
                       val_limit_per_class: int | None, val_fraction: float, seed: int) -> dict:
    """What :meth:`ImageData.describe` records of an ImageFolder's loading, for :func:`load_described`."""
    return {"source": str(Path(root).resolve()), "val": None if val is None else str(Path(val).resolve()),
            "limit_per_class": limit_per_class, "val_limit_per_class": val_limit_per_class,
            "val_fraction": val_fraction, "seed": seed}


def load_described(desc: dict, seed: int = 0) -> ImageData:
    """Reload the data a run recorded with :meth:`ImageData.describe` (scikit-learn digits, or an ImageFolder),
    replaying the recorded loader arguments so that the same images fall into the same split.

    Descriptions from older runs lack those arguments; they load with the loader's defaults and ``seed``. The
    recorded normalisation statistics replace the recomputed ones, because the run's weights were trained
    with those exact values.
    """
    source = str(desc.get("source", ""))
    if "storage_size" not in desc:
        raise DataError(f"the data description of {source or 'this run'} records no storage_size; "
                        "pass the data explicitly")
    size = int(desc["storage_size"])
    kw = {"seed": int(desc["seed"]) if desc.get("seed") is not None else seed}
    if desc.get("val_fraction") is not None:
        kw["val_fraction"] = float(desc["val_fraction"])
    if source.startswith("sklearn digits"):
        data = load_digits_data(size=size, **kw)
    else:
        kw.update({k: desc[k] for k in ("val", "limit_per_class", "val_limit_per_class") if desc.get(k) is not None})
        data = load_image_folder(source, size=size, **kw)
    if desc.get("mean") and desc.get("std"):
        data.mean = tuple(float(v) for v in desc["mean"])  # type: ignore[assignment]
        data.std = tuple(float(v) for v in desc["std"])  # type: ignore[assignment]
    return data
