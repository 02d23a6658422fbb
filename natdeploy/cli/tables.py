"""``natdeploy tables import-ofa|refit``: manage latency tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from natdeploy.cli.parsing import add_command, examples, seed_int
from natdeploy.errors import ConfigError

HELP = "Manage latency tables."
_IMPORT = "natdeploy tables import-ofa ../shared/data/ofa_note10_lut --device note10"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "tables", HELP, examples(_IMPORT, "natdeploy tables refit --device cpu-litert"))
    tsub = p.add_subparsers(dest="tables_command", metavar="SUBCOMMAND", required=True)
    q = add_command(tsub, "import-ofa", "Import OFA's published <r>_lookup_table.yaml files as a natdeploy table.",
                    examples(_IMPORT))
    q.add_argument("folder")
    q.add_argument("--device", required=True, help="name for the imported table")
    q.add_argument("--out", "--table", dest="out", help="table path (default <tables folder>/<device>.json; see "
                                                          "--tables)")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=run_import_ofa)
    q = add_command(tsub, "refit", "Re-calibrate a table's speed elasticity and refit its XGBoost models (what "
                    "`natdeploy profile` does at the end), e.g. after editing or merging a table by hand.",
                    examples("natdeploy tables refit --device cpu",
                             "natdeploy tables refit --table latency_tables/cpu-litert.json --elasticity auto"))
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", help="the table of this device (see `natdeploy devices`)")
    which.add_argument("--table", help="a table path")
    q.add_argument("--elasticity", help="'auto' (fit it) or a number; default: the device spec's speed_elasticity "
                   "(auto for a table of no known device)")
    q.add_argument("--seed", type=seed_int, default=0)
    q.set_defaults(func=run_refit)


def run_import_ofa(args: argparse.Namespace) -> int:
    from natdeploy.latency.store import new_table_path
    from natdeploy.latency.ofa_import import import_ofa_tables
    from natdeploy.latency.predictor import LatencyPredictor

    if not Path(args.folder).is_dir():
        raise ConfigError(f"{args.folder} is not a folder; give the folder of OFA's <r>_lookup_table.yaml files")
    out = Path(args.out) if args.out else new_table_path(args.device)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it or --out for another path")
    table = import_ofa_tables(args.folder, args.device)
    table.save(out)
    LatencyPredictor.fit(table).save(out.with_suffix(".xgb.json"))
    print(f"{out}: {len(table.ops)} ops at resolutions {table.provenance['resolutions']}")
    return 0


def run_refit(args: argparse.Namespace) -> int:
    from natdeploy.devices import known_devices, load_device
    from natdeploy.latency.store import missing_table_message, table_path
    from natdeploy.latency.predictor import fit_table
    from natdeploy.latency.table import LatencyTable, TableError

    elasticity = args.elasticity
    if elasticity not in (None, "auto"):  # the range the device specs allow (natdeploy.devices.DeviceSpec)
        try:
            elasticity = float(elasticity)
        except ValueError:
            raise ConfigError(f"--elasticity must be 'auto' or a number, got {elasticity!r}") from None
        if not -2 <= elasticity <= 2:
            raise ConfigError(f"--elasticity must be 'auto' or a number from -2 to 2, got {args.elasticity}")
    path = Path(args.table) if args.table else table_path(args.device)
    if not path.is_file():
        raise TableError(missing_table_message(args.device) if args.device else
                         f"latency table {path} does not exist; give the path of an existing table file")
    table = LatencyTable.load(path)
    if elasticity is None:  # the device spec's setting, where the table's device has one
        elasticity = (load_device(table.device).speed_elasticity if table.device in known_devices()
                      else "auto")
    models = fit_table(table, path, args.seed, elasticity)
    features = json.loads(models.read_text())["residual_features"]
    print(f"{path}: speed elasticity {table.speed_elasticity:+.2f}; models refitted in {models} (residual features "
          f"{features!r})")
    return 0
