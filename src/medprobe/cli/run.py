"""`medprobe run` and `medprobe fit --save`: embed, fit a probe, report test AUC/ACC with 95 % CIs."""

from medprobe.cli.args import (
    add_data_args,
    add_encoder_args,
    add_n_boot,
    add_probe_args,
    add_study_args,
    data_spec,
    embed_options,
    probe_spec,
    study_options,
)


def add_commands(commands):
    run = commands.add_parser("run", help="embed, fit a probe, and report test AUC/ACC with 95%% CIs")
    run.set_defaults(func=cmd_run)
    add_data_args(run)
    add_encoder_args(run)
    add_probe_args(run)
    run.add_argument("--prompts", help="for --probe zeroshot: YAML or JSON file mapping each class name to a list of prompts")
    run.add_argument("--out", default="medprobe-run", help="results folder (default ./medprobe-run)")
    add_n_boot(run)
    add_study_args(run)
    run.add_argument(
        "--seeds", type=int, metavar="N",
        help="repeat with seeds SEED..SEED+N-1 (splits medprobe draws, probe seeds, bootstrap) and report mean, SD, min-max and "
        "which variance that is; "
        "the folder holds the first seed's run; embeddings are computed once",
    )

    fit = commands.add_parser("fit", help="embed, fit a probe and save it without pickle (--save MODEL_DIR)")
    fit.set_defaults(func=cmd_fit)
    add_data_args(fit)
    add_encoder_args(fit)
    add_probe_args(fit, probes="logreg, svm or knn")
    fit.add_argument("--save", required=True, metavar="MODEL_DIR", help="folder for the saved probe")
    fit.add_argument("--out", help="also write a results folder (results.json, predictions.csv, summary.md)")
    fit.add_argument("--no-index", action="store_true",
                     help="do not keep the retrieval index of the training images (their embeddings, ids and digests) beside the probe; "
                     "`medprobe serve` then gives no similar cases and no out-of-distribution score")
    add_n_boot(fit)
    add_study_args(fit)


def _run(args, save=None):
    from medprobe.probes.selection import Selection
    from medprobe.reporting.repeats import repeats_lines
    from medprobe.reporting.results import format_table, split_lines
    from medprobe.reporting.study import study_text
    from medprobe.workflows.repeats import run_seeds
    from medprobe.workflows.run import EvalOptions, run

    evaluation = EvalOptions(args.n_boot, study=study_options(args))
    if getattr(args, "seeds", None) is not None:
        result = run_seeds(data_spec(args), embed_options(args), probe_spec(args), evaluation, out=args.out, n_seeds=args.seeds)
    else:
        result = run(data_spec(args), embed_options(args), probe_spec(args), evaluation, out=args.out, save=save,
                     index=not getattr(args, "no_index", False))
    selection = Selection.from_json(result.probe["selection"])
    chosen = f" (chosen by {selection.criterion})" if selection.encoder_choice else ""
    protocol = f" · selection {selection.protocol}" if selection.protocol else ""
    print(f"{result.dataset['name']} ({result.dataset['task']}, test n={result.dataset['n']['test']}) · {result.encoder['name']}{chosen} · "
          f"{args.probe} {result.probe['params']}{protocol}")
    if selection.column_choice:
        choice = selection.column_choice
        print(f"column groups: {choice['chosen']} ({choice['columns']} of {choice['of']} columns), chosen by the same score: "
              + ", ".join(f"{name} {score:.4f}" for name, score in choice["scores"].items()))
    print("\n".join(split_lines(result.dataset)))
    close = result.near_duplicates
    if close.get("count"):
        print(f"near-duplicates: {close['count']} of {close['of']} test images have a train image at embedding cosine >= {close['threshold']}")
    print(format_table(result.metrics["test"]))
    print(study_text(result.metrics["test"]))
    for line in repeats_lines(result.repeats):  # nothing for a single run
        print(line)
    return result


def cmd_run(args):
    result = _run(args)
    print(f"embedding {result.timings['embed_s']:.1f} s ({'cache hit' if result.cache['hit'] else 'computed'}); results in {args.out}/")


def cmd_fit(args):
    _run(args, save=args.save)
    print(f"saved probe to {args.save}/ (use: medprobe predict {args.save} IMAGES)")
