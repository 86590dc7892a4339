"""`medprobe evaluate MODEL_DIR --dataset B`: external validation of a saved probe on a second labelled dataset.

B is embedded with the encoder the model names (through the embedding store, so images already
embedded cost nothing), the saved probe scores it, the saved calibrator is applied and the saved
thresholds (fitted on the *original* data's val split or out-of-fold scores: `decisions.fitted_on`) are used unchanged. The results folder has the
same layout and metrics as a run's, with `external` saying which model was evaluated on which rows.

Labels are matched by name, in any order; a class of B that the model does not know, or a class
of the model that B lacks, is refused by name. Which rows of B are evaluated is `rows`: `all`
(the default: an external set is evaluation data as a whole) or one split of B (`test`, ...).
"""

import time
from dataclasses import replace

import numpy as np

from medprobe.core.costs import cpu_seconds
from medprobe.core.errors import DatasetError
from medprobe.core.files import check_writable_folder
from medprobe.data.datasets import ROWS, SPLITS
from medprobe.embedding.fusion import embed_spec
from medprobe.embedding.options import EmbedOptions
from medprobe.evaluation.metrics import evaluate
from medprobe.evaluation.study import score_decisions
from medprobe.evaluation.subgroups import group_values
from medprobe.probes.saved import load_model
from medprobe.reporting.results import RunResult, write_run_folder
from medprobe.workflows.run import EvalOptions


def match_labels(data, model):
    """B's labels re-indexed into the model's class order; unknown or missing classes refused by name."""
    if (data.task == "multi-label") != (model.task == "multi-label"):
        raise DatasetError(f"{data.name} is a {data.task} dataset but the model is {model.task}; they cannot be matched")
    ours, theirs = list(model.label_names), list(data.label_names)
    unknown = [n for n in theirs if n not in ours]
    missing = [n for n in ours if n not in theirs]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{data.name} has classes the model does not know: {', '.join(map(repr, unknown))}")
        if missing:
            parts.append(f"the model's classes {', '.join(map(repr, missing))} do not occur in {data.name}")
        raise DatasetError("; ".join(parts) + f" (the model knows {ours}); labels are matched by name, so rename the "
                           "class folders or labels to the model's names, or leave those images out")
    position = np.array([ours.index(n) for n in theirs])
    if data.task == "multi-label":
        labels = np.zeros((len(data), len(ours)), np.int64)
        labels[:, position] = data.labels
    else:
        labels = position[data.labels]
    return labels, {n: ours.index(n) for n in theirs}


def evaluate_model(model_dir, data_spec, options=None, evaluation=None, rows="all", out=None):
    """Evaluate a saved probe on `data_spec`'s rows; write a results folder when `out` is given.

    >>> result = evaluate_model("models/ham", DataSpec("ham10000_melnv/test"), out="runs/ham_external")
    >>> result.metrics["test"]["auc"], result.external["rows"]
    """
    evaluation = evaluation or EvalOptions()
    if rows not in ROWS:
        raise DatasetError(f"rows must be one of {', '.join(ROWS)}, got {rows!r}")
    started, started_cpu = time.perf_counter(), cpu_seconds()
    model = load_model(model_dir)
    if out is not None:
        check_writable_folder(out)
    # Every row is scored and nothing is fitted, so with rows 'all' no split is drawn (and none is checked for what a
    # fit needs: a one-class set was refused as "the train split has a single class").
    data, scanned = data_spec.load() if rows != "all" else data_spec.scan()
    for column in evaluation.study.subgroups.columns:
        group_values(data.columns, column, evaluation.study.subgroups, data.name)
    given = {s: int((data.splits == s).sum()) for s in SPLITS}
    chosen = np.arange(len(data)) if rows == "all" else data.indices(rows)
    if not len(chosen):
        raise DatasetError(f"{data.name} has no {rows} rows (its splits: {given}); use rows 'all' or another split")
    data = data.subset(chosen, check=False)
    data.labels, label_map = match_labels(data, model)
    data.label_names, data.task = model.label_names, model.task
    present = np.unique(data.labels) if model.task != "multi-label" else None
    if present is not None and len(present) < 2:
        only = model.label_names[int(present[0])] if len(present) else "none"
        raise DatasetError(f"{data.name}: the {len(data)} evaluated image(s) are all of class {only!r}; AUC needs images of two classes "
                           f"or more among {model.label_names}, so add images of another class")
    data.splits = np.full(len(data), "test", dtype=object)  # every evaluated row is scored; nothing here is fitted
    data.info.pop("made_splits", None)

    options = options or EmbedOptions()
    options = replace(options, encoder=model.encoder_name, weights=options.weights or model.meta["encoder"]["weights"])
    encoded = embed_spec(data, options, check=model.check_encoder)  # the probe's own encoder and preprocessing; int8: its saved calibration
    embedded = encoded.embeddings
    seed = int(model.meta.get("trained_on", {}).get("seed", 0))
    raw = model.raw_scores(embedded.vectors)
    test = evaluate(data.labels, raw, model.task, model.label_names, evaluation.n_boot, seed)
    test = replace(test, **score_decisions(data.labels, raw, model.task, model.label_names, model.decisions, data.columns,
                                           evaluation.study, evaluation.n_boot, seed, data.name))
    cost = embedded.cost
    trained_on = model.meta.get("trained_on", {})
    result = RunResult(
        dataset={**data.describe(), "evaluated": {"rows": rows, "of": given}},
        images=scanned.describe(),
        encoder={**encoded.record, "backends": encoded.backends()},
        preprocessing=encoded.preprocessing,
        probe={**model.meta["probe"]},
        metrics={"test": test.to_json()},
        cache={"key": embedded.key, "path": embedded.path, "hit": embedded.from_cache},
        timings={"embed_s": embedded.seconds, "fit_s": 0.0, "embed_cost_s": cost["wall_s"], "embed_cost_cpu_s": cost["cpu_s"],
                 "embedded_now": cost.get("computed_now"), "embedded_from_store": cost.get("from_store"),
                 "total_s": time.perf_counter() - started, "total_cpu_s": cpu_seconds() - started_cpu},
        seed=seed,
        external={"model": str(model_dir), "trained_on": (trained_on.get("dataset") or {}).get("name"),
                  "test_auc_where_trained": (trained_on.get("test_metrics") or {}).get("auc"), "rows": rows,
                  "label_map": label_map, "thresholds": f"saved with the model (chosen on its training data's {model.decisions.fitted_on})",
                  "calibrator": model.decisions.calibrator.method if model.decisions.calibrator else None},
    )
    if out is not None:
        write_run_folder(out, result, data.ids, data.labels, raw)
    return result
