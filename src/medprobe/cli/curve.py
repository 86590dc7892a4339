"""`medprobe curve`: test AUC against labelled train images per class, from cached embeddings."""

from medprobe.cli.args import add_data_args, add_encoder_args, data_spec, embed_options
from medprobe.core import defaults
from medprobe.core.errors import MedprobeError

DEFAULT_SHOTS = "1,2,5,10,25,50,100,all"


def add_commands(commands):
    parser = commands.add_parser("curve", help="data efficiency: test AUC vs labelled train images per class (cached embeddings)")
    parser.set_defaults(func=cmd_curve)
    add_data_args(parser, on_error_records="leaves them out of every point")
    add_encoder_args(parser)
    parser.add_argument("--probe", default="logreg", help="logreg, svm or knn")
    parser.add_argument("--selection", choices=("cv", "val"), default=defaults.SELECTION,
                        help="'cv' (default): CV on each point's drawn images only; 'val': chosen on the full val split")
    parser.add_argument("--shots", default=DEFAULT_SHOTS, help="images per class, comma-separated (default %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds per point (default %(default)s)")
    parser.add_argument("--out", default="medprobe-curve", help="folder for curve.json and curve.csv (a run folder works)")
    parser.add_argument("--force", action="store_true", help="recompute even if the folder holds this curve already")


def cmd_curve(args):
    from medprobe.workflows.curve import run_curve

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as e:
        raise MedprobeError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
    curve = run_curve(data_spec(args), embed_options(args), args.probe, args.shots, seeds, out=args.out, force=args.force,
                      selection=args.selection)
    print(f"{curve.dataset['name']} · {args.encoder} · {args.probe}: test AUC by labelled train images per class")
    print(f"{'shots':>6} {'n train':>8} {'AUC mean':>9} {'± sd':>7} {'min':>7} {'max':>7}")
    for p in curve.points:
        print(f"{p['shots']:>6} {p['n_train_mean']:>8.0f} {p['auc_mean']:>9.3f} {p['auc_std']:>7.3f} {p['auc_min']:>7.3f} {p['auc_max']:>7.3f}")
    print(f"probe fits {curve.timings['fit_s']:.1f} s; results in {args.out}/")
