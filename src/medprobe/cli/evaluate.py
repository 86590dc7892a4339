"""`medprobe evaluate MODEL_DIR --dataset B`: a saved probe's metrics, operating points and calibration on another labelled dataset."""

from medprobe.cli.args import (
    add_data_args,
    add_encoder_args,
    add_n_boot,
    add_study_args,
    data_spec,
    embed_options,
    study_options,
)
from medprobe.data.datasets import ROWS  # not from workflows.evaluate: scikit-learn would load with every command


def add_commands(commands):
    parser = commands.add_parser("evaluate", help="external validation: a saved probe scored on another labelled dataset, with CIs")
    parser.set_defaults(func=cmd_evaluate)
    parser.add_argument("model", metavar="MODEL_DIR", help="folder written by `medprobe fit --save`")
    add_data_args(parser)
    add_encoder_args(parser, choose_encoder=False)  # the model names its encoder
    parser.add_argument("--rows", choices=ROWS, default="all",
                        help="which rows of the dataset to evaluate: all (default; an external set is all evaluation data) or one split")
    parser.add_argument("--out", default="medprobe-evaluate", help="results folder (default ./medprobe-evaluate)")
    add_n_boot(parser)
    add_study_args(parser, chooses=False)


def cmd_evaluate(args):
    from medprobe.reporting.results import format_table
    from medprobe.reporting.study import study_text
    from medprobe.workflows.evaluate import evaluate_model
    from medprobe.workflows.run import EvalOptions

    evaluation = EvalOptions(args.n_boot, study=study_options(args))
    result = evaluate_model(args.model, data_spec(args), embed_options(args), evaluation, rows=args.rows, out=args.out)
    external = result.external
    print(f"{args.model} (trained on {external['trained_on']}, test AUC there {external['test_auc_where_trained']:.3f}) evaluated on "
          f"{result.dataset['name']}, {external['rows']} rows (n={result.metrics['test']['n']}) · {result.encoder['name']}"
          if external["test_auc_where_trained"] is not None else f"{args.model} evaluated on {result.dataset['name']}")
    print(format_table(result.metrics["test"]))
    print(study_text(result.metrics["test"]))
    print(f"results in {args.out}/")
