"""`medprobe report RESULTS_DIR`: one self-contained HTML page from saved results only."""


def add_commands(commands):
    parser = commands.add_parser("report", help="one self-contained HTML report from saved results (run, bench or baseline folder)")
    parser.set_defaults(func=cmd_report)
    parser.add_argument("results_dir", help="a `medprobe run`, `bench` or `baseline` output folder")
    parser.add_argument("--out", help="HTML file to write (default RESULTS_DIR/report.html; PNGs go beside it in figures/)")
    parser.add_argument("--all", action="store_true", help="figures for every run, not only each dataset's best-by-val-AUC run")
    parser.add_argument("--baseline", action="append", default=[], metavar="DIR", help="a `medprobe baseline` folder to compare against")


def cmd_report(args):
    from medprobe.reporting.html import FIGURES, write_report

    path = write_report(args.results_dir, out=args.out, all_runs=args.all, baselines=args.baseline)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB); PNG figures for papers in {path.parent / FIGURES}/")
