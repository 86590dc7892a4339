"""One experiment end to end: dataset -> embeddings -> probe -> metrics -> results folder (and, with `save`, a saved probe)."""

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from medprobe.core.costs import Timings
from medprobe.core.errors import ModelError
from medprobe.core.files import check_writable_folder
from medprobe.embedding.fusion import check_spec, embed_spec, scan_for, split_choices, split_spec
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.ray import on_cluster
from medprobe.encoders.registry import column_groups
from medprobe.evaluation.calibration import resolve_method
from medprobe.evaluation.metrics import N_BOOTSTRAP, check_n_boot, evaluate
from medprobe.evaluation.near_duplicates import COSINE, near_duplicates
from medprobe.evaluation.operating_points import column_names
from medprobe.evaluation.study import Decisions, StudyOptions, fit_decisions, score_decisions
from medprobe.evaluation.subgroups import group_values
from medprobe.probes.columns import choose_columns
from medprobe.probes.fit import SAVABLE, fit_probe
from medprobe.probes.index import training_index
from medprobe.probes.saved import check_save_folder, save_model
from medprobe.probes.spec import ZEROSHOT, ProbeSpec
from medprobe.probes.zeroshot import fit_zeroshot
from medprobe.reporting.results import RunResult, project_2d, write_run_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """How a run is scored and drawn: bootstrap resamples for the CIs, the 2-D map's projection, the near-duplicate cosine,
    and the validation study (operating points, calibrator, subgroups)."""

    n_boot: int = N_BOOTSTRAP
    projection: str = "pca"
    near_duplicate_cosine: float = COSINE
    study: StudyOptions = field(default_factory=StudyOptions)

    def __post_init__(self):
        check_n_boot(self.n_boot)


def check_before_images(options, probe_spec, out=None, save=None, data_spec=None):
    """Everything about a run that can be checked without images, so a typo never costs a scan or an embedding pass.

    Returns the encoder choices ('a|b' -> ['a', 'b']).
    """
    check_spec(options.encoder)
    probe_spec.check()
    if out is not None:
        check_writable_folder(out)
    if save is not None:
        check_save_folder(save, _user_paths(data_spec, out))
    choices = split_choices(options.encoder)
    if len(choices) > 1 and probe_spec.name == ZEROSHOT:
        raise ModelError(f"--encoder {options.encoder!r}: choosing among encoders ('|') needs a fitted probe, not zeroshot")
    if save is not None and (probe_spec.name not in SAVABLE or len(choices) != 1 or len(split_spec(options.encoder)) != 1):
        raise ModelError(f"--save supports one encoder and a fitted probe (logreg, svm, knn); got {options.encoder!r} with {probe_spec.name!r}")
    return choices


def run(data_spec, options=None, probe_spec=None, evaluation=None, out=None, save=None, scanned=None, index=True):
    """Run one (dataset, encoder, probe) experiment (see `run_here`); with `options.ray`, on that Ray cluster.

    What the store lacks is embedded on the cluster, and the probe's CV selection fans out to it; the rest runs here, so
    the run folder is the local one. Ray's start-up is recorded apart, in `timings["ray_start_s"]`.
    """
    options = options or EmbedOptions()
    with on_cluster(options.ray) as cluster:
        timings = Timings(ray_start_s=cluster["start_s"] if options.ray is not None else None)
        return run_here(data_spec, options, probe_spec, evaluation, out, save, scanned, index, timings)


def run_here(data_spec, options=None, probe_spec=None, evaluation=None, out=None, save=None, scanned=None, index=True, timings=None):
    """Run one (dataset, encoder, probe) experiment; write its results folder when `out` is given.

    >>> result = run(DataSpec("retinamnist", data_dir="../shared/data/medmnist"), EmbedOptions("efficientnet_lite0"),
    ...              ProbeSpec("logreg"), out="runs/retina")
    >>> result.metrics["test"]["auc"]

    `options.encoder` may fuse several ('efficientnet_lite0+efficientnet_lite2'); a ProbeSpec named
    "zeroshot" classifies with the CLIP text prompts of its prompt file instead of fitting anything.
    With `save`, the fitted probe is also written there (see `medprobe.probes.saved`). `scanned`, an earlier
    `data_spec.scan()`, spares repeated runs of one dataset (`--seeds`) decoding every image again. `index` (with `save`)
    keeps a retrieval index of the images the probe was fitted on beside it (`medprobe.probes.index`).
    """
    options, probe_spec, evaluation = options or EmbedOptions(), probe_spec or ProbeSpec(), evaluation or EvalOptions()
    timings = timings or Timings()  # run() has put Ray's start-up in it
    with timings.stage("load"):
        choices = check_before_images(options, probe_spec, out, save, data_spec)
        data, scanned = data_spec.load(scanned or scan_for(data_spec, options))
        check_study_columns(data, evaluation.study)
    timings.scan_s = scanned.seconds
    with timings.stage("embed"):
        candidates = [embed_spec(data, replace(options, encoder=choice)) for choice in choices]
    count_embedding(timings, [c.embeddings for c in candidates], scanned)
    with timings.stage("fit"):
        encoded, fitted = fit_candidates(data, candidates, choices, probe_spec, options)
    with timings.stage("evaluate"):
        scored = score_run(data, encoded.embeddings.vectors, fitted, evaluation, probe_spec.seed)
    result = run_result(data, scanned, encoded, probe_spec, fitted, scored, timings.finish())
    X, test = encoded.embeddings.vectors, data.indices("test")
    if out is not None:
        xy = project_2d(X[test], evaluation.projection, probe_spec.seed)
        write_run_folder(out, result, data.ids[test], data.labels[test], scored.test_scores, projection=(xy, evaluation.projection))
    if save is not None:
        fitted_on = np.concatenate([data.indices("train"), data.indices("val")]) if fitted.selection.fitted_on_val else data.indices("train")
        save_model(save, fitted, data, encoded.encoders[0], encoded.transforms[0], options.encoder, options.weights, result.metrics,
                   probe_spec.seed, scored.decisions, training_index(data, X, fitted_on) if index else None,
                   calibration=encoded.encoders[0].int8_calibration)
    return result


def check_study_columns(data, study):
    """A misspelt subgroup column, or a calibrator that does not fit the task, is refused before any embedding."""
    resolve_method(study.calibrate, data.task)
    column_names(data.task, data.label_names, study.positive)
    for column in study.subgroups.columns:
        group_values(data.columns, column, study.subgroups, data.name)


def count_embedding(timings, embeddings, scanned):
    """What computing every candidate's images cost, whenever it was computed (None where unknown: embedded on Ray).

    On Ray the workers embedded what the store lacked in the same pass that read the files (`scan_for`): that pass is
    the embedding's time and count, and the store read after it the rest."""
    timings.embed_s = sum(e.seconds for e in embeddings)
    costs = [e.cost for e in embeddings]
    timings.embed_cost_s, timings.embed_cost_cpu_s = _total(c["wall_s"] for c in costs), _total(c["cpu_s"] for c in costs)
    timings.embed_cost_source = costs[0]["measured_in"]
    timings.embedded_now, timings.embedded_from_store = _total(c.get("computed_now") for c in costs), _total(c.get("from_store") for c in costs)
    if scanned.on_ray is not None:
        timings.embed_s += scanned.seconds
        images = _total([timings.embedded_now, timings.embedded_from_store])  # rows x parts, all read from the store just now
        embedded = scanned.on_ray["embedded_now"]
        timings.embedded_now, timings.embedded_from_store = embedded, None if images is None else images - embedded


def fit_candidates(data, candidates, choices, probe_spec, options):
    """(the chosen candidate, its fitted probe): with several encoders ('a|b') the encoder is one more hyper-parameter,
    chosen by the same protocol's score (val or CV), never by test."""
    y, train, val = data.labels, data.indices("train"), data.indices("val")
    if probe_spec.name == ZEROSHOT:
        encoded = candidates[0]
        return encoded, fit_zeroshot(encoded.encoders, probe_spec.prompts, data.label_names, data.task, encoded.embeddings.vectors[train], y[train])
    def fit(X, columns=slice(None)):
        return fit_probe(probe_spec.name, X[train][:, columns], y[train], X[val][:, columns], y[val], data.task, probe_spec.class_weight,
                         probe_spec.seed, data.label_names, probe_spec.selection, data.groups_of(train, val),
                         parallel="ray" if options.ray is not None else None)

    if probe_spec.column_groups == "choose":
        fits = [choose_columns(partial(fit, c.embeddings.vectors), column_groups_of(c), c.embeddings.vectors.shape[1]) for c in candidates]
    else:
        fits = [fit(c.embeddings.vectors) for c in candidates]
    best = max(range(len(fits)), key=lambda i: fits[i].selection.score())
    if len(choices) > 1:
        fits[best].selection.encoder_choice = {"chosen": choices[best], "by": fits[best].selection.criterion,
                                               "scores": {choice: f.selection.score() for choice, f in zip(choices, fits)}}
    return candidates[best], fits[best]


def column_groups_of(encoded):
    """The column groups of a one-encoder embedding; a fusion is one group (no choice among its parts' columns)."""
    if len(encoded.encoders) == 1:
        return column_groups(encoded.record["name"])
    return [("embedding", encoded.embeddings.vectors.shape[1])]


@dataclass
class ScoredRun:
    """A fitted probe scored: val and test metrics (with the study's operating points), its decisions, test's scores."""

    metrics: dict  # split -> SplitMetrics
    decisions: Decisions
    test_scores: np.ndarray
    near_duplicates: dict


def score_run(data, X, fitted, evaluation, seed):
    """Metrics on val and test; calibrator and thresholds decided on scores of images the probe did not fit (val's, or the
    out-of-fold ones when selection cv fitted it on train+val), then applied unchanged to test (and saved)."""
    y, train, val, test = data.labels, data.indices("train"), data.indices("val"), data.indices("test")
    scores = {"val": fitted.val_scores(X, train, val), "test": fitted.predict_scores(X[test])}
    metrics = {split: evaluate(y[rows], scores[split], data.task, data.label_names, evaluation.n_boot, seed)
               for split, rows in (("val", val), ("test", test))}
    if fitted.selection.fitted_on_val:
        metrics["val"].scored_by = "out-of-fold predictions (selection cv fitted the probe on train+val)"
    held = fitted.held_out(X, train, val)
    decisions = fit_decisions(y[held.rows], held.scores, data.task, data.label_names, evaluation.study, held.where)
    metrics["test"] = replace(metrics["test"], **score_decisions(y[test], scores["test"], data.task, data.label_names, decisions,
                                                                 {k: v[test] for k, v in data.columns.items()}, evaluation.study,
                                                                 evaluation.n_boot, seed, data.name))
    close = near_duplicates(X[test], X[train], data.ids[test], data.ids[train], evaluation.near_duplicate_cosine)
    if close["count"]:
        log.warning("%d of %d test images have a near-identical train image (embedding cosine >= %g), e.g. %s",
                    close["count"], close["of"], close["threshold"], ", ".join(f"{e['test']} ~ {e['train']}" for e in close["examples"][:3]))
    return ScoredRun(metrics, decisions, scores["test"], close)


def run_result(data, scanned, encoded, probe_spec, fitted, scored, timings):
    """The RunResult (results.json) of a run."""
    embedded = encoded.embeddings
    return RunResult(
        dataset=data.describe(),
        images=scanned.describe(),
        # what actually ran (ONNX Runtime or eager, the exactness guard's cosine), beside the keyed `runtime`
        encoder={**encoded.record, "backends": encoded.backends()},
        preprocessing=encoded.preprocessing,
        probe={
            "name": probe_spec.name,
            "params": fitted.params,
            "selection": fitted.selection.to_json(),
            "config": {k: repr(v) for k, v in fitted.estimator.get_params(deep=True).items() if "__" in k},
            **({"prompts": fitted.prompts} if probe_spec.name == ZEROSHOT else {}),
        },
        metrics={split: m.to_json() for split, m in scored.metrics.items()},
        cache={"key": embedded.key, "path": embedded.path, "hit": embedded.from_cache and not timings.embedded_now},
        timings=timings.to_json(),
        seed=probe_spec.seed,
        near_duplicates=scored.near_duplicates,
    )


def _user_paths(data_spec, out):
    """(label, path, also refuse inside it) for what a --save folder must never be or hold: the data and the results."""
    paths = [("the --out folder", out, True)] if out is not None else []
    if data_spec is None:
        return paths
    source = Path(data_spec.dataset)
    if source.is_dir():
        paths.append(("the dataset folder", source, True))
    elif source.suffix.lower() in (".csv", ".npz"):
        paths.append(("the dataset file", source, False))  # a model beside (not over) a manifest or an npz is fine
    paths += [(label, path, False) for label, path in (("the --metadata file", data_spec.metadata), ("the MedMNIST folder", data_spec.data_dir))
              if path is not None]
    return paths


def _total(counts):
    counts = list(counts)
    return None if any(c is None for c in counts) else sum(counts)
