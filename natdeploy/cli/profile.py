"""``natdeploy profile``: measure a device's op latencies and whole subnets into a latency table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from natdeploy.cli.parsing import add_command, check_resolutions, examples, positive_int, seed_int
from natdeploy.errors import ConfigError

if TYPE_CHECKING:
    from natdeploy.devices import DeviceSpec
    from natdeploy.space import SearchSpace

HELP = ("Measure a device's op latencies and whole subnets into a latency table (default <tables folder>/<device>.json: "
        "your data folder, or --tables DIR).")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "profile", HELP, examples(
        "natdeploy profile --device cpu",
        "natdeploy profile --device cpu --resolutions 32 --e2e-samples 4 --n-classes 10 --out tables/t.json",
        "natdeploy profile --device cpu --space ofa --resolutions 160 224 --e2e-samples 50",
        "natdeploy profile --device pixel4 --serial 192.168.1.20:5555 --benchmark-binary ./benchmark_model",
        "natdeploy profile --device pixel4 --serial 192.168.1.20:5555 --serial 192.168.1.21:5555",
        "natdeploy profile --device pixel4 --threads 4 --cpu-mask f0 --out latency_tables/pixel4-4t.json",
        "natdeploy profile --device pixel4 --few-shot 20 --from latency_tables/cpu-litert.json --out pixel4-fs.json"))
    p.add_argument("--device", required=True, help="device name (see `natdeploy devices`) or path to a .yaml")
    p.add_argument("--space", help="search-space preset (default: the device spec's)")
    p.add_argument("--resolutions", type=positive_int, nargs="+",
                   help="resolutions to profile (default: spec's, else space's)")
    p.add_argument("--e2e-samples", type=positive_int, default=30, help="random whole subnets to measure (default 30)")
    p.add_argument("--threads", type=positive_int, help="override the spec's thread count")
    p.add_argument("--cpu-mask", help="override the spec's CPU affinity mask (hex): taskset on a phone, this "
                   "process's affinity on a local CPU spec")
    p.add_argument("--serial", action="append", help="phones: ADB serial, host:port for Wi-Fi debugging or a USB "
                   "serial (default: the spec's, else the only USB device); repeat it for a farm of phones of one "
                   "model that share the work (natdeploy.latency.farm)")
    p.add_argument("--farm-tolerance", type=float, help="farm: refuse a phone whose speed on the reference ops "
                   "differs from the farm's by more than this fraction (default: 0.10, wider where they are noisy, "
                   "after up to 15 reference rounds instead of 5)")
    p.add_argument("--benchmark-binary", help="phones: path to TFLite's benchmark_model built for the phone "
                                              "(default: the spec's benchmark_binary)")
    p.add_argument("--keep-remote", action="store_true", help="phones: leave the pushed binary and models on the "
                                                              "phone (default: remove them at the end)")
    p.add_argument("--n-classes", type=positive_int, default=1000, help="classifier width to profile (default 1000)")
    p.add_argument("--out", "--table", dest="out", help="table path (default <tables folder>/<device>.json)")
    p.add_argument("--force", action="store_true", help="add to a table measured under other conditions")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--few-shot", type=positive_int, metavar="N",
                   help="measure only N whole subnets and transfer the --from table to this device (minutes, not "
                        "the whole space); the table records its source and N")
    p.add_argument("--from", dest="source", metavar="SOURCE_TABLE", help="with --few-shot: the table to transfer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natdeploy.devices import load_device
    from natdeploy.latency.profiler import profile_device
    from natdeploy.space import SearchSpace

    spec = load_device(args.device)
    adb_flags = [f for f, v in (("--serial", args.serial), ("--benchmark-binary", args.benchmark_binary),
                                ("--keep-remote", args.keep_remote)) if v]
    if adb_flags and spec.transport != "adb":
        raise ConfigError(f"{', '.join(adb_flags)} only apply to phones (transport adb); device {spec.name!r} uses "
                          f"transport {spec.transport!r}")
    if args.benchmark_binary and not Path(args.benchmark_binary).expanduser().is_file():
        raise ConfigError(f"--benchmark-binary {args.benchmark_binary} does not exist; give the path of TFLite's "
                          "benchmark_model built for the phone")
    binary = str(Path(args.benchmark_binary).expanduser().resolve()) if args.benchmark_binary else None
    serials = args.serial or []
    if args.farm_tolerance is not None and len(serials) < 2:
        raise ConfigError("--farm-tolerance applies to a farm: give --serial once per phone")
    if args.farm_tolerance is not None and not 0 < args.farm_tolerance < 1:
        raise ConfigError(f"--farm-tolerance {args.farm_tolerance:g} must be a fraction between 0 and 1 (0.1 = 10%)")
    spec = spec.with_overrides(threads=args.threads, cpu_mask=args.cpu_mask, serial=serials[0] if serials else None,
                               benchmark_binary=binary,
                               extra={**spec.extra, "keep_remote": True} if args.keep_remote else None)
    space = SearchSpace.preset(args.space or spec.space)
    check_resolutions(space.name, args.resolutions)
    if args.few_shot is not None or args.source is not None:
        if len(serials) > 1:
            raise ConfigError("--few-shot measures one device: give --serial once")
        return _few_shot(args, spec)
    if len(serials) > 1:
        return _run_farm(args, spec, space, serials)
    res = profile_device(spec, space, resolutions=args.resolutions, e2e_samples=args.e2e_samples,
                         n_classes=args.n_classes, out=args.out, force=args.force, seed=args.seed, quiet=args.quiet)
    print(f"{res.table_path}: {res.n_ops} ops ({res.n_ops_measured_now} measured now), {res.n_e2e} whole subnets, "
          f"reference drift {100 * res.drift:.1f}%")
    print(f"{res.model_path}: fitted latency models")
    return 0


def _few_shot(args: argparse.Namespace, spec) -> int:
    """``--few-shot N --from SOURCE``: measure N subnets and save the transferred table."""
    from natdeploy.latency.store import new_table_path
    from natdeploy.latency.table import LatencyTable
    from natdeploy.latency.transfer import MIN_SHOTS, profile_few_shot

    if args.source is None:
        raise ConfigError("--few-shot needs --from SOURCE_TABLE: the table to transfer to this device")
    if args.few_shot is None:
        raise ConfigError("--from only applies with --few-shot N (the number of subnets to measure here)")
    if args.few_shot < MIN_SHOTS:
        raise ConfigError(f"--few-shot {args.few_shot}: a transfer needs at least {MIN_SHOTS} measured subnets")
    LatencyTable.load(args.source)  # a missing or corrupt source fails here, before anything is measured
    out = Path(args.out) if args.out else new_table_path(spec.name)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; a few-shot table replaces it whole: use --out for a new file, or --force")
    res = profile_few_shot(spec, args.source, args.few_shot, out, resolutions=args.resolutions, seed=args.seed)
    print(f"{res.table_path}: transferred from {args.source} with {res.n} subnets measured here "
          f"({res.measure_s:.0f} s), method {res.method}")
    print(f"{res.model_path}: fitted latency models")
    return 0


def _run_farm(args: argparse.Namespace, spec: DeviceSpec, space: SearchSpace, serials: list[str]) -> int:
    """``profile`` with several ``--serial``: the phones share the work (natdeploy.latency.farm)."""
    from natdeploy.latency.farm import profile_farm

    res = profile_farm(spec, serials, space, resolutions=args.resolutions, e2e_samples=args.e2e_samples,
                       n_classes=args.n_classes, out=args.out, force=args.force, seed=args.seed,
                       tolerance=args.farm_tolerance)
    print(f"{res.table_path}: {res.n_ops} ops ({res.n_ops_measured_now} measured now), {res.n_e2e} whole subnets, "
          f"on {len(res.per_phone) - len(res.dropped)} of {len(serials)} phones (speed tolerance "
          f"{100 * res.tolerance:.0f}%)")
    for serial, n in res.per_phone.items():
        print(f"  {serial}: {n} measured now" + (f", then dropped out ({res.dropped[serial]})"
                                                 if serial in res.dropped else ""))
    for serial, why in res.refused.items():
        print(f"  {serial}: refused: it {why}")
    print(f"{res.model_path}: fitted latency models")
    return 0
