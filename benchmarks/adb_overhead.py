"""What ADB costs per measured op, and how long profiling the NAT space on a phone takes.

Part 1, on the loopback ADB daemon (tests/adb_daemon.py; its benchmark_model stand-in really runs each .tflite
with LiteRT, from a fork server so that it starts in milliseconds as a native binary does). For the same .tflite
files of typical ops (built beforehand: conversion is not timed here), in the same run, interleaved in rounds:

* ``inference``: warm-up + timed runs in this process with the LiteRT interpreter (the pure measurement);
* ``tool``: the device-side commands alone, run back to back by one local shell: ``timeout N taskset 70
  benchmark_model --graph=...`` per op with the profiler's flags (measurement + the tool's start-up and load);
* ``adb, pushing ahead``: ``AdbBackend.measure_ops`` batches as ``natdeploy profile`` runs them over TCP: every
  model new to the phone, the next batch pushed through a second connection while this one runs;
* ``adb, pushing in line``: the same with each batch's pushes done before its run (USB has one connection);
* ``adb, models on the phone``: the same with nothing to push;
* ``adb, one by one``: ``AdbBackend.measure_op`` per op (the path of retries and of the reference op).

Transport overhead per op = adb time - tool time: checksums, pushes, cool-down checks, the clock and temperature
reads around each run, the ADB protocol and the parsing. Issue 4's target: under 20% of the measurement time for
a typical op.

Part 2 estimates a real phone from per-op costs: how many NAT-space ops there are at all 17 resolutions and at a
5-resolution subset (XGBoost predicts the ops in between); the phone's time per op from OFA's measured Note10
lookup tables (mean op latency per resolution, extrapolated as r^2) plus an assumed native start-up; the
transport measured in part 1 plus a round-trip and bandwidth model of USB and Wi-Fi, with each op's .tflite size
from its parameter count; and this computer's conversion time per op, measured here. natdeploy converts (and
over TCP pushes) the next batch while the phone runs this one, so an op costs the larger of the two sides.

    python benchmarks/adb_overhead.py [--ops 32] [--rounds 5] [--resolution 160] [--batch 16] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

try:
    from _common import machine_line, record
except ImportError:  # run as a module
    from benchmarks._common import machine_line, record

WARMUP, RUNS = 10, 50  # devices/pixel4.yaml
NOTE10_LUT = ROOT.parent / "shared" / "data" / "ofa_note10_lut"
SUBSET = (192, 208, 224, 240, 256)  # every fourth NAT resolution
E2E_SAMPLES = 30
# Assumed adb links: (round trip in s, push bytes per s, pushes ahead on a second connection).
LINKS = {"USB 2.0": (0.001, 30e6, False), "Wi-Fi": (0.006, 8e6, True)}
# Assumed start-up of a native benchmark_model per op (exec, mmap, interpreter and XNNPACK set-up): the captured
# real outputs in tests/data/benchmark_model report session init of 0.4-41 ms on CPU for whole models.
NATIVE_STARTUP_S = 0.030
# Round trips per op in a batch of 16: one push (OPEN, DONE/OKAY, CLSE: ~3), plus the batch's three shell calls
# (checksums, cool-down check, the run: ~2 each) shared by 16 ops.
PUSH_ROUND_TRIPS, BATCH_ROUND_TRIPS = 3.0, 3 * 2 / 16

PATHS = ("inference", "tool", "adb, pushing ahead", "adb, pushing in line", "adb, models on the phone",
         "adb, one by one")


def typical_ops(n: int, resolution: int) -> list[Any]:
    """``n`` ops spread over the OFA space at one resolution, from the large early maps to the small late ones."""
    from natdeploy.latency.ops import space_ops
    from natdeploy.space import SearchSpace

    ops = space_ops(SearchSpace.preset("ofa", widths=[1.0]), 1000, [resolution])
    return [ops[i] for i in np.linspace(0, len(ops) - 1, n).round().astype(int)]


def inference_s(model: bytes) -> float:
    """Wall time of WARMUP + RUNS invocations in this process, one thread, XNNPACK (the pure measurement)."""
    from ai_edge_litert import interpreter as lite

    interp = lite.Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.random.default_rng(0).standard_normal(tuple(inp["shape"])).astype(np.float32))
    t0 = time.perf_counter()
    for _ in range(WARMUP + RUNS):
        interp.invoke()
    return time.perf_counter() - t0


def tool_s(commands: list[list[str]], env: dict[str, str]) -> float:
    """Wall time per command of the device-side commands run back to back by one local shell."""
    from natdeploy.latency.backends.adb import quote_command

    script = "set -e\n" + "\n".join(f"{quote_command(c)} </dev/null >/dev/null 2>&1" for c in commands)
    t0 = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", script], env=env, check=True, timeout=600)
    return (time.perf_counter() - t0) / len(commands)


def timed_pushes(transport: Any) -> dict[str, float]:
    """Count the seconds and bytes of every push the transport makes from now on."""
    totals = {"s": 0.0, "bytes": 0.0}
    push = transport.push

    def counted(local: Any, remote: str, **kw: Any) -> None:
        t0 = time.perf_counter()
        push(local, remote, **kw)
        totals["s"] += time.perf_counter() - t0
        totals["bytes"] += Path(local).stat().st_size

    transport.push = counted
    return totals


def profile_batches(backend: Any, ops: list[Any], batch: int, ahead: bool) -> float:
    """Seconds per op to measure ``ops`` in batches, every model new to the phone, as the profiler does.

    With ``ahead`` the next batch is pushed through the second connection while a batch runs (the first batch's
    pushes happen before the clock starts, as they overlap the previous batch in a long profile).
    """
    backend.runner.remove_models()
    chunks = [ops[i:i + batch] for i in range(0, len(ops), batch)]
    if ahead:
        backend.prefetch_ops(chunks[0])
        for op in chunks[0]:
            backend._op_artifact(op, 0)  # waits for the chunk's pushes
    t0 = time.perf_counter()
    for k, chunk in enumerate(chunks):
        if ahead and k + 1 < len(chunks):
            backend.prefetch_ops(chunks[k + 1])
        measured = list(backend.measure_ops(chunk))
        assert len(measured) == len(chunk), "an op failed on the loopback phone"
    return (time.perf_counter() - t0) / len(ops)


def note10_means() -> dict[int, float]:
    """Mean op latency (ms) per resolution in OFA's Note10 lookup tables; empty when they are absent."""
    means = {}
    for path in sorted(NOTE10_LUT.glob("*_lookup_table.yaml")):
        ops = yaml.safe_load(path.read_text())
        means[int(path.name.split("_")[0])] = statistics.fmean(float(v["mean"]) for v in ops.values())
    return means


def op_bytes(op: Any, overhead: float) -> float:
    """The .tflite size of an op: fp32 weights plus the file's own overhead (fitted on built models)."""
    from natdeploy.space import layer_cost

    return 4 * layer_cost(op.to_layer())[1] + overhead


def estimate(conversion_s: float, subnet_conversion_s: float, transport_s: float, overhead_bytes: float
             ) -> tuple[list[str], dict[tuple[str, str], dict[str, float]]]:
    """Part 2: minutes to profile the NAT space on a phone, all 17 resolutions against the subset.

    Returns the report lines and, per (resolutions, link), the op count, transport share and total minutes.
    """
    from natdeploy.latency.ops import space_ops
    from natdeploy.space import SearchSpace

    nat = SearchSpace.preset("nat")
    means = note10_means()
    source = "OFA's Note10 lookup tables"
    if not means:
        means, source = {224: 0.9}, "an assumed 0.9 ms at 224 px (OFA's Note10 tables are absent here)"
    a = statistics.fmean(v / r ** 2 for r, v in means.items())  # mean op latency ~ a * r^2 (ms)
    startup = NATIVE_STARTUP_S
    lines = [f"Phone time per op from {source}: mean op latency "
             + ", ".join(f"{v:.3f} ms at {r} px" for r, v in sorted(means.items()))
             + f", extrapolated as {1e6 * a:.2f}e-6 ms * r^2, times ({WARMUP} + {RUNS}) runs, plus an assumed "
             f"{1e3 * startup:.0f} ms native start-up. Transport per op: part 1's {1e3 * transport_s:.1f} ms "
             f"without the push, round trips ({PUSH_ROUND_TRIPS + BATCH_ROUND_TRIPS:.1f} with a push in line, "
             f"{BATCH_ROUND_TRIPS:.1f} when pushed ahead), and in line the op's .tflite (fp32 weights + "
             f"{overhead_bytes / 1e3:.1f} kB) at the link's rate; USB has one connection, so it pushes in line. "
             f"Host conversion: {conversion_s:.2f} s per op and {subnet_conversion_s:.1f} s per subnet (measured "
             f"here); it runs beside the phone's runs, together with the pushes ahead. Plus {E2E_SAMPLES} whole "
             "subnets (~20 ops each).", "",
             "| resolutions | ops | link | phone s/op | transport s/op | transport share | converter side s/op | "
             "s/op | ops | subnets | total |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    figures: dict[tuple[str, str], dict[str, float]] = {}
    for label, resolutions in (("all 17", nat.resolutions), (f"5: {', '.join(map(str, SUBSET))}", SUBSET)):
        ops = space_ops(nat, 1000, resolutions)
        per_res = {r: len(space_ops(nat, 1000, [r])) for r in resolutions}
        lat_ms = sum(n * a * r ** 2 for r, n in per_res.items()) / sum(per_res.values())
        size = statistics.fmean(op_bytes(op, overhead_bytes) for op in ops)
        phone = startup + (WARMUP + RUNS) * lat_ms / 1e3
        subnet_phone = startup + (WARMUP + RUNS) * 20 * lat_ms / 1e3
        for link, (rtt, bandwidth, ahead) in LINKS.items():
            push = size / bandwidth
            transport = transport_s + rtt * (BATCH_ROUND_TRIPS + (0 if ahead else PUSH_ROUND_TRIPS)) + \
                (0 if ahead else push)
            converter = conversion_s + (push + rtt * PUSH_ROUND_TRIPS if ahead else 0)
            per_op = max(converter, phone + transport)
            subnets = E2E_SAMPLES * (subnet_conversion_s + subnet_phone + transport + push)
            total = len(ops) * per_op + subnets
            figures[(label, link)] = {"ops": len(ops), "share": transport / phone, "minutes": total / 60}
            lines.append(f"| {label} | {len(ops)} | {link} | {phone:.3f} | {transport:.3f} | "
                         f"{100 * transport / phone:.0f}% | {converter:.3f} | {per_op:.3f} | "
                         f"{len(ops) * per_op / 60:.1f} min | {subnets / 60:.1f} min | **{total / 60:.1f} min** |")
    return lines, figures


def conclusions(figures: dict[tuple[str, str], dict[str, float]], conversion_s: float) -> list[str]:
    """What part 2's table says, in words."""
    share = {link: [f["share"] for (_, lk), f in figures.items() if lk == link] for link in LINKS}
    labels = list(dict.fromkeys(label for label, _ in figures))
    worst = {label: max(f["minutes"] for (lb, _), f in figures.items() if lb == label) for label in labels}
    ops = {label: next(f["ops"] for (lb, _), f in figures.items() if lb == label) for label in labels}
    full, subset = labels
    return [
        "Transport share of the phone's time per op: "
        + "; ".join(f"{link} {_span(v)}" for link, v in share.items()) + ".",
        f"The host's conversion ({conversion_s:.2f} s per op here) sets the pace wherever it exceeds the phone's "
        "time plus transport: natdeploy overlaps the two, so an op costs the larger of the two sides.",
        f"Whole NAT space: {ops[full]} ops at all 17 resolutions, at most {worst[full]:.0f} min; the 5-resolution "
        f"subset measures {ops[subset]} ops, at most {worst[subset]:.0f} min, and XGBoost's per-op regressors "
        "predict the ops at the resolutions in between (the residual model is fitted on the measured subnets). "
        f"Target, under 30 minutes on a real device: {'met' if worst[subset] < 30 else 'NOT met'} by the subset"
        f"{', and by all 17 resolutions too' if worst[full] < 30 else ''}.",
    ]


def _span(values: list[float]) -> str:
    lo, hi = round(100 * min(values)), round(100 * max(values))
    return f"{lo}%" if lo == hi else f"{lo}-{hi}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=32, help="typical ops to time (default 32)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--resolution", type=int, default=160, help="resolution of the typical ops (default 160)")
    ap.add_argument("--batch", type=int, default=16, help="ops per ADB batch (default 16, the profiler's)")
    ap.add_argument("--no-record", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT / "tests"))  # the loopback daemon lives with the tests
    from adb_daemon import AdbDaemon
    from fake_phone import write_fake_benchmark_model

    from natdeploy.convert.ops import build_op_module, op_input_shape
    from natdeploy.devices import load_device
    from natdeploy.latency.backends.adb_backend import AdbBackend
    from natdeploy.latency.backends.litert import LiteRTBackend
    from natdeploy.space import SearchSpace
    from natdeploy.supernet import MobileNetV3Subnet

    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="adb-overhead-"))
    os.environ["ANDROID_USER_HOME"] = str(work / "android")  # a throwaway ADB key, never ~/.android
    try:
        ops = typical_ops(args.ops, args.resolution)
        litert = LiteRTBackend(load_device("cpu-litert"))
        t0 = time.perf_counter()
        litert.build(build_op_module(ops[0].to_layer(), 0), op_input_shape(ops[0].to_layer()))  # TF's start-up
        first_s = time.perf_counter() - t0
        models, t0 = {}, time.perf_counter()
        for op in ops:
            layer = op.to_layer()
            models[op.key] = litert.build(build_op_module(layer, 0), op_input_shape(layer))
        conversion_s = (time.perf_counter() - t0) / len(ops)
        arch = SearchSpace.preset("nat").sample(np.random.default_rng(0)).replace(r=224)
        t0 = time.perf_counter()
        litert.build(MobileNetV3Subnet(arch, 1000).eval(), (1, 3, 224, 224))
        subnet_conversion_s = time.perf_counter() - t0
        files = {}
        for i, op in enumerate(ops):
            files[op.key] = work / f"op{i}.tflite"
            files[op.key].write_bytes(models[op.key])
        overhead_bytes = statistics.fmean(len(models[op.key]) - op_bytes(op, 0) for op in ops)
        binary = write_fake_benchmark_model(work / "benchmark_model")
        times: dict[str, list[float]] = {name: [] for name in (*PATHS, "push")}
        with AdbDaemon(work / "phone", accept_unknown_keys=True, litert_zygote=True, command_timeout_s=300,
                       lifetime_s=900) as daemon:
            env = {**os.environ, **daemon.shell_env()}
            spec = load_device("pixel4").with_overrides(
                serial=daemon.serial, benchmark_binary=str(binary), warmup=WARMUP, runs=RUNS,
                extra={"batch_size": args.batch, "warmup_min_secs": 0.0, "cooldown_poll_s": 0.1})
            with AdbBackend(spec, cache_dir=work / "cache") as backend:
                backend.describe()  # connect, push and check the binary: once per profile, not per op
                runner = backend.runner
                commands = [[str(binary) if a == runner.remote_binary else a for a in runner.command(str(f))]
                            for f in files.values()]
                for op in ops:  # built here, untimed: part 1 is about the link, not the converter
                    backend._op_artifact(op, 0)
                list(backend.measure_ops(ops[:2]))  # first-use costs (the stand-in's zygote) out of the rounds
                pushes = timed_pushes(backend.transport)
                for _ in range(args.rounds):
                    times["inference"].append(statistics.fmean(inference_s(models[op.key]) for op in ops))
                    times["tool"].append(tool_s(commands, env))
                    times["adb, pushing ahead"].append(profile_batches(backend, ops, args.batch, ahead=True))
                    before = pushes["s"]
                    times["adb, pushing in line"].append(profile_batches(backend, ops, args.batch, ahead=False))
                    times["push"].append((pushes["s"] - before) / len(ops))
                    t0 = time.perf_counter()
                    for start in range(0, len(ops), args.batch):
                        list(backend.measure_ops(ops[start:start + args.batch]))
                    times["adb, models on the phone"].append((time.perf_counter() - t0) / len(ops))
                    t0 = time.perf_counter()
                    for op in ops:
                        backend.measure_op(op)
                    times["adb, one by one"].append((time.perf_counter() - t0) / len(ops))
                latencies = [m.mean_ms for _, m in backend.measure_ops(ops)]
        # Other work on the machine only ever adds time: the best round is the least disturbed one.
        best = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        inference, tool, push = best["inference"], best["tool"], best["push"]
        ahead, inline, present, single = (best[k] for k in PATHS[2:])
        no_push = max(0.0, inline - push - tool)  # part 2 prices the bytes on the wire per link
        size = statistics.fmean(len(m) for m in models.values())
        rows = [f"| {name} | {1e3 * best[name]:.1f} | {1e3 * median[name]:.1f} | "
                f"{1e3 * (best[name] - tool):+.1f} |" for name in PATHS]
        table_lines, figures = estimate(conversion_s, subnet_conversion_s, no_push, overhead_bytes)
        lines = [
            f"Machine: {machine_line(1)}; load average at start {load:.1f} (other jobs shared the 2 cores).",
            f"Command: `python benchmarks/adb_overhead.py --ops {args.ops} --rounds {args.rounds} "
            f"--resolution {args.resolution} --batch {args.batch}`",
            "",
            f"**Part 1: loopback ADB daemon**, {len(ops)} typical ops of the OFA space at {args.resolution} px "
            f"(w1.0; {size / 1e3:.0f} kB per .tflite on average), {WARMUP} warm-up + {RUNS} timed runs each, one "
            f"thread, batches of {args.batch}; their mean latency here is {statistics.fmean(latencies):.3f} ms "
            f"(min {min(latencies):.3f}, max {max(latencies):.3f}). Per op, over {args.rounds} interleaved rounds "
            "(the figures below use the best round of each path: other load on the machine only adds time):",
            "",
            "| path | ms per op, best | median | best, over the tool |",
            "|---|---|---|---|",
            *rows,
            "",
            f"**Transport overhead per op as a profile over TCP pays it (every model new, pushed ahead): "
            f"{1e3 * (ahead - tool):.1f} ms = {100 * (ahead - tool) / tool:.0f}% of the device-side time (the "
            f"tool's {1e3 * tool:.1f} ms).** Target: < 20%. Pushing in line, as over USB: "
            f"{1e3 * (inline - tool):.1f} ms ({100 * (inline - tool) / tool:.0f}%), of which the pushes take "
            f"{1e3 * push:.1f} ms ({size / push / 1e6:.0f} MB/s, Python at both ends of a loopback socket, about "
            f"a USB 2.0 adb push). With the models already on the phone: {1e3 * (present - tool):.1f} ms "
            f"({100 * (present - tool) / tool:.0f}%). One model per shell call, as retries run: "
            f"{1e3 * (single - tool):.1f} ms ({100 * (single - tool) / tool:.0f}%).",
            f"Caveats: on the loopback the daemon, the second connection's pushes and the benchmark share 2 cores; "
            f"on a phone adbd runs on other cores than the pinned benchmark. The stand-in's start-up and model "
            f"load (tool - inference) is {1e3 * (tool - inference):.1f} ms per op (a fork of a Python process with "
            "LiteRT loaded); a native benchmark_model starts faster, which makes the same overhead a larger share: "
            f"against the pure inference ({1e3 * inference:.1f} ms; these ops are fast on this CPU) it is "
            f"{100 * (ahead - tool) / inference:.0f}%. Part 2 puts the overhead against a phone's own op latencies.",
            "",
            f"**Part 2: estimated time to profile the NAT space on a phone** ({WARMUP} + {RUNS} runs per op, batches "
            f"of {args.batch}; TF's first conversion took {first_s:.1f} s, once per profile).",
            "",
            *table_lines,
            "",
            *conclusions(figures, conversion_s),
        ]
        print("\n".join(lines))
        if not args.no_record:
            record("adb overhead", "\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
