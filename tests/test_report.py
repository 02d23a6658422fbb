"""The run report: its numbers, its content on a real tiny run, and how it renders in headless Chromium.

The browser is driven over the Chrome DevTools Protocol on ``--remote-debugging-pipe`` (file descriptors 3 and 4,
NUL-separated JSON), which needs no websocket package and no TCP port.
"""

import base64
import fcntl
import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from natdeploy.run_folder import RunFolder, RunFolderError, best_within
from natdeploy.search.html_report import (BUNDLE_FORMAT, REPORT, find_exports, hypervolume_2d, hypervolume_history,
                                          render_report, write_report)
from tiny_fixtures import tiny_space

SPACE = tiny_space()
SECTIONS = ["Accuracy-latency front per iteration", "Best subnet per budget",
            "Surrogate and hypervolume per iteration", "Latency tables"]


def test_hypervolume_2d_known_areas():
    ref = (1.0, 1.0)
    assert hypervolume_2d(np.array([[0.5, 0.5]]), ref) == pytest.approx(0.25)
    # two staircase points: the boxes [0.2,1]x[0.6,1] and [0.5,1]x[0.2,0.6]
    assert hypervolume_2d(np.array([[0.2, 0.6], [0.5, 0.2]]), ref) == pytest.approx(0.8 * 0.4 + 0.5 * 0.4)
    # a dominated point and one beyond the reference add nothing
    assert hypervolume_2d(np.array([[0.2, 0.6], [0.5, 0.2], [0.6, 0.7], [1.2, 0.0]]), ref) == pytest.approx(0.52)
    assert hypervolume_2d(np.zeros((0, 2)), ref) == 0.0


def test_bundle_format_matches_the_exporter():
    from natdeploy.export.bundle import BUNDLE_FORMAT as EXPORTED

    assert BUNDLE_FORMAT == EXPORTED


@pytest.fixture(scope="module")
def table_path(tiny_table):
    return tiny_table


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_nat_run):
    """A real two-iteration NAT run on 64 digits (a copy of conftest's tiny_nat_run), plus an export bundle's
    metadata for its best subnet."""
    out = Path(shutil.copytree(tiny_nat_run.run, tmp_path_factory.mktemp("runs") / "tiny"))
    state = RunFolder(out).read_state()
    best = best_within(state.archive, state.budgets)
    bundle = out / f"bundle-{best.arch}"
    bundle.mkdir()
    (bundle / "metadata.json").write_text(json.dumps({
        "format": BUNDLE_FORMAT, "arch": {"string": best.arch},
        "latency": {"cpu": {"predicted_ms": best.latency_ms["cpu"], "measured_ms": 0.4321,
                            "measured_at_table_speed_ms": 0.4123}}}))
    (out / "junk").mkdir()
    (out / "junk" / "metadata.json").write_text("{not json")
    return out


def test_search_writes_the_report(run_dir):
    page = (run_dir / REPORT).read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert page.count("src='data:image/png;base64,") == 2
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # the table the search used, with its provenance
    assert "the table the search used" in page and "onnxruntime" in page and "runtime_version" in page


def test_report_content(run_dir, tmp_path, table_path):
    state = RunFolder(run_dir).read_state()
    best = best_within(state.archive, state.budgets)
    assert [e for e in state.archive if e.arch != best.arch]  # another subnet, not exported
    hv = hypervolume_history(state.archive, "cpu")
    assert [i for i, _ in hv] == [0, 1, 2]
    assert all(0 <= v <= 1.21 for _, v in hv) and hv[-1][1] >= hv[0][1] - 1e-12
    assert [p.name for p, _ in find_exports(run_dir)] == [f"bundle-{best.arch}"]  # the junk one is skipped

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    out = write_report(run_dir, tmp_path / "r" / "report.html", tables={"cpu": broken})
    page = out.read_text()
    assert "could not be loaded: TableError" in page and str(broken) in page
    assert f"<code>{best.arch}</code>" in page
    assert "0.432 ms (0.412 ms at the table's speed)" in page
    assert page.count("<td class='blk") == sum(best_arch_depths(best.arch))
    # a table given by path loads, and the store's default is used for devices not given
    assert "could not be loaded" not in render_report(run_dir, tables={"cpu": table_path})

    with pytest.raises(RunFolderError, match="holds no search state"):
        write_report(tmp_path / "empty")


def test_two_devices_get_a_panel_and_a_best_each(run_dir, tmp_path, table_path):
    """The same run's state as if it had searched a second device twice as slow (no second search needed)."""
    state = RunFolder(run_dir).read_state()
    for e in state.archive:
        e.latency_ms["slow"] = 2 * e.latency_ms["cpu"]
    state.devices.append("slow")
    state.budgets["slow"] = 2 * state.budgets["cpu"]
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / RunFolder.STATE).write_text(state.to_json())
    page = write_report(twin, tables={"cpu": table_path, "slow": tmp_path / "missing.json"}).read_text()
    assert "Best within all budgets of the run" in page
    assert "Best with only cpu &le;" in page and "Best with only slow &le;" in page
    assert "<th>HV cpu</th>" in page and "<th>HV slow</th>" in page
    assert "could not be loaded: TableError: latency table" in page and "does not exist" in page
    assert page.count("not exported") >= 2


def best_arch_depths(arch: str) -> list[int]:
    from natdeploy.space import Arch

    return list(Arch.from_string(arch).d)


# ----- headless Chromium ----------------------------------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, binary: str, profile: Path, log_path: Path) -> None:
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()

        def child_fds() -> None:  # runs in the child: the protocol's fixed fds 3 (commands) and 4 (replies)
            a = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.close(a)
            os.close(b)

        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=child_fds, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        self.events: list[dict] = []
        self._replies: queue.Queue = queue.Queue()
        self._next = 0
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_r, 1 << 16)
            if not chunk:
                self._replies.put(None)
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                self._replies.put(json.loads(raw))

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        return self._wait(lambda m: m.get("id") == self._next, timeout, method)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        for event in self.events:
            if event["method"] == method:
                return event
        return self._wait(lambda m: m.get("method") == method, timeout, method)

    def _wait(self, match, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"Chromium did not answer {what} within {timeout:.0f} s") from None
            if msg is None:
                raise RuntimeError(f"Chromium closed the DevTools pipe while waiting for {what}")
            if "method" in msg:
                self.events.append(msg)
            if match(msg):
                if "error" in msg:
                    raise RuntimeError(f"{what}: {msg['error']}")
                return msg.get("result", msg.get("params", {}))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        os.close(self._to_w)
        self._log.close()


PAGE_FACTS = """
Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => ({
  headings: [...document.querySelectorAll('section > h2')].map(h => h.textContent),
  images: [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,
                                          shown: i.getBoundingClientRect().width})),
  archCells: document.querySelectorAll('table.arch td.blk').length,
  tableRows: document.querySelectorAll('#tables table.kv tr').length,
  scripts: document.scripts.length,
  height: document.documentElement.scrollHeight,
}))
"""


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (the README's set-up installs Debian's "
                                                "package: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    report = run_dir / REPORT
    browser = DevTools(_chromium(), tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": report.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        facts = browser.send("Runtime.evaluate", {"expression": PAGE_FACTS, "awaitPromise": True,
                                                  "returnByValue": True}, session=session)["result"]["value"]
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=session)["data"]
    finally:
        browser.close()
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot))

    assert facts["headings"] == SECTIONS
    assert len(facts["images"]) == 2 and facts["scripts"] == 0
    for img in facts["images"]:
        assert img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, img
    assert facts["archCells"] >= 10 and facts["tableRows"] > 5

    errors = [e for e in browser.events
              if (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or e["method"] == "Runtime.exceptionThrown"
              or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    fetched = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
    assert fetched and all(u.split(":", 1)[0] in ("file", "data", "about") for u in fetched), fetched

    from matplotlib.image import imread

    png = base64.b64decode(shot)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = imread(io.BytesIO(png), format="png")
    assert pixels.shape[0] >= facts["height"] * 0.9 and pixels.shape[1] >= 800
    assert pixels[..., :3].std() > 0.05  # not a blank page
