"""Export benchmark: export time at 224 px, fp32 parity over random Archs, predicted vs measured latency.

1. Export time of one 224-px subnet through ``export_bundle`` (BN recalibration, conversion, checks, bundle),
   for ONNX fp32, TFLite fp32 and TFLite int8 (200 calibration images), with the conversion step on its own.
2. fp32 parity over ``--archs`` random Archs of the OFA space (128..224 px) x {ONNX, TFLite}: max-abs
   difference relative to the PyTorch output range on real (digits) images. Target: <= 1e-4.
3. Predicted vs measured latency of exported files of ``--latency-archs`` Archs on cpu (onnxruntime, model.onnx)
   and cpu-litert (LiteRT, model.tflite), with the exporter's latency check and the tables in latency_tables/
   (or ``--tables``); the share within +-10% of the prediction. Skipped, with a message, where no table exists.
   Parts 1-2 are recorded as RESULTS.md section "export", part 3 as "export latency".

The supernet is seeded-random with BN recalibrated on digits upsampled from 64 px (no download needed).

    python benchmarks/export.py [--archs 20] [--latency-archs 20] [--parity-images 20] [--tables DIR]
                                [--skip time,parity,latency] [--threads 1] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    from _common import machine_line, record
except ImportError:  # run as a module
    from benchmarks._common import machine_line, record

from natdeploy.convert import onnx_bytes, tflite_bytes
from natdeploy.data import ImageData, load_digits_data
from natdeploy.export import export_bundle
from natdeploy.export import verify
from natdeploy.export.latency_check import check_latency
from natdeploy.space import Arch, SearchSpace
from natdeploy.supernet import MobileNetV3Subnet, OFAMobileNetV3Supernet, recalibrate_bn, save_supernet

OFA = SearchSpace.preset("ofa", widths=[1.0])
LATENCY_DEVICES = {"cpu": "onnx", "cpu-litert": "tflite"}


def _supernet(seed: int) -> OFAMobileNetV3Supernet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OFAMobileNetV3Supernet(n_classes=10)


def bench_time(net_path: Path, data: ImageData, arch: Arch, parity_images: int, work: Path) -> tuple[list, float]:
    """Wall seconds of whole exports and of their conversion step, per format and precision."""
    t0 = time.perf_counter()
    from natdeploy.convert.tflite import _import_tf

    _import_tf()  # a one-off cost per process, reported on its own
    tf_import = time.perf_counter() - t0
    rows = []
    for name, fmt, int8, step in (("ONNX fp32", "onnx", False, "onnx_export"),
                                  ("TFLite fp32", "tflite", False, "tflite_fp32_convert"),
                                  ("TFLite int8", "tflite", True, "tflite_int8_convert")):
        t0 = time.perf_counter()
        res = export_bundle(arch, work / name.replace(" ", "-"), supernet=net_path, data=data, formats=fmt,
                            int8=int8, calibration_images=200, parity_images=parity_images, bn_images=256,
                            val_limit=200,
                            measure_latency=False)
        total = time.perf_counter() - t0
        size = res.metadata["files"][f"model.{fmt}"]["bytes"]
        rows.append((name, total, res.timings_s[step], res.timings_s.get("subnet_and_accuracy", 0.0), size))
        print(f"{name:12s} export {total:6.1f} s (conversion {res.timings_s[step]:5.1f} s, BN + accuracy "
              f"{rows[-1][3]:5.1f} s), file {size / 1e6:.2f} MB", flush=True)
    return rows, tf_import


def bench_parity(net: OFAMobileNetV3Supernet, data: ImageData, n_archs: int, n_images: int,
                 seed: int) -> list[tuple[str, float, float]]:
    """(arch, ONNX relative diff, TFLite relative diff) for random Archs with recalibrated BN on real images."""
    rows = []
    for i, arch in enumerate(OFA.sample(np.random.default_rng(seed), n_archs)):
        sub = net.extract_subnet(arch).to(memory_format=torch.channels_last)
        recalibrate_bn(sub, data.batches("train", 64, arch.r, rng=np.random.default_rng(i)), 2)
        sub.eval()
        x, inputs = verify.reference_inputs(data, arch.r, n_images)
        ref = verify.torch_outputs(sub, x)
        shape = (1, 3, arch.r, arch.r)
        rel_onnx = verify.parity(verify.run_onnx(onnx_bytes(sub, shape), x), ref, inputs).relative
        rel_tfl = verify.parity(verify.run_tflite(tflite_bytes(sub, shape), x), ref, inputs).relative
        rows.append((str(arch), rel_onnx, rel_tfl))
        print(f"{arch}  onnx {rel_onnx:.2e}  tflite {rel_tfl:.2e}", flush=True)
    return rows


def _measure_exported(arch: Arch, device: str, fmt: str, predictor) -> tuple[float, float | str, float | None]:
    """(predicted ms, measured ms or the reason it was not measured, measured at the table's machine speed or
    None) for the exported file of ``arch``."""
    n_classes = predictor.table.n_classes
    module = MobileNetV3Subnet(arch, n_classes).eval()  # random weights, as the table's subnets had
    shape = (1, 3, arch.r, arch.r)
    data = onnx_bytes(module, shape) if fmt == "onnx" else tflite_bytes(module, shape)
    report, _ = check_latency(arch, n_classes, [device], {fmt: data}, {}, {device: predictor})
    d = report[device]
    return d["predicted_ms"], d["measured_ms"], d.get("measured_at_table_speed_ms")


def bench_latency(tables: Path, n_archs: int, seed: int, n_recheck: int = 5) -> tuple[
        dict[str, list[tuple[str, float, float, float | None]] | str], dict[str, str]]:
    """Per device: (arch, predicted ms, measured ms) of exported files, or why the device was skipped; and a
    description of each table, with ``n_recheck`` of its own subnets re-measured now (measured / table value),
    which separates machine drift since profiling from prediction error."""
    from natdeploy.latency.store import predictor_for

    out: dict[str, list[tuple[str, float, float, float | None]] | str] = {}
    about: dict[str, str] = {}
    for device, fmt in LATENCY_DEVICES.items():
        path = tables / f"{device}.json"
        if not path.is_file():
            out[device] = f"skipped: no table at {path} (build it with `natdeploy profile --device {device}`)"
            print(f"{device}: {out[device]}", flush=True)
            continue
        predictor = predictor_for(device, table=path)
        table, prov = predictor.table, predictor.table.provenance
        space = SearchSpace(resolutions=tuple(prov.get("resolutions") or OFA.resolutions),
                            widths=tuple(prov.get("widths") or (1.0,)))
        rows: list[tuple[str, float, float, float | None]] = []
        for arch in space.sample(np.random.default_rng(seed), n_archs):
            predicted, measured, normalised = _measure_exported(arch, device, fmt, predictor)
            if not isinstance(measured, float):
                out[device] = f"skipped: {measured}"
                break
            rows.append((str(arch), predicted, measured, normalised))
            print(f"{device} {arch}  predicted {predicted:.3f} ms  measured {measured:.3f} ms  "
                  f"ratio {measured / predicted:.3f}  at table speed {normalised or float('nan'):.3f} ms", flush=True)
        else:
            out[device] = rows
        recheck = []
        for key in list(table.e2e)[:n_recheck if isinstance(out[device], list) else 0]:
            arch = Arch.from_string(key)
            recheck.append(_measure_exported(arch, device, fmt, predictor)[1] / table.speed.normalise(table.e2e[key]))
        about[device] = (f"table {prov.get('runtime_version')}, resolutions {prov.get('resolutions')}, "
                         f"{len(table.e2e)} whole subnets, drift {100 * table.drift:.1f}%, {prov.get('date')}"
                         + (f"; {len(recheck)} of the table's own subnets re-measured now: median "
                            f"{statistics.median(recheck):.2f}x (min {min(recheck):.2f}, max {max(recheck):.2f}) "
                            "their table value" if recheck else ""))
    return out, about


def _latency_summary(device: str, rows: list[tuple[str, float, float, float | None]]) -> str:
    def share(ratios: list[float]) -> str:
        within = sum(abs(r - 1) <= 0.10 for r in ratios)
        return (f"{within}/{len(ratios)} within +-10% of the prediction (median measured/predicted "
                f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f})")

    text = f"{device}: as measured, {share([m / p for _, p, m, _ in rows])}"
    if all(n for *_, n in rows):
        text += f"; anchor-normalised to the table's machine speed, {share([n / p for _, p, _, n in rows])}"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=20, help="random Archs for the parity part (default 20)")
    ap.add_argument("--latency-archs", type=int, default=20, help="Archs per device for the latency part")
    ap.add_argument("--parity-images", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=224, help="resolution of the export-time subnet")
    ap.add_argument("--tables", help="latency tables folder (default latency_tables/ or $NATDEPLOY_TABLES)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: time, parity, latency")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-record", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    torch.set_num_threads(args.threads)
    from natdeploy.devices import tables_dir

    tables = Path(args.tables) if args.tables else tables_dir()
    net = _supernet(args.seed)
    data = load_digits_data(size=64, seed=args.seed)  # batches are resized to each Arch's resolution
    load = os.getloadavg()[0]  # other jobs on these 2 cores inflate every time below
    lines = [f"Machine: {machine_line(args.threads)}; load average at start {load:.1f}.",
             f"Command: `python {' '.join(['benchmarks/export.py'] + sys.argv[1:])}`",
             "Seeded-random w1.0 supernet (10 classes), BN recalibrated on scikit-learn digits upsampled from 64 px.",
             ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "time" not in skip:
            arch = OFA.sample(np.random.default_rng(args.seed)).replace(r=args.resolution)
            ckpt = save_supernet(net, work / "supernet.pt")
            rows, tf_import = bench_time(ckpt, data, arch, args.parity_images, work)
            lines += [f"**Export time**, `{arch}` ({args.resolution} px), whole `export_bundle` (BN recalibration "
                      "on 256 images, validation accuracy on 200 images, parity on "
                      f"{args.parity_images} images, int8 check, bundle and zip; no latency measurement). "
                      f"TensorFlow import, once per process: {tf_import:.1f} s.", "",
                      "| format | export s | conversion s | BN + accuracy s | file MB |", "|---|---|---|---|---|"]
            lines += [f"| {n} | {t:.1f} | {c:.1f} | {b:.1f} | {s / 1e6:.2f} |" for n, t, c, b, s in rows]
            lines.append("")
            if not args.no_record:  # each part is recorded as it ends, so a stopped run keeps what it measured
                record("export", "\n".join(lines))
        if "parity" not in skip:
            rows = bench_parity(net, data, args.archs, args.parity_images, args.seed)
            on, tf = [r[1] for r in rows], [r[2] for r in rows]
            ok = sum(max(a, b) <= verify.PARITY_TOL for _, a, b in rows)
            summary = (f"**fp32 parity**, {len(rows)} random OFA Archs (128..224 px) x {args.parity_images} images: "
                       f"ONNX max {max(on):.2e} (median {statistics.median(on):.2e}), TFLite max {max(tf):.2e} "
                       f"(median {statistics.median(tf):.2e}) of the output range; {ok}/{len(rows)} Archs pass "
                       f"both at <= {verify.PARITY_TOL:g}.")
            print(summary)
            lines += [summary, "", "| Arch | ONNX rel. diff | TFLite rel. diff |", "|---|---|---|"]
            lines += [f"| `{a}` | {o:.2e} | {t:.2e} |" for a, o, t in rows]
            lines.append("")
            if not args.no_record:
                record("export", "\n".join(lines))
        if "latency" not in skip:
            res, about = bench_latency(tables, args.latency_archs, args.seed)
            body = lines[:2] + ["", f"**Predicted vs measured latency** of exported files of {args.latency_archs} "
                                    f"random Archs per device (tables in `{os.path.relpath(tables)}`; measured "
                                    "statistic: the table's, p10), by the exporter's latency check:", ""]
            for device, rows in res.items():
                text = f"{device}: {rows}" if isinstance(rows, str) else _latency_summary(device, rows)
                text += f" [{about[device]}]" if device in about else ""
                print(text)
                body.append(f"- {text}")
            if not args.no_record:  # its own section: it is often rerun alone, against other tables
                record("export latency", "\n".join(body))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
