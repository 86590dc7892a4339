"""`medprobe compare RUN_A RUN_B`: AUC of each with CIs, the paired difference with its CI, and DeLong's test."""

import json

from medprobe.cli.args import add_n_boot
from medprobe.core import defaults


def add_commands(commands):
    compare = commands.add_parser(
        "compare", help="paired comparison of two runs on the same test images: AUC difference with a paired CI and DeLong's p",
    )
    compare.set_defaults(func=cmd_compare)
    compare.add_argument("run_a", metavar="RUN_A", help="a run (or baseline) results folder")
    compare.add_argument("run_b", metavar="RUN_B", help="another results folder with the same test images")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON instead of the table")
    compare.add_argument("--out", metavar="FILE", help="also write the comparison as JSON to FILE")
    add_n_boot(compare, "the paired CI")
    compare.add_argument("--seed", type=int, default=defaults.SEED,
                         help=f"bootstrap seed (default {defaults.SEED}, the seed a run's own CIs use)")


def cmd_compare(args):
    from medprobe.reporting.compare import comparison_lines
    from medprobe.workflows.compare import compare

    comparison = compare(args.run_a, args.run_b, args.out, args.n_boot, args.seed)
    print(json.dumps(comparison, indent=2) if args.json else "\n".join(comparison_lines(comparison)))
