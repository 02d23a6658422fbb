"""Datasets for supernet adaptation and subnet evaluation, held in memory and resized per Arch.

Images are decoded once into a uint8 tensor at a fixed storage size; each batch is then augmented and resized
to the resolution of the subnet that consumes it. On a 2-core machine this beats a DataLoader by far.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from natdeploy.errors import NatDeployError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        """What a run records about its data: its shape and statistics, and how :func:`load_described` reloads it."""
        return {"source": self.source, "classes": self.classes, "n_train": len(self.train_y),
                "n_val": len(self.val_y), "storage_size": int(self.train_x.shape[-1]), "mean": list(self.mean),
                "std": list(self.std), "skipped_images": self.skipped, "color_order": "RGB", "scale": "0..1",
                **self.loaded_with}

    def batches(self, split: str, batch_size: int, resolution: int, rng: np.random.Generator | None = None,
                augment: bool = False, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches at ``resolution`` (channels_last). Shuffled when ``rng`` is given."""
        x_all, y_all = (self.train_x, self.train_y) if split == "train" else (self.val_x, self.val_y)
        n = len(y_all) if limit is None else min(limit, len(y_all))
        order = rng.permutation(len(y_all))[:n] if rng is not None else np.arange(n)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        for start in range(0, n, batch_size):
            idx = torch.from_numpy(order[start:start + batch_size])
            x = x_all[idx].float().div_(255)
            if augment:
                x = _augment(x, rng or np.random.default_rng(start), self.hflip)
            x = resize(x, resolution)
            yield ((x - mean) / std).contiguous(memory_format=torch.channels_last), y_all[idx]


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of a float NCHW batch to ``resolution`` (a no-op when already that size)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def _augment(x: torch.Tensor, rng: np.random.Generator, hflip: bool = True) -> torch.Tensor:
    """Random crop after reflect-padding by 1/8 of the size, and horizontal flips (the CIFAR recipe)."""
    n, _, s, _ = x.shape
    pad = max(1, s // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offs = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flips = (rng.random(n) < 0.5) & hflip
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, offs[i, 0]:offs[i, 0] + s, offs[i, 1]:offs[i, 1] + s]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    f = x.float().div(255)
    mean = f.mean((0, 2, 3))
    std = f.std((0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(y).tolist():  # stratified, so every class is in both splits
        idx = rng.permutation(np.nonzero(y.numpy() == c)[0])
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    tr, va = torch.tensor(sorted(train_idx)), torch.tensor(sorted(val_idx))
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
    mean, std = _stats(tx)
    return ImageData(tx, ty, vx, vy, [str(i) for i in range(10)], "sklearn digits (embedded default)", mean, std,
                     notes=["no --data given: using scikit-learn's bundled 8x8 digits, upsampled"], hflip=False,
                     loaded_with={"val_fraction": val_fraction, "seed": seed})


def _read_folder(root: Path, size: int, classes: list[str] | None = None,
                 limit_per_class: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    from PIL import Image, UnidentifiedImageError

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
    xs, ys, skipped = [], [], 0
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if limit_per_class is not None and len(files) > limit_per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), limit_per_class, replace=False))]
        for path in files:
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    w, h = im.size
                    side = min(w, h)  # centre crop to a square, then resize to the storage size
                    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
                    im = im.resize((size, size), Image.BILINEAR)
                    xs.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
                    ys.append(label)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
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
    mean, std = _stats(tx)
    return ImageData(tx, ty, vx, vy, classes, str(root), mean, std, skipped=skipped,
                     loaded_with={"source": str(root.resolve()), "val": None if val is None else str(Path(val).resolve()),
                                  "limit_per_class": limit_per_class, "val_limit_per_class": val_limit_per_class,
                                  "val_fraction": val_fraction, "seed": seed})


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
