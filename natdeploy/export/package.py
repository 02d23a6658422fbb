"""Publishing a bundle: every file is written into a temporary folder beside the target, zipped, and only then
renamed into place, so a failed or interrupted export leaves no partial bundle."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

from natdeploy.export.errors import ExportError

log = logging.getLogger(__name__)


def zip_path_of(out: Path) -> Path:
    """The zip that sits beside the bundle folder: ``DIR.zip``."""
    return out.with_name(out.name + ".zip")


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing bundle folder or zip unless ``overwrite``; refuse a file where the folder should be."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another --out")
    if overwrite:
        return
    for path in (out, zip_path_of(out)):
        if path.exists():
            raise ExportError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_zip(path: Path, root: str, files: Mapping[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(f"{root}/{name}", date_time=(2024, 1, 1, 0, 0, 0))  # reproducible bytes
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)


def publish(files: Mapping[str, bytes], out: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``files`` as the folder ``out`` and the zip ``out.zip`` (files under ``<out name>/``); atomic per path.

    An existing bundle is replaced only with ``overwrite``; it is moved aside first and deleted only after the
    new folder is in place, so an error never loses both.
    """
    out = Path(out)
    zip_path = zip_path_of(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    fd, tmp_zip_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".zip.tmp", dir=out.parent)
    os.close(fd)
    tmp_zip = Path(tmp_zip_name)
    old: Path | None = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a bundle is meant to be shared
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        _write_zip(tmp_zip, out.name, files)
        os.chmod(tmp_zip, 0o666 & ~_umask())
        check_target(out, overwrite)  # again: another process may have created it while we verified
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        os.replace(tmp_zip, zip_path)
    except BaseException:
        if old is not None and not out.exists() and (old / out.name).exists():
            os.replace(old / out.name, out)
        raise
    finally:
        for leftover in (tmp, tmp_zip):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                leftover.unlink()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    log.info("wrote %s and %s", out, zip_path)
    return out, zip_path
