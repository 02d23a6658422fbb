"""``report.html``: one self-contained page that shows what a NAT run found and how it got there.

The page holds no scripts, no stylesheets or fonts from elsewhere and no links to fetch: every plot is a PNG
embedded as a ``data:`` URI, so the file can be mailed, archived or opened offline. It reads the run folder only
(state.json and any export bundles inside it) plus the latency tables, and writes nothing but the report.

Hypervolume: for each device, the 2-D front of (error, predicted latency) of the archive members evaluated up to
iteration i. Each objective is normalised to [0, 1] by the whole archive's minimum and maximum (so the numbers
of one run compare across iterations, not across runs), and the reference point is (1.1, 1.1) in those units;
the largest possible value is thus 1.21. Accuracies are the archive's latest ones: a run that re-evaluates its
archive after each adaptation shows every iteration's front with the final supernet's accuracies.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from natdeploy import __version__
from natdeploy.fileio import atomic_write_text
from natdeploy.run_folder import ArchiveEntry, RunFolder, SearchState, best_within
from natdeploy.space import MAX_DEPTH, N_STAGES, Arch

log = logging.getLogger(__name__)
__all__ = ["write_report", "render_report", "hypervolume_2d", "hypervolume_history", "find_exports", "REPORT"]

REPORT = "report.html"
BUNDLE_FORMAT = "natdeploy.bundle"  # natdeploy.export.bundle.BUNDLE_FORMAT, not imported: export pulls in TensorFlow
HV_REFERENCE = 1.1  # reference point on each normalised objective
PROVENANCE_FIRST = ("device", "host", "hostname", "runtime", "runtime_version", "threads", "cpu_mask", "precision",
                    "batch_size", "statistic", "date", "natdeploy_version")
TableSource = Any  # a LatencyTable, or the path of one


# ----- numbers ----------------------------------------------------------------------------------------------------
def hypervolume_2d(points: np.ndarray, reference: Sequence[float]) -> float:
    """The area dominated by ``points`` (N x 2, both minimised) and bounded by ``reference``; points not better
    than the reference on both objectives add nothing."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[(pts[:, 0] < reference[0]) & (pts[:, 1] < reference[1])]
    area, best_y = 0.0, float(reference[1])
    for x, y in pts[np.lexsort((pts[:, 1], pts[:, 0]))]:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return float(area)


def _normalised(values: np.ndarray) -> np.ndarray:
    lo, hi = values.min(axis=0), values.max(axis=0)
    return (values - lo) / np.where(hi > lo, hi - lo, 1.0)


def hypervolume_history(archive: Sequence[ArchiveEntry], device: str) -> list[tuple[int, float]]:
    """(iteration, normalised hypervolume of (error, latency on ``device``) of the members up to it) per iteration."""
    if not archive:
        return []
    its = np.array([e.iteration for e in archive])
    norm = _normalised(np.array([[1 - e.accuracy, e.latency_ms[device]] for e in archive], dtype=float))
    ref = (HV_REFERENCE, HV_REFERENCE)
    return [(int(i), round(hypervolume_2d(norm[its <= i], ref), 5)) for i in sorted(set(its.tolist()))]


def _front_2d(points: np.ndarray) -> np.ndarray:
    """The non-dominated rows of (latency, accuracy) with latency minimised and accuracy maximised, by latency."""
    out, best = [], -np.inf
    for lat, acc in points[np.lexsort((-points[:, 1], points[:, 0]))]:
        if acc > best:
            out.append((lat, acc))
            best = acc
    return np.array(out).reshape(-1, 2)


# ----- what the run folder holds besides its state ----------------------------------------------------------------
def find_exports(run_dir: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, metadata) of each export bundle inside the run folder (one or two levels down); others are skipped
    with a log line."""
    run_dir = Path(run_dir)
    found = []
    for path in sorted([*run_dir.glob("*/metadata.json"), *run_dir.glob("*/*/metadata.json")]):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable export metadata %s: %s", path, exc)
            continue
        if isinstance(meta, dict) and meta.get("format") == BUNDLE_FORMAT:
            found.append((path.parent, meta))
    return found


def _load_tables(devices: Sequence[str], tables: Mapping[str, TableSource] | None) -> list[tuple[str, str, Any]]:
    """(device, where, LatencyTable or the reason it could not be loaded) for each device."""
    from natdeploy.latency.store import table_path
    from natdeploy.latency.table import LatencyTable

    out = []
    for device in devices:
        src = (tables or {}).get(device)
        if src is None or isinstance(src, (str, os.PathLike)):
            path = Path(src) if src is not None else table_path(device)
            try:
                out.append((device, str(path), LatencyTable.load(path)))
            except Exception as exc:  # any failure is shown on the page; a report never fails for a table
                out.append((device, str(path), f"could not be loaded: {type(exc).__name__}: {exc}"))
        else:
            out.append((device, "the table the search used", src))
    return out


# ----- plots --------------------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _data_uri(png_b64: str) -> str:
    return f"data:image/png;base64,{png_b64}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fronts_png(archive: Sequence[ArchiveEntry], devices: Sequence[str], budgets: Mapping[str, float]) -> str:
    """One panel per device: every member (by the iteration that added it) and the front up to each iteration."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(devices), figsize=(6.2 * len(devices), 4.4), dpi=110, squeeze=False)
    its = np.array([e.iteration for e in archive])
    last = max(int(its.max()), 1)
    cmap = plt.get_cmap("viridis")
    for ax, device in zip(axes[0], devices):
        pts = np.array([[e.latency_ms[device], 100 * e.accuracy] for e in archive], dtype=float)
        ax.scatter(pts[:, 0], pts[:, 1], c=[cmap(i / last) for i in its], s=14, alpha=0.45)
        right = pts[:, 0].max()
        for i in sorted(set(its.tolist())):
            front = _front_2d(pts[its <= i])
            front = np.vstack([front, [right, front[-1, 1]]])  # carried to the right edge: one point still shows
            ax.step(front[:, 0], front[:, 1], where="post", color=cmap(i / last), lw=1.6, marker=".",
                    label=f"front, iter {i}")
        if device in budgets:
            ax.axvline(budgets[device], color="crimson", ls="--", lw=1.2, label=f"budget {budgets[device]:g} ms")
        ax.set_title(device)
        ax.set_xlabel(f"predicted latency on {device} (ms)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _progress_png(tau: Sequence[dict], hv: Mapping[str, list[tuple[int, float]]]) -> str:
    """Kendall tau of the surrogate (both kinds) and the normalised hypervolume, per iteration."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    for key, label in (("kendall_tau_unseen", "new candidates (unseen)"), ("kendall_tau_cv", "archive, 5-fold CV")):
        xs = [t["iteration"] for t in tau if t.get(key) is not None and np.isfinite(t[key])]
        ys = [t[key] for t in tau if t.get(key) is not None and np.isfinite(t[key])]
        ax1.plot(xs, ys, marker="o", label=label)
    ax1.set_ylim(-1.05, 1.05)
    ax1.set_title("surrogate's Kendall tau")
    for device, series in hv.items():
        ax2.plot([i for i, _ in series], [v for _, v in series], marker="o", label=device)
    ax2.set_title(f"hypervolume (normalised, reference {HV_REFERENCE:g}, {HV_REFERENCE:g})")
    for ax in (ax1, ax2):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# ----- HTML pieces --------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value))


def _ms(value: Any) -> str:
    return f"{value:.3f} ms" if isinstance(value, (int, float)) and not isinstance(value, bool) else _e(value)


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def arch_grid(arch: Arch) -> str:
    """The Arch as stages x blocks: kernel and expand ratio per block; blocks beyond a stage's depth empty."""
    head = "".join(f"<th>block {j + 1}</th>" for j in range(MAX_DEPTH))
    rows = []
    for s in range(N_STAGES):
        cells = []
        for j in range(MAX_DEPTH):
            i = s * MAX_DEPTH + j
            if j < arch.d[s]:
                cells.append(f"<td class='blk k{arch.ks[i]} e{arch.e[i]}'>k{arch.ks[i]}<br>e{arch.e[i]}</td>")
            else:
                cells.append("<td class='skip' title='skipped block'></td>")
        rows.append(f"<tr><th>stage {s + 1} (d={arch.d[s]})</th>{''.join(cells)}</tr>")
    return (f"<table class='arch'><caption>resolution {arch.r} px, width x{arch.w:g}</caption>"
            f"<tr><th></th>{head}</tr>{''.join(rows)}</table>")


def _measured(exports: Sequence[tuple[Path, dict]], arch: str, device: str) -> str:
    """The measured latency of ``arch`` on ``device`` from each export bundle of it, or 'not exported'."""
    out = []
    for folder, meta in exports:
        if meta.get("arch", {}).get("string") != arch:
            continue
        lat = meta.get("latency", {}).get(device)
        if not isinstance(lat, dict):
            out.append(f"{_e(folder.name)}: not measured on {_e(device)}")
            continue
        text = _ms(lat.get("measured_ms"))
        if isinstance(lat.get("measured_at_table_speed_ms"), (int, float)):
            text += f" ({_ms(lat['measured_at_table_speed_ms'])} at the table's speed)"
        out.append(f"{_e(folder.name)}: {text}")
    return "<br>".join(out) if out else "not exported"


def _best_section(state: SearchState, exports: Sequence[tuple[Path, dict]]) -> str:
    cases = [("Best within all budgets of the run" if state.budgets else "Most accurate (the run has no budget)",
              dict(state.budgets))]
    if len(state.budgets) > 1:
        cases += [(f"Best with only {_e(d)} &le; {b:g} ms", {d: b}) for d, b in state.budgets.items()]
    parts = ["<p>Each Arch: the five elastic stages by their four blocks, k = kernel, e = expand ratio; colour: "
             "kernel (light 3, mid 5, dark 7), bold: expand 6, hatched: a skipped block. Predicted latencies are the "
             "search's; measured ones come from the export bundles in the run folder.</p>"]
    for label, budgets in cases:
        entry = best_within(state.archive, budgets)
        parts.append(f"<div class='best'><h3>{label}</h3>")  # label is HTML already (names escaped above)
        if entry is None:
            parts.append("<p>no archive member meets these budgets</p></div>")
            continue
        rows = "".join(f"<tr><td>{_e(d)}</td><td>{_ms(state.budgets.get(d, '-'))}</td>"
                       f"<td>{_ms(entry.latency_ms.get(d, '-'))}</td><td>{_measured(exports, entry.arch, d)}</td></tr>"
                       for d in state.devices)
        parts.append(
            f"<p><code>{_e(entry.arch)}</code>: top-1 {100 * entry.accuracy:.2f}%, {entry.madds / 1e6:.1f}M MAdds, "
            f"{entry.params / 1e6:.2f}M params, added in iteration {entry.iteration}</p>"
            f"{arch_grid(Arch.from_string(entry.arch))}"
            "<table class='lat'><tr><th>device</th><th>budget</th><th>predicted</th><th>measured after export</th>"
            f"</tr>{rows}</table></div>")
    return "".join(parts)


def _tables_section(loaded: Sequence[tuple[str, str, Any]]) -> str:
    parts = []
    for device, where, table in loaded:
        parts.append(f"<div class='table'><h3>{_e(device)}</h3><p>{_e(where)}</p>")
        if isinstance(table, str):
            parts.append(f"<p class='error'>{_e(table)}</p></div>")
            continue
        prov = dict(table.provenance)
        keys = [k for k in PROVENANCE_FIRST if k in prov] + sorted(k for k in prov if k not in PROVENANCE_FIRST)
        rows = [("ops measured", len(table.ops)), ("whole subnets measured", len(table.e2e)),
                ("predictions use", table.statistic), ("drift", f"{table.drift:.4f}"),
                ("speed elasticity", table.speed_elasticity), ("fingerprint", table.fingerprint()[:16])]
        parts.append(_kv_table([(k, prov[k]) for k in keys] + rows) + "</div>")
    return "".join(parts)


def _number(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else _e(value)


def _iterations_table(state: SearchState, hv: Mapping[str, list[tuple[int, float]]]) -> str:
    its = sorted({e.iteration for e in state.archive})
    tau = {t["iteration"]: t for t in state.tau_history}
    timing = {t["iteration"]: t for t in state.timings if "iteration" in t}
    head = ("<tr><th>iteration</th><th>archive</th><th>tau unseen</th><th>tau CV</th><th>surrogate</th>"
            + "".join(f"<th>HV {_e(d)}</th>" for d in hv) + "<th>time (s)</th></tr>")
    rows = []
    for i in its:
        t = tau.get(i, {})
        hvs = "".join(f"<td>{dict(series).get(i, '-')}</td>" for series in hv.values())
        rows.append(f"<tr><td>{i}</td><td>{sum(e.iteration <= i for e in state.archive)}</td>"
                    f"<td>{_number(t.get('kendall_tau_unseen'))}</td><td>{_number(t.get('kendall_tau_cv'))}</td>"
                    f"<td>{_e(t.get('surrogate', '-'))}</td>{hvs}<td>{_e(timing.get(i, {}).get('total_s', '-'))}</td>"
                    "</tr>")
    return f"<table class='iters'>{head}{''.join(rows)}</table>"


STYLE = """
body{font-family:sans-serif;margin:1.5em auto;max-width:1300px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left}
table.kv th{background:#f4f4f4}img{max-width:100%;height:auto;display:block}
table.arch td{width:3.2em;height:2.6em;text-align:center;font-size:.85em}table.arch caption{text-align:left}
td.skip{background:repeating-linear-gradient(45deg,#fff,#fff 4px,#eee 4px,#eee 8px)}
td.k3{background:#dbeafe}td.k5{background:#93c5fd}td.k7{background:#3b82f6;color:#fff}
td.e6{font-weight:bold}.best,.table{display:inline-block;vertical-align:top;margin:0 2em 1em 0}
.error{color:#b00020}code{background:#f4f4f4;padding:0 .2em}
"""


def render_report(run_dir: str | os.PathLike, tables: Mapping[str, TableSource] | None = None) -> str:
    """The report's HTML for the run in ``run_dir`` (see :func:`write_report`)."""
    folder = RunFolder(run_dir)
    state = folder.read_state()
    archive, devices = state.archive, state.devices
    exports = find_exports(folder.path)
    hv = {d: hypervolume_history(archive, d) for d in devices}
    title = f"natdeploy run {folder.path.name}"
    summary = _kv_table([
        ("run folder", folder.path), ("devices", ", ".join(devices) or "none"),
        ("budgets", ", ".join(f"{d} {b:g} ms" for d, b in state.budgets.items()) or "none"),
        ("completed iterations", state.completed_iteration), ("archive size", len(archive)),
        ("data", f"{state.data.get('source')} ({state.n_classes} classes, {state.data.get('n_train')} train images)"),
        ("search space", f"{state.space.get('name')}: resolutions {state.space.get('resolutions')}, widths "
                         f"{state.space.get('widths')}"),
        ("supernet", state.supernet_source), ("objectives", ", ".join(state.config.get("objectives", []))),
        ("exports found", ", ".join(p.name for p, _ in exports) or "none")])
    body = [f"<h1>{_e(title)}</h1>", summary]
    body.append("<section id='fronts'><h2>Accuracy-latency front per iteration</h2>")
    if archive and devices:
        fronts = _data_uri(_fronts_png(archive, devices, state.budgets))
        body.append("<p>Each step line is the front of the archive members evaluated up to that iteration; dots are "
                    "all members, coloured by the iteration that added them; dashed lines are the budgets.</p>"
                    f"<img alt='accuracy-latency fronts' src='{fronts}'>")
    else:
        body.append("<p>the archive is empty or the run searched no device: no front to draw</p>")
    body.append("</section><section id='best'><h2>Best subnet per budget</h2>")
    body.append(_best_section(state, exports) if archive else "<p>the archive is empty</p>")
    body.append("</section><section id='progress'><h2>Surrogate and hypervolume per iteration</h2>")
    if archive:
        body.append(f"<img alt='tau and hypervolume' src='{_data_uri(_progress_png(state.tau_history, hv))}'>")
    body.append(f"<p>Hypervolume of the (error, predicted latency) front per device, each objective normalised by "
                f"the whole archive's range, reference point ({HV_REFERENCE:g}, {HV_REFERENCE:g}); at most "
                f"{HV_REFERENCE ** 2:.2f}.</p>{_iterations_table(state, hv)}</section>")
    body.append("<section id='tables'><h2>Latency tables</h2>")
    body.append(_tables_section(_load_tables(devices, tables)) + "</section>")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    body.append(f"<footer><p>written by natdeploy {_e(__version__)} on {_e(now)}</p></footer>")
    # the empty data: icon keeps browsers from asking for /favicon.ico beside the file
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            "<link rel='icon' href='data:,'>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 tables: Mapping[str, TableSource] | None = None) -> Path:
    """Write the run's self-contained report (default ``<run_dir>/report.html``) atomically; returns its path.

    ``tables`` maps devices to the latency tables the search used (LatencyTable objects or paths); devices not
    in it show the table of the store (:func:`natdeploy.latency.store.table_path`). A table that cannot be loaded
    is reported on the page. Raises :class:`natdeploy.run_folder.RunFolderError` when the run folder holds no
    readable state.
    """
    path = Path(out) if out is not None else Path(run_dir) / REPORT
    return atomic_write_text(path, render_report(run_dir, tables))
