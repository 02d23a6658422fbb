"""``natdeploy arch``: describe an Arch (string or JSON dict): MAdds, params, dict, genome."""

from __future__ import annotations

import argparse
import json

from natdeploy.cli.parsing import RESOLUTION_HELP, add_command, examples, positive_int, read_arch

HELP = "Describe an Arch: MAdds, params, dict, genome."
# A valid JSON form for the example: kernels and expand ratios of 20 blocks, depths of 5 stages.
_JSON_EXAMPLE = ('{"ks": [3,5,3,3,7,7,3,3,3,3,3,3,5,7,3,3,7,7,3,3], "e": [3,4,3,3,3,6,3,3,3,3,3,3,4,6,3,3,4,3,3,3], '
                 '"d": [2,2,2,2,2], "r": 224}')


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "arch", HELP, examples("natdeploy arch w1.0-r224-3354-7376-3333-5476-7473 --space ofa",
                                                f"natdeploy arch '{_JSON_EXAMPLE}' --n-classes 10"))
    p.add_argument("arch", help="Arch string (w<width>-r<resolution>-<kernel/expand digit pairs per stage>) "
                                "or JSON dict, or the path of an OFA net.config")
    p.add_argument("--resolution", type=positive_int, help=RESOLUTION_HELP)
    p.add_argument("--n-classes", type=positive_int, default=1000)
    p.add_argument("--space", help="also print the genome in this search-space preset (nat, ofa, small)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natdeploy.space import SearchSpace, madds, params

    arch = read_arch(args.arch, args.resolution)
    info = {"string": str(arch), "dict": arch.to_dict(), "madds": madds(arch, args.n_classes),
            "params": params(arch, args.n_classes)}
    if args.space:
        info["genome"] = SearchSpace.preset(args.space).encode(arch).tolist()
    print(json.dumps(info, indent=1))
    return 0
