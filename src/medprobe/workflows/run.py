"""One experiment end to end: dataset -> embeddings -> probe -> metrics -> results folder (and, with `save`, a saved probe)."""

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medprobe.core.costs import cpu_seconds
from medprobe.core.errors import ModelError
from medprobe.core.files import check_writable_folder
from medprobe.embedding.fusion import check_spec, embed_spec, split_choices, split_spec
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.ray import on_cluster
from medprobe.evaluation.calibration import resolve_method
from medprobe.evaluation.metrics import N_BOOTSTRAP, check_n_boot, evaluate
from medprobe.evaluation.near_duplicates import COSINE, near_duplicates
from medprobe.evaluation.operating_points import column_names
from medprobe.evaluation.study import StudyOptions, decisions_fitted_on, fit_decisions, score_decisions
from medprobe.evaluation.subgroups import group_values
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
        started = {"ray_start_s": cluster["start_s"]} if options.ray is not None else {}
        return run_here(data_spec, options, probe_spec, evaluation, out, save, scanned, index, timings=started)


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
    timings = dict(timings or {})  # run() puts Ray's start-up here
    started, started_cpu = time.perf_counter(), cpu_seconds()
    choices = check_before_images(options, probe_spec, out, save, data_spec)
    data, scanned = data_spec.load(scanned)
    # A misspelt subgroup column, or a calibrator that does not fit the task, is refused before any embedding.
    resolve_method(evaluation.study.calibrate, data.task)
    column_names(data.task, data.label_names, evaluation.study.positive)
    for column in evaluation.study.subgroups.columns:
        group_values(data.columns, column, evaluation.study.subgroups, data.name)
    timings["scan_s"] = scanned.seconds
    timings["load_s"] = time.perf_counter() - started
    timings["load_cpu_s"] = cpu_seconds() - started_cpu

    tick_cpu = cpu_seconds()
    candidates = [embed_spec(data, replace(options, encoder=choice)) for choice in choices]
    timings["embed_s"] = sum(c.embeddings.seconds for c in candidates)
    timings["embed_cpu_s"] = cpu_seconds() - tick_cpu
    # What computing every image cost, whenever it was computed: a run that read the store does not flatter the compute ratio.
    # With a choice of encoders, every candidate's cost counts. A cost not known (images embedded on Ray) stays None: unknown.
    costs = [c.embeddings.cost for c in candidates]
    timings.update(embed_cost_s=_total(c["wall_s"] for c in costs), embed_cost_cpu_s=_total(c["cpu_s"] for c in costs),
                   embed_cost_source=costs[0]["measured_in"], embedded_now=_total(c.get("computed_now") for c in costs),
                   embedded_from_store=_total(c.get("from_store") for c in costs))

    y = data.labels
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    tick, tick_cpu = time.perf_counter(), cpu_seconds()
    if probe_spec.name == ZEROSHOT:
        encoded = candidates[0]
        X = encoded.embeddings.vectors
        fitted = fit_zeroshot(encoded.encoders, probe_spec.prompts, data.label_names, data.task, X[train], y[train])
    else:
        fits = [fit_probe(probe_spec.name, c.embeddings.vectors[train], y[train], c.embeddings.vectors[val], y[val], data.task,
                          probe_spec.class_weight, probe_spec.seed, data.label_names, probe_spec.selection, data.groups_of(train, val),
                          parallel="ray" if options.ray is not None else None)
                for c in candidates]
        # The encoder is one more hyper-parameter: chosen by the same protocol's score (val or CV), never by test.
        best = max(range(len(fits)), key=lambda i: fits[i].selected_auc())
        encoded, fitted = candidates[best], fits[best]
        if len(choices) > 1:
            fitted.selection["encoder_choice"] = {"chosen": choices[best], "by": fitted.selection["criterion"],
                                                  "scores": {choice: f.selected_auc() for choice, f in zip(choices, fits)}}
        X = encoded.embeddings.vectors
    embedded = encoded.embeddings
    timings["fit_s"] = time.perf_counter() - tick
    timings["fit_cpu_s"] = cpu_seconds() - tick_cpu

    tick, tick_cpu = time.perf_counter(), cpu_seconds()
    scores = {split: fitted.predict_scores(X[rows]) for split, rows in (("val", val), ("test", test))}
    # Calibrator and thresholds are decided on scores of images the probe did not fit, then applied unchanged to test
    # (and saved): val's; or, when selection "cv" fitted the probe on train+val, the out-of-fold scores over those rows.
    out_of_fold = fitted.out_of_fold
    pooled = out_of_fold is not None and fitted.selection["fit_on"] == "train+val"
    decided_on, decision_scores = val, scores["val"]
    if out_of_fold is not None:
        decided_on, decision_scores = (np.concatenate([train, val]) if pooled else train), out_of_fold
    if pooled:
        scores["val"] = out_of_fold[len(train):]  # val's own held-out scores: the fitted probe has seen val
    metrics = {
        split: evaluate(y[rows], scores[split], data.task, data.label_names, evaluation.n_boot, probe_spec.seed)
        for split, rows in (("val", val), ("test", test))
    }
    if pooled:
        metrics["val"]["scored_by"] = "out-of-fold predictions (selection cv fitted the probe on train+val)"
    decisions = fit_decisions(y[decided_on], decision_scores, data.task, data.label_names, evaluation.study,
                              decisions_fitted_on(fitted.selection.get("fit_on"), out_of_fold))
    metrics["test"].update(score_decisions(y[test], scores["test"], data.task, data.label_names, decisions,
                                           {k: v[test] for k, v in data.columns.items()}, evaluation.study, evaluation.n_boot,
                                           probe_spec.seed, data.name))
    close = near_duplicates(X[test], X[train], data.ids[test], data.ids[train], evaluation.near_duplicate_cosine)
    if close["count"]:
        log.warning("%d of %d test images have a near-identical train image (embedding cosine >= %g), e.g. %s",
                    close["count"], close["of"], close["threshold"], ", ".join(f"{e['test']} ~ {e['train']}" for e in close["examples"][:3]))
    timings["evaluate_s"] = time.perf_counter() - tick
    timings["evaluate_cpu_s"] = cpu_seconds() - tick_cpu
    timings["total_s"] = time.perf_counter() - started
    timings["total_cpu_s"] = cpu_seconds() - started_cpu

    result = RunResult(
        dataset=data.describe(),
        images=scanned.describe(),
        # what actually ran (ONNX Runtime or eager, the exactness guard's cosine), beside the keyed `runtime`
        encoder={**encoded.record, "backends": encoded.backends()},
        preprocessing=encoded.preprocessing,
        probe={
            "name": probe_spec.name,
            "params": fitted.params,
            "selection": fitted.selection,
            "config": {k: repr(v) for k, v in fitted.estimator.get_params(deep=True).items() if "__" in k},
            **({"prompts": fitted.prompts} if probe_spec.name == ZEROSHOT else {}),
        },
        metrics=metrics,
        cache={"key": embedded.key, "path": embedded.path, "hit": embedded.from_cache},
        timings=timings,
        seed=probe_spec.seed,
        near_duplicates=close,
    )
    if out is not None:
        xy = project_2d(X[test], evaluation.projection, probe_spec.seed)
        write_run_folder(out, result, data.ids[test], y[test], scores["test"], projection=(xy, evaluation.projection))
    if save is not None:
        fitted_on = np.concatenate([train, val]) if fitted.selection.get("fit_on") == "train+val" else train
        save_model(save, fitted, data, encoded.encoders[0], encoded.transforms[0], options.encoder, options.weights, metrics, probe_spec.seed,
                   decisions, training_index(data, X, fitted_on) if index else None, calibration=encoded.encoders[0].int8_calibration)
    return result


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
