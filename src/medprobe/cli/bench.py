"""`medprobe bench CONFIG`: a datasets x encoders x probes x seeds grid, resumable, with a table and a report."""

from pathlib import Path

from medprobe.cli.args import add_cache_args, embed_options
from medprobe.core.errors import MedprobeError


def add_commands(commands):
    parser = commands.add_parser("bench", help="run a datasets x encoders x probes x seeds grid from a YAML/TOML config")
    parser.set_defaults(func=cmd_bench)
    parser.add_argument("config", help="bench config (.yaml, .yml or .toml), e.g. benchmarks/paper_grid.yaml")
    parser.add_argument("--out", help="results folder (default: the config's 'out', else ./bench-<config name>)")
    parser.add_argument("--force", action="store_true", help="rerun cells that are already done")
    parser.add_argument("--baseline", action="append", default=[], metavar="DIR",
                        help="a `medprobe baseline` output folder to compare against (repeatable)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--no-report", action="store_true", help="write the table but not report.html")
    add_cache_args(parser)


def cmd_bench(args):
    from medprobe.embedding.ray import on_cluster
    from medprobe.reporting.tables import MANIFEST, TABLE_CSV, TABLE_MD
    from medprobe.workflows.bench import load_config, run_bench

    config = load_config(args.config)
    out = Path(args.out or config["out"] or f"bench-{config['name']}")
    options = embed_options(args)
    with on_cluster(options.ray):  # one Ray session for every cell (--ray), not one start-up per cell
        manifest = run_bench(config, out, force=args.force, options=options, extra_baselines=args.baseline, report=not args.no_report)
    print((out / TABLE_MD).read_text())
    counts = manifest["counts"]
    print(f"{counts['ran']} cells ran, {counts['skipped']} skipped, {counts['failed']} failed in {manifest['seconds']:.2f} s; "
          f"table: {out / TABLE_MD}, {out / TABLE_CSV}" + (f"; report: {manifest['report']}" if "report" in manifest else ""))
    if counts["failed"]:
        raise MedprobeError(f"{counts['failed']} cell(s) failed; see {out / MANIFEST} for the errors, fix them and rerun")
