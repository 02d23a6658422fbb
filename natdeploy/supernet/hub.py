"""Supernets by name: Once-for-All's published MobileNetV3 supernets, fetched once into a local cache.

A name such as ``ofa_mbv3_d234_e346_k357_w1.0`` (OFA's own) is fetched from the base URL that OFA's model zoo
uses, or from ``NATDEPLOY_OFA_URL`` (a mirror), into ``$XDG_CACHE_HOME/natdeploy/supernets/`` (else
``~/.cache/natdeploy/supernets/``). The download is atomic (the whole file, checked, then renamed into place). Its
SHA-256 is recorded in ``checksums.json`` beside the cached files on first download and verified on every later
use and download, so a corrupt cache or a changed upstream file is an error, never a silently different supernet.
Nothing here touches the network unless a name that is not yet cached is resolved.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from natdeploy import __version__
from natdeploy.errors import CheckpointError
from natdeploy.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# OFA's published MobileNetV3 supernets (k357, e346, d234) and their width multipliers.
OFA_SUPERNETS: dict[str, float] = {"ofa_mbv3_d234_e346_k357_w1.0": 1.0, "ofa_mbv3_d234_e346_k357_w1.2": 1.2}
# Where OFA's model zoo fetches them from: this base URL followed by the name.
DEFAULT_OFA_URL = "https://raw.githubusercontent.com/han-cai/files/master/ofa/ofa_nets/"
CACHE_SUBDIR = "supernets"
CHECKSUMS_FILE = "checksums.json"
DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
# torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle stream.
_TORCH_MAGICS = (b"PK\x03\x04", b"\x80")


class DownloadError(CheckpointError):
    """A named supernet could not be fetched, or the fetched or cached file fails its checks."""


@dataclass(frozen=True)
class HubSettings:
    """Where supernets come from and go; read from the environment by :func:`hub_settings`."""

    base_url: str
    cache_dir: Path
    progress: bool  # False when NATDEPLOY_NO_PROGRESS=1


def hub_settings() -> HubSettings:
    """The one reader of the environment for downloads: NATDEPLOY_OFA_URL, XDG_CACHE_HOME, NATDEPLOY_NO_PROGRESS."""
    base = os.environ.get("NATDEPLOY_OFA_URL") or DEFAULT_OFA_URL
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return HubSettings(base_url=base, cache_dir=root / "natdeploy",
                       progress=os.environ.get("NATDEPLOY_NO_PROGRESS") != "1")


@dataclass(frozen=True)
class SupernetInfo:
    """A known supernet name, where it is fetched from, and what the cache holds of it."""

    name: str
    width: float
    url: str
    path: Path
    cached: bool
    size: int | None  # bytes of the cached file
    sha256: str | None  # the checksum recorded at first download


def _check_name(name: str) -> None:
    if name not in OFA_SUPERNETS:
        raise DownloadError(f"{name!r} is not a known supernet name; known: {', '.join(OFA_SUPERNETS)}")


def supernet_url(name: str, settings: HubSettings | None = None) -> str:
    """The URL a named supernet is fetched from (the base URL, then the name)."""
    _check_name(name)
    settings = settings or hub_settings()
    return settings.base_url.rstrip("/") + "/" + name


def supernet_cache_path(name: str, settings: HubSettings | None = None) -> Path:
    """Where a named supernet is cached, and where a file fetched by hand should be placed."""
    _check_name(name)
    return (settings or hub_settings()).cache_dir / CACHE_SUBDIR / name


def _checksums_path(settings: HubSettings) -> Path:
    return settings.cache_dir / CACHE_SUBDIR / CHECKSUMS_FILE


def _read_checksums(settings: HubSettings) -> dict[str, dict]:
    path = _checksums_path(settings)
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DownloadError(f"checksum record {path} is unreadable ({type(exc).__name__}); delete it to record "
                            "the cached supernets' checksums afresh") from None
    if not isinstance(records, dict):
        raise DownloadError(f"checksum record {path} is not a JSON object; delete it to record checksums afresh")
    return records


def _record_checksum(settings: HubSettings, name: str, sha256: str, size: int, url: str) -> None:
    records = _read_checksums(settings)  # read again just before writing: another process may have added one
    records[name] = {"sha256": sha256, "size": size, "url": url,
                     "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    atomic_write_text(_checksums_path(settings), json.dumps(records, indent=2, sort_keys=True) + "\n")


def list_supernets(settings: HubSettings | None = None) -> list[SupernetInfo]:
    """The known supernet names, each with its URL, its cache path, and whether (and what) is cached."""
    settings = settings or hub_settings()
    records = _read_checksums(settings)
    out = []
    for name, width in OFA_SUPERNETS.items():
        path = supernet_cache_path(name, settings)
        cached = path.is_file()
        out.append(SupernetInfo(name=name, width=width, url=supernet_url(name, settings), path=path, cached=cached,
                                size=path.stat().st_size if cached else None,
                                sha256=(records.get(name) or {}).get("sha256")))
    return out


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_torch_file(head: bytes, what: str) -> None:
    if not head.startswith(_TORCH_MAGICS):
        raise DownloadError(f"{what} is not a PyTorch checkpoint (it starts with {head[:16]!r}); "
                            "the server sent something else, such as an error page")


def _fetch_bytes(url: str, dest: Path, show_progress: bool, timeout: float) -> bytes:
    """The whole body at ``url``, checked against its Content-Length; one-line DownloadErrors otherwise."""
    by_hand = f"fetch {url} by hand and place it at {dest}, or set NATDEPLOY_OFA_URL to a mirror"
    request = urllib.request.Request(url, headers={"User-Agent": f"natdeploy/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}; {by_hand}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not reach {url} ({reason}); if offline, {by_hand}") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        from tqdm.auto import tqdm

        chunks: list[bytes] = []
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, leave=False,
                  disable=not show_progress) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    chunks.append(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(f"download of {url} broke off after {got} bytes ({type(exc).__name__}); "
                                    f"run again, or {by_hand}") from None
    if total is not None and got != total:
        raise DownloadError(f"download of {url} is truncated: {got} of {total} bytes arrived; run again, or {by_hand}")
    return b"".join(chunks)


def fetch_supernet(name: str, *, progress: bool | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                   settings: HubSettings | None = None) -> Path:
    """The cached checkpoint of a named OFA supernet, downloaded first if it is not cached; its SHA-256 is
    recorded on first download (or first use of a file placed by hand) and verified on every later call.

    ``progress`` shows a download bar; by default only when stderr is a terminal and NATDEPLOY_NO_PROGRESS is unset.
    """
    settings = settings or hub_settings()
    path, url = supernet_cache_path(name, settings), supernet_url(name, settings)
    recorded = (_read_checksums(settings).get(name) or {}).get("sha256")
    if path.is_file():
        digest = _sha256_file(path)
        if recorded is None:
            with open(path, "rb") as f:
                _check_torch_file(f.read(16), f"cached supernet {path}")
            _record_checksum(settings, name, digest, path.stat().st_size, url)
            log.info("recorded the SHA-256 of %s (a file placed by hand): %s", path, digest)
        elif digest != recorded:
            raise DownloadError(f"cached supernet {path} has SHA-256 {digest[:12]}..., not the {recorded[:12]}... "
                                f"recorded at its first download; it is corrupt or was replaced: delete it to "
                                "download it again")
        return path
    show = (settings.progress and sys.stderr.isatty()) if progress is None else progress
    log.info("downloading supernet %s from %s to %s", name, url, path)
    data = _fetch_bytes(url, path, show, timeout)
    _check_torch_file(data[:16], f"the file downloaded from {url}")
    digest = hashlib.sha256(data).hexdigest()
    if recorded is not None and digest != recorded:
        raise DownloadError(f"the file downloaded from {url} has SHA-256 {digest[:12]}..., not the "
                            f"{recorded[:12]}... recorded at the first download; the server sent a different file. "
                            f"If that change is expected, delete the entry {name!r} from {_checksums_path(settings)}")
    atomic_write_bytes(path, data)
    if recorded is None:
        _record_checksum(settings, name, digest, len(data), url)
    return path


def resolve_supernet(source: str | os.PathLike, *, progress: bool | None = None,
                     timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """A supernet checkpoint path for ``source``: an existing file as it is (natdeploy's or OFA's format), else a
    known OFA name (see :data:`OFA_SUPERNETS`), fetched into the cache if needed. Give the result to
    :func:`natdeploy.supernet.load_supernet`. (``scratch``, a fresh supernet, is no file: callers handle it first.)
    """
    path = Path(source)
    if path.exists():
        return path
    if str(source) in OFA_SUPERNETS:
        return fetch_supernet(str(source), progress=progress, timeout=timeout)
    raise CheckpointError(f"supernet {str(source)!r} is neither an existing checkpoint file nor a known name; "
                          f"give a .pth path or one of: {', '.join(OFA_SUPERNETS)}")
