"""`medprobe predict MODEL_DIR INPUT`: class probabilities for new images from a saved probe."""

from medprobe.cli.args import add_encoder_args, add_on_error, embed_options


def add_commands(commands):
    parser = commands.add_parser("predict", help="class probabilities for new images from a saved probe")
    parser.set_defaults(func=cmd_predict)
    parser.add_argument("model", metavar="MODEL_DIR", help="folder written by `medprobe fit --save`")
    parser.add_argument("input", metavar="INPUT", help="image folder, CSV manifest with a path column, or one image/DICOM file")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default ./predictions.csv)")
    add_encoder_args(parser, choose_encoder=False)  # the model names its encoder; --weights overrides the recorded ones
    add_on_error(parser, "writes each to the output CSV, with its reason in the error column")
    parser.add_argument("--decision", metavar="RULE",
                        help="add a decision column at the model's saved threshold for this operating point (e.g. youden, sensitivity=0.9)")


def cmd_predict(args):
    from medprobe.core.files import check_writable_file
    from medprobe.workflows.predict import predict, write_predictions_csv

    check_writable_file(args.out)  # before any work: a folder or a read-only place would lose every prediction
    result = predict(args.model, args.input, embed_options(args), on_error=args.on_error, decision=args.decision)
    write_predictions_csv(args.out, result.paths, result.scores, result.labels, result.label_names, result.report.skipped, result.decisions)
    skipped = f"; {len(result.report.skipped)} unreadable files listed with their reason" if result.report.skipped else ""
    print(f"{len(result.paths)} images -> {args.out}{skipped}")
