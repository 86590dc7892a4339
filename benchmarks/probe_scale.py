"""The probe's CV selection, today's plain computation beside the row-space one, with time and peak RSS per case.

    python benchmarks/probe_scale.py                                  # the three datasets, synthetic 10k
    python benchmarks/probe_scale.py --sizes 10000,100000,1000000     # and the large synthetic cases
    python benchmarks/probe_scale.py --datasets none --sizes 10000 --probes logreg

Each case runs in its own child process (its peak RSS is the child's ru_maxrss) and prints one table row:
"plain" is `fit_probe(..., selection="cv", fast=False)` (a new scikit-learn pipeline per fold and value, then a
second CV pass for the out-of-fold scores), "fast" the default, and "sklearn LogisticRegressionCV" the peer on the
same 15 folds and the grid the fast selection evaluated (no widening, no one-standard-error rule: it takes the best).
The datasets are read from the embedding store at the default recipe (run `medprobe run` on them once first).
Synthetic rows: a rank-20 signal, 20 stronger nuisance factors and noise, binary, float32, so that C lands inside the grid. The plain selection
is skipped on synthetic sets above --plain-max rows (it would take hours).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

DATA = "../shared/data"
DATASETS = {
    "retinamnist": dict(dataset="retinamnist", data_dir=f"{DATA}/medmnist"),
    "pneumoniamnist_balanced": dict(dataset=f"{DATA}/medmnist/pneumoniamnist_balanced.npz"),
    "ham10000_by_lesion": dict(dataset=f"{DATA}/ham10000_melnv", metadata=f"{DATA}/ham10000_melnv/metadata.csv",
                               group="lesion_id", resplit=True),
}


def load_dataset(name):
    """(X_train, y_train, X_val, y_val, X_test, y_test, task, groups) at the default recipe, from the store."""
    from medprobe.data.datasets import DataSpec
    from medprobe.embedding.fusion import embed_spec
    from medprobe.embedding.options import EmbedOptions

    data, _ = DataSpec(**DATASETS[name]).load()
    X = embed_spec(data, EmbedOptions()).embeddings.vectors
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    return X[train], data.labels[train], X[val], data.labels[val], X[test], data.labels[test], data.task, data.groups_of(train, val)


def synthetic(n, d, seed=0):
    """n rows of d float32 columns: a rank-20 signal (the label a noisy linear function of it), 20 stronger nuisance
    factors the label does not depend on (as acquisition and anatomy vary in real embeddings), and noise.

    Without the nuisance factors the class-mean direction is near-optimal and CV picks the weakest C it is offered
    (1e-5, past the grid's edge); with them the probe must learn to look past them, and C lands inside the grid
    (0.0316 at 10,000 x 1,280)."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, d), np.float32)
    signal, nuisance = rng.normal(size=(20, d)).astype(np.float32), rng.normal(size=(20, d)).astype(np.float32)
    direction = rng.normal(size=20)
    y = np.empty(n, np.int64)
    for start in range(0, n, 50_000):  # in chunks: no float64 copy of a 1M-row matrix
        m = min(50_000, n - start)
        latent, other = rng.normal(size=(m, 20)).astype(np.float32), 10.0 * rng.normal(size=(m, 20)).astype(np.float32)
        y[start:start + m] = (latent @ direction + 2.0 * rng.normal(size=m) > 0)
        X[start:start + m] = latent @ signal + other @ nuisance + 3.0 * rng.standard_normal((m, d), np.float32)
    return X, y


def case(spec):
    """One (data, method, probe) case, run in this (child) process: its row as a dict."""
    from sklearn.metrics import roc_auc_score

    from medprobe.evaluation.metrics import medmnist_auc
    from medprobe.probes.fit import fit_probe

    if spec["data"].startswith("synthetic"):
        n, d = spec["n"], spec["d"]
        X, y = synthetic(n + 5000, d)
        X_tr, y_tr, X_te, y_te = X[:n], y[:n], X[n:], y[n:]
        X_va = y_va = groups = None
        task = "binary"
    else:
        X_tr, y_tr, X_va, y_va, X_te, y_te, task, groups = load_dataset(spec["data"])
    loaded_rss = _rss_mb()
    tick, cpu = time.perf_counter(), _cpu_s()
    if spec["method"] == "peer":
        fitted, params = _peer(X_tr, y_tr, X_va, y_va, task, groups, spec["Cs"])
        scores = fitted.predict_proba(X_te)
    else:
        fitted = fit_probe(spec["probe"], X_tr, y_tr, X_va, y_va, task, selection="cv", groups=groups,
                           fast=spec["method"] == "fast")
        params, scores = fitted.params, fitted.predict_scores(X_te)
    seconds, cpu_s = time.perf_counter() - tick, _cpu_s() - cpu
    auc = medmnist_auc(y_te, scores, task) if task != "binary" else roc_auc_score(y_te, scores[:, 1])
    selection = {} if spec["method"] == "peer" else fitted.selection.to_json()
    return {**spec, "param": {k: v for k, v in params.items() if k != "class_weight"}, "test_auc": auc,
            "cv_auc": selection.get("best_auc"), "evaluated": list(selection.get("scores", {})), "seconds": seconds,
            "cpu_s": cpu_s, "loaded_rss_mb": loaded_rss, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "matrix_mb": (X_tr.nbytes + (0 if X_va is None else X_va.nbytes)) / 2**20,
            "selected_on": selection.get("selected_on_rows"), "fitted_on": selection.get("fitted_on_rows")}


def _peer(X_tr, y_tr, X_va, y_va, task, groups, Cs):
    """scikit-learn's LogisticRegressionCV on the selection's own 15 folds (train+val pooled, as cv pools them)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medprobe.probes.fit import CV_REPEATS, _folds

    X = X_tr if X_va is None else np.concatenate([X_tr, X_va])
    y = y_tr if y_va is None else np.concatenate([y_tr, y_va])
    if groups is None:
        folds = list(RepeatedStratifiedKFold(n_splits=5, n_repeats=CV_REPEATS, random_state=0).split(X, y))
    else:
        pooled = groups[0] if X_va is None else np.concatenate(groups)
        folds = [s for r in range(CV_REPEATS) for s in _folds(X, y, task, 5, r, pooled)]
    scoring = "roc_auc" if task == "binary" else "roc_auc_ovr"
    # The scaler outside the CV, as LogisticRegressionCV cannot refit it per fold: a small advantage to the peer
    peer = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=Cs, cv=folds, scoring=scoring, max_iter=3000))  # one process: its CPU is counted
    peer.fit(X, y)
    return peer, {"C": float(peer[-1].C_[0])}


def _cpu_s():
    """CPU seconds of this process and of the child processes it waited for."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def run_child(spec, timeout):
    tick = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"over {timeout} s"}
    if done.returncode != 0:
        return {**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["wall_with_load_s"] = time.perf_counter() - tick
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, or 'none'")
    parser.add_argument("--probes", default="logreg", help="comma-separated probes for the datasets (synthetic: logreg)")
    parser.add_argument("--sizes", default="10000", help="synthetic row counts, comma-separated ('none' for none)")
    parser.add_argument("--columns", default="4128", help="synthetic columns, one per size or one for all")
    parser.add_argument("--plain-max", type=int, default=20_000, help="largest synthetic set the plain selection runs on")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(json.loads(args.case)), default=float))
        return
    cases = []
    for name in [] if args.datasets == "none" else args.datasets.split(","):
        for probe in args.probes.split(","):
            cases.append([{"data": name, "probe": probe, "method": m} for m in ("plain", "fast")])
    sizes = [] if args.sizes == "none" else [int(s) for s in args.sizes.split(",")]
    columns = [int(c) for c in args.columns.split(",")]
    for i, n in enumerate(sizes):
        d = columns[i] if len(columns) > 1 else columns[0]
        methods = ("plain", "fast") if n <= args.plain_max else ("fast",)
        cases.append([{"data": f"synthetic {n}x{d}", "n": n, "d": d, "probe": "logreg", "method": m} for m in methods])
    print("| data | probe | method | chosen | CV AUC | test AUC | s | CPU s | peak RSS MB (matrix MB) | selected on / fitted on | plain / fast s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for group in cases:
        rows = [run_child(spec, args.timeout) for spec in group]
        fast = next((r for r in rows if r.get("method") == "fast" and "error" not in r), None)
        if not args.no_peer and fast is not None and fast["probe"] == "logreg" and fast.get("n", 0) <= args.plain_max:
            rows.append(run_child({**group[0], "method": "peer", "Cs": sorted(float(c) for c in fast["evaluated"])}, args.timeout))
        plain = next((r for r in rows if r.get("method") == "plain" and "error" not in r), None)
        for row in rows:
            if "error" in row:
                print(f"| {row['data']} | {row['probe']} | {row['method']} | failed: {row['error']} |", flush=True)
                continue
            ratio = f"{plain['seconds'] / row['seconds']:.1f}x" if plain and row["method"] != "plain" else ""
            cv = f"{row['cv_auc']:.4f}" if row["cv_auc"] is not None else "-"
            method = "sklearn LogisticRegressionCV" if row["method"] == "peer" else row["method"]
            print(f"| {row['data']} | {row['probe']} | {method} | {row['param']} | {cv} | {row['test_auc']:.4f} | {row['seconds']:.1f} "
                  f"| {row['cpu_s']:.1f} | {row['peak_rss_mb']:.0f} ({row['matrix_mb']:.0f}) | {row['selected_on']} / {row['fitted_on']} "
                  f"| {ratio} |", flush=True)


if __name__ == "__main__":
    main()
