"""`medprobe curve`: test AUC against the number of labelled training images per class.

It reads the cached embeddings (computing them once if absent), then for each shot count and
seed draws that many train images per class, chooses the probe's hyper-parameter by the
selection protocol, fits it, and scores the test split. "cv" (the default, as in `medprobe run`)
cross-validates on the drawn images alone and fits on them, so a point uses no labels beyond its
shots (too few to cross-validate: the probe's default, said in each run's `criterion`); "val"
chooses on the full val split and fits on the drawn images (MedMNIST's rule; val's labels help
every point). Only probes are fitted, so a
curve costs seconds once the embeddings exist. "all" uses the whole train split; it does not
depend on the seed, so it is fitted once.
"""

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medprobe.core import defaults
from medprobe.core.costs import Stopwatch
from medprobe.core.errors import MedprobeError
from medprobe.core.files import check_writable_folder
from medprobe.embedding.embed import embed
from medprobe.embedding.fusion import scan_for
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.ray import embed_parts_on_ray
from medprobe.encoders import create_encoder
from medprobe.evaluation.metrics import medmnist_acc, medmnist_auc
from medprobe.probes.fit import fit_probe
from medprobe.probes.spec import ProbeSpec
from medprobe.reporting.results import CURVE_JSON, CurveResult, read_curve, write_curve

log = logging.getLogger(__name__)

DEFAULT_SHOTS = ("1", "2", "5", "10", "25", "50", "100", "all")
DEFAULT_SEEDS = (0, 1, 2)


def parse_shots(shots):
    """'1,2,5,all' or a list -> [1, 2, 5, 'all'], checked."""
    items = shots.split(",") if isinstance(shots, str) else list(shots)
    parsed = []
    for item in items:
        item = str(item).strip().lower()
        if item == "all":
            parsed.append("all")
        elif item.isdigit() and int(item) > 0:
            parsed.append(int(item))
        else:
            raise MedprobeError(f"shots must be positive integers or 'all', got {item!r}")
    return parsed


def sample_per_class(labels, rows, shots, rng):
    """`shots` rows of each class (all of a class that has fewer); multi-label: rows with each label on, pooled."""
    picked = []
    columns = [labels[rows] == k for k in np.unique(labels[rows])] if labels.ndim == 1 else list(labels[rows].T.astype(bool))
    for members in columns:
        candidates = rows[members]
        picked.extend(rng.choice(candidates, size=min(shots, len(candidates)), replace=False))
    return np.unique(np.array(picked, dtype=np.int64))


def run_curve(data_spec, options=None, probe="logreg", shots=DEFAULT_SHOTS, seeds=DEFAULT_SEEDS, out=None, force=False,
              selection=defaults.SELECTION):
    """Data-efficiency curve; writes curve.json and curve.csv into `out` when given.

    >>> curve = run_curve(DataSpec("retinamnist", data_dir="../shared/data/medmnist"), out="runs/retina_curve")
    >>> [(p["shots"], round(p["auc_mean"], 3)) for p in curve.points]
    """
    options = options or EmbedOptions()
    shots, seeds = parse_shots(shots), [int(s) for s in seeds]
    ProbeSpec(probe, selection=selection).check()
    if out is not None:
        check_writable_folder(out)
    if "+" in options.encoder:
        raise MedprobeError(f"curve embeds with one encoder; got the fusion {options.encoder!r}")
    # Everything that changes the points; a folder holding a curve of this spec is done.
    spec = {**asdict(data_spec), "encoder": options.encoder, "weights": options.weights, "runtime": options.runtime,
            "probe": probe, "selection": selection, "shots": [str(s) for s in shots], "seeds": seeds}
    if out is not None and not force and (Path(out) / CURVE_JSON).is_file():
        try:
            previous = read_curve(out)
        except MedprobeError:
            previous = None
        if previous is not None and previous.spec == spec:
            log.info("curve %s already done; skipping (use force to redo)", out)
            return previous

    started = time.perf_counter()
    data, _ = data_spec.load(scan_for(data_spec, options))
    model, transform = create_encoder(options.encoder, weights=options.weights, device=options.device, runtime=options.runtime)
    # --ray: what the store lacks is embedded on the cluster
    embedded = embed_parts_on_ray(data, [(model, transform)], options)[0] if options.ray is not None else embed(data, model, transform, options)
    X, y = embedded.vectors, data.labels
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))

    runs = []
    with Stopwatch() as clock:
        for shot in shots:
            for seed in seeds if shot != "all" else seeds[:1]:
                rows = train if shot == "all" else sample_per_class(y, train, shot, np.random.default_rng(seed))
                record = {"shots": str(shot), "seed": seed, "n_train": int(len(rows))}
                try:
                    held = val if selection == "val" else val[:0]  # cv: no labels beyond the point's shots
                    fitted = fit_probe(probe, X[rows], y[rows], X[held], y[held], data.task, None, seed, selection=selection,
                                       groups=data.groups_of(rows, held))
                except (MedprobeError, ValueError) as e:  # e.g. the svm's 3-fold calibration with 1 image per class
                    log.warning("curve point %s shots, seed %d skipped: %s", shot, seed, e)
                    runs.append({**record, "error": str(e)})
                    continue
                scores = fitted.predict_scores(X[test])
                runs.append({**record, "auc": medmnist_auc(y[test], scores, data.task),
                             "acc": medmnist_acc(y[test], scores, data.task), "params": fitted.params,
                             "criterion": fitted.selection.criterion})
    curve = CurveResult(
        spec=spec,
        dataset=data.describe(),
        encoder=options.encoder,
        probe=probe,
        cache={"key": embedded.key, "hit": embedded.from_cache},
        points=summarize(runs, shots),
        runs=runs,
        timings={"embed_s": embedded.seconds, "fit_s": clock.wall, "fit_cpu_s": clock.cpu, "total_s": time.perf_counter() - started},
    )
    if out is not None:
        write_curve(out, curve)
    return curve


def summarize(runs, shots):
    """Mean, standard deviation, min and max of test AUC/ACC over seeds, per shot count."""
    points = []
    for shot in shots:
        done = [r for r in runs if r["shots"] == str(shot) and "auc" in r]
        if not done:
            continue
        aucs, accs = np.array([r["auc"] for r in done]), np.array([r["acc"] for r in done])
        points.append({
            "shots": str(shot), "n_seeds": len(done), "n_train_mean": float(np.mean([r["n_train"] for r in done])),
            "auc_mean": float(aucs.mean()), "auc_std": float(aucs.std()), "auc_min": float(aucs.min()), "auc_max": float(aucs.max()),
            "acc_mean": float(accs.mean()), "acc_std": float(accs.std()),
        })
    return points
