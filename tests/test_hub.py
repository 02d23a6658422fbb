"""Supernets by name, end to end against a loopback HTTP server that serves a real OFA supernet checkpoint.

No test contacts an outside host: NATDEPLOY_OFA_URL always points at 127.0.0.1.
"""

import hashlib
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from natdeploy.errors import CheckpointError
from natdeploy.space import SearchSpace
from natdeploy.supernet import (OFA_SUPERNETS, DownloadError, fetch_supernet, list_supernets, load_supernet,
                                resolve_supernet)
from natdeploy.supernet.hub import DEFAULT_OFA_URL, hub_settings

ofa_networks = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                                   reason="the ofa package (test extra) is not installed")

W10, W12 = "ofa_mbv3_d234_e346_k357_w1.0", "ofa_mbv3_d234_e346_k357_w1.2"


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ofa_checkpoint():
    """(OFA's reference supernet, its checkpoint bytes as OFA's zoo files hold them: {"state_dict": ...} with the
    published files' older key names)."""
    ref = ofa_networks.OFAMobileNetV3(n_classes=1000, width_mult=1.0, ks_list=[3, 5, 7],
                                      expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], dropout_rate=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen) * 0.1)
    legacy = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
              for k, v in ref.state_dict().items()}
    return ref.eval(), _torch_bytes({"state_dict": legacy})


class _Server:
    """Serves ``routes[path] = (body, mode)``; mode "ok", or "truncate" (full Content-Length, half the body)."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404, "Not Found")
                    return
                body, mode = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/ofa_nets/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def hub(server, tmp_path, monkeypatch):
    """A fresh cache under tmp_path and the loopback server as the mirror; proxies off for loopback."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NATDEPLOY_OFA_URL", server.base)
    monkeypatch.setenv("NATDEPLOY_NO_PROGRESS", "1")
    server.routes.clear()
    server.requests.clear()
    return server


def _path(name: str) -> str:
    return "/ofa_nets/" + name


def _cache_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache" / "natdeploy" / "supernets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_download_cache_hit_and_load(hub, ofa_checkpoint, tmp_path):
    ref, body = ofa_checkpoint
    hub.routes[_path(W10)] = (body, "ok")
    path = resolve_supernet(W10)
    assert path == tmp_path / "cache" / "natdeploy" / "supernets" / W10
    assert path.read_bytes() == body and hub.requests == [_path(W10)]
    records = json.loads((path.parent / "checksums.json").read_text())
    assert records[W10]["sha256"] == hashlib.sha256(body).hexdigest() and records[W10]["size"] == len(body)
    assert resolve_supernet(W10) == path and hub.requests == [_path(W10)]  # a cache hit: no second request
    assert _cache_files(tmp_path) == ["checksums.json", W10]  # no temporary file left behind

    info = {i.name: i for i in list_supernets()}
    assert set(info) == set(OFA_SUPERNETS)
    assert info[W10].cached and info[W10].size == len(body) and info[W10].sha256 == records[W10]["sha256"]
    assert not info[W12].cached and info[W12].url == hub.base + W12 and info[W12].sha256 is None

    # The downloaded OFA checkpoint loads through natdeploy's OFA path and computes what OFA computes.
    net = load_supernet(path).eval()
    arch = SearchSpace.preset("ofa").sample(np.random.default_rng(0)).replace(w=1.0, r=64)
    ref.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (net(x, arch) - ref(x)).abs().max().item() <= 1e-4


def test_w12_name_fetches_base_url_plus_name(hub):
    body = _torch_bytes({"state_dict": {"x": torch.zeros(2)}})
    hub.routes[_path(W12)] = (body, "ok")
    assert fetch_supernet(W12, progress=True).read_bytes() == body and hub.requests == [_path(W12)]


def test_truncated_download_leaves_nothing(hub, ofa_checkpoint, tmp_path):
    _, body = ofa_checkpoint
    hub.routes[_path(W10)] = (body, "truncate")
    with pytest.raises(DownloadError) as info:
        resolve_supernet(W10)
    msg = str(info.value)
    assert "truncated" in msg and f"{len(body) // 2} of {len(body)} bytes" in msg and hub.base + W10 in msg
    assert "\n" not in msg
    assert _cache_files(tmp_path) == []  # neither a partial file nor a checksum recorded
    hub.routes[_path(W10)] = (body, "ok")  # the next try succeeds
    assert resolve_supernet(W10).read_bytes() == body


def test_wrong_checksum_after_a_recorded_one(hub, ofa_checkpoint, tmp_path):
    _, body = ofa_checkpoint
    hub.routes[_path(W10)] = (body, "ok")
    path = resolve_supernet(W10)
    # The cached file goes bad: the recorded checksum catches it.
    path.write_bytes(body[:-10] + b"0123456789")
    with pytest.raises(DownloadError, match="SHA-256.*delete it to download it again") as info:
        resolve_supernet(W10)
    assert str(path) in str(info.value)
    # The server now sends another (valid) checkpoint: the download is refused and nothing replaces the cache.
    path.unlink()
    other = _torch_bytes({"state_dict": {"x": torch.ones(3)}})
    hub.routes[_path(W10)] = (other, "ok")
    with pytest.raises(DownloadError, match="sent a different file") as info:
        resolve_supernet(W10)
    assert "\n" not in str(info.value) and "checksums.json" in str(info.value)
    assert not path.exists()


def test_404_and_non_checkpoint_bodies(hub, tmp_path):
    with pytest.raises(DownloadError) as info:
        resolve_supernet(W10)
    msg = str(info.value)
    assert "HTTP 404" in msg and hub.base + W10 in msg and str(tmp_path / "cache") in msg and "\n" not in msg
    hub.routes[_path(W10)] = (b"<!DOCTYPE html><html>rate limited</html>", "ok")
    with pytest.raises(DownloadError, match="not a PyTorch checkpoint"):
        resolve_supernet(W10)
    assert _cache_files(tmp_path) == []


def test_offline_says_url_and_where_to_place_the_file(hub, ofa_checkpoint, monkeypatch, tmp_path):
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/mirror"
    monkeypatch.setenv("NATDEPLOY_OFA_URL", base)
    dest = tmp_path / "cache" / "natdeploy" / "supernets" / W10
    with pytest.raises(DownloadError) as info:
        resolve_supernet(W10, timeout=5)
    msg = str(info.value)
    assert f"{base}/{W10}" in msg and str(dest) in msg and "\n" not in msg
    # A file fetched by hand and placed there is used, and its checksum recorded on first use.
    _, body = ofa_checkpoint
    dest.parent.mkdir(parents=True)
    dest.write_bytes(body)
    assert resolve_supernet(W10) == dest
    assert json.loads((dest.parent / "checksums.json").read_text())[W10]["sha256"] == hashlib.sha256(body).hexdigest()


def test_local_paths_and_unknown_names(hub, tmp_path):
    local = tmp_path / "mine.pth"
    local.write_bytes(b"anything")
    assert resolve_supernet(local) == local and resolve_supernet(str(local)) == local
    with pytest.raises(CheckpointError, match="neither an existing checkpoint file nor a known name.*w1.2"):
        resolve_supernet("ofa_mbv3_d234_e346_k357_w1.1")
    assert hub.requests == []


def test_settings_defaults(monkeypatch, tmp_path):
    for var in ("NATDEPLOY_OFA_URL", "XDG_CACHE_HOME", "NATDEPLOY_NO_PROGRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = hub_settings()
    assert settings.base_url == DEFAULT_OFA_URL and settings.cache_dir == tmp_path / ".cache" / "natdeploy"
    assert settings.progress
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says
    assert hub_settings().cache_dir == tmp_path / ".cache" / "natdeploy"
