"""`medprobe curve`: test AUC against the number of labelled training images per class.

It reads the cached embeddings (computing them once if absent), then for each shot count and
seed draws that many train images per class, chooses the probe's hyper-parameter on the full
val split as `medprobe run` does, and scores the test split. Only probes are fitted, so a
curve costs seconds once the embeddings exist. "all" uses the whole train split; it does not
depend on the seed, so it is fitted once.
"""

import csv
import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from medprobe import __version__
from medprobe.cache import atomic_write_bytes
from medprobe.errors import MedprobeError

log = logging.getLogger(__name__)

DEFAULT_SHOTS = ("1", "2", "5", "10", "25", "50", "100", "all")
CURVE_JSON, CURVE_CSV = "curve.json", "curve.csv"


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


def run_curve(dataset, encoder="efficientnet_lite0", probe="logreg", shots=DEFAULT_SHOTS, seeds=(0, 1, 2), out=None,
              data_dir=None, size=28, weights=None, cache_dir=None, batch_size=64, progress=True, force=False):
    """Data-efficiency curve; writes curve.json and curve.csv into `out` when given.

    >>> curve = run_curve("retinamnist", data_dir="../shared/data/medmnist", out="runs/retina_curve")
    >>> [(p["shots"], round(p["auc_mean"], 3)) for p in curve["points"]]
    """
    from medprobe.costs import Stopwatch
    from medprobe.datasets import load_dataset
    from medprobe.embed import embed
    from medprobe.encoders import create_encoder
    from medprobe.metrics import medmnist_acc, medmnist_auc
    from medprobe.probes import fit_probe

    shots, seeds = parse_shots(shots), [int(s) for s in seeds]
    spec = {"dataset": str(dataset), "data_dir": data_dir, "size": size, "encoder": encoder, "probe": probe,
            "shots": [str(s) for s in shots], "seeds": seeds}
    if out is not None and not force:
        previous = _read(Path(out) / CURVE_JSON)
        if previous is not None and previous.get("spec") == spec:
            log.info("curve %s already done; skipping (use force to redo)", out)
            return previous

    started = time.perf_counter()
    data = load_dataset(dataset, data_dir=data_dir, size=size)
    model, transform = create_encoder(encoder, weights=weights)
    embedded = embed(data, model, transform, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    X, y = embedded.vectors, data.labels
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))

    runs = []
    with Stopwatch() as clock:
        for shot in shots:
            for seed in seeds if shot != "all" else seeds[:1]:
                rows = train if shot == "all" else sample_per_class(y, train, shot, np.random.default_rng(seed))
                record = {"shots": str(shot), "seed": seed, "n_train": int(len(rows))}
                try:
                    fitted = fit_probe(probe, X[rows], y[rows], X[val], y[val], data.task, None, seed)
                except (MedprobeError, ValueError) as e:  # e.g. the svm's 3-fold calibration with 1 image per class
                    log.warning("curve point %s shots, seed %d skipped: %s", shot, seed, e)
                    runs.append({**record, "error": str(e)})
                    continue
                scores = fitted.predict_scores(X[test])
                runs.append({**record, "auc": medmnist_auc(y[test], scores, data.task),
                             "acc": medmnist_acc(y[test], scores, data.task), "params": fitted.params})
    curve = {
        "medprobe": __version__,
        "kind": "curve",
        "spec": spec,
        "dataset": data.describe(),
        "encoder": encoder,
        "probe": probe,
        "cache": {"key": embedded.key, "hit": embedded.from_cache},
        "points": summarize(runs, shots),
        "runs": runs,
        "timings": {"embed_s": embedded.seconds, "fit_s": clock.wall, "fit_cpu_s": clock.cpu, "total_s": time.perf_counter() - started},
    }
    if out is not None:
        out = Path(out)
        atomic_write_bytes(out / CURVE_JSON, json.dumps(curve, indent=1, default=str).encode())
        atomic_write_bytes(out / CURVE_CSV, curve_csv(curve).encode())
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


def curve_csv(curve):
    out = io.StringIO()
    columns = ["shots", "n_seeds", "n_train_mean", "auc_mean", "auc_std", "auc_min", "auc_max", "acc_mean", "acc_std"]
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for point in curve["points"]:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in point.items()})
    return out.getvalue()


def _read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def add_command(commands):
    parser = commands.add_parser("curve", help="data efficiency: test AUC vs labelled train images per class (cached embeddings)")
    parser.set_defaults(func=cmd_curve)
    parser.add_argument("--dataset", required=True, help="MedMNIST name, .npz file, image folder or CSV manifest")
    parser.add_argument("--data-dir", help="folder holding MedMNIST npz files")
    parser.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="MedMNIST image size")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--weights", help="local weights file or model folder")
    parser.add_argument("--probe", default="logreg", help="logreg, svm or knn")
    parser.add_argument("--shots", default=",".join(DEFAULT_SHOTS), help="images per class, comma-separated (default %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds per point (default %(default)s)")
    parser.add_argument("--cache-dir", help="embedding cache folder")
    parser.add_argument("--out", default="medprobe-curve", help="folder for curve.json and curve.csv (a run folder works)")
    parser.add_argument("--force", action="store_true", help="recompute even if the folder holds this curve already")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_curve(args):
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as e:
        raise MedprobeError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
    curve = run_curve(args.dataset, args.encoder, args.probe, args.shots, seeds, out=args.out, data_dir=args.data_dir,
                      size=args.size, weights=args.weights, cache_dir=args.cache_dir, progress=not args.quiet, force=args.force)
    print(f"{curve['dataset']['name']} · {args.encoder} · {args.probe}: test AUC by labelled train images per class")
    print(f"{'shots':>6} {'n train':>8} {'AUC mean':>9} {'± sd':>7} {'min':>7} {'max':>7}")
    for p in curve["points"]:
        print(f"{p['shots']:>6} {p['n_train_mean']:>8.0f} {p['auc_mean']:>9.3f} {p['auc_std']:>7.3f} {p['auc_min']:>7.3f} {p['auc_max']:>7.3f}")
    print(f"probe fits {curve['timings']['fit_s']:.1f} s; results in {args.out}/")
