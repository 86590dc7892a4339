"""Should CV choose among the default recipe's column groups? Each candidate set of columns of one embedding, scored by
the selection protocol (--selection cv, logreg) and on test, on the three shared datasets, then left one dataset out.

    python benchmarks/column_groups.py

The default recipe (efficientnet_lite0@stages,up,max) holds, in one pass, the head's and every stage's average and
maximum. Choosing among subsets of its columns costs no embedding. For each dataset and candidate this prints the CV AUC
(what the selection sees) and the test AUC (what it does not), then:
  - "CV per dataset": the candidate with the best CV AUC on that dataset, and its test AUC;
  - "leave one out": the one fixed candidate with the best mean CV AUC on the other two datasets, scored on the third.
The embeddings come from the store at the default recipe (run `medprobe run` on each dataset once first).
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_scale import DATASETS, load_dataset  # noqa: E402 -- the same three datasets and store reads

from medprobe.core import defaults  # noqa: E402
from medprobe.encoders.registry import column_groups  # noqa: E402
from medprobe.evaluation.metrics import medmnist_auc  # noqa: E402
from medprobe.probes.columns import CANDIDATES, columns_of  # noqa: E402
from medprobe.probes.fit import fit_probe  # noqa: E402


def main():
    groups = column_groups(defaults.ENCODER)
    rows = {}
    for name in DATASETS:
        X_tr, y_tr, X_va, y_va, X_te, y_te, task, split_groups = load_dataset(name)
        for candidate in CANDIDATES:
            columns = columns_of(groups, candidate)
            tick = time.perf_counter()
            fitted = fit_probe("logreg", X_tr[:, columns], y_tr, X_va[:, columns], y_va, task, selection="cv", groups=split_groups)
            test = medmnist_auc(y_te, fitted.predict_scores(X_te[:, columns]), task)
            rows[name, candidate] = (fitted.selection.score(), test, fitted.params["C"], time.perf_counter() - tick)
            print(f"{name:26s} {candidate:10s} {len(columns):5d} cols  C={fitted.params['C']:<9g} CV {rows[name, candidate][0]:.4f}  "
                  f"test {test:.4f}  {rows[name, candidate][3]:.1f} s", flush=True)
    names = list(DATASETS)
    print("\n| dataset | all columns (today) | CV per dataset: chosen, test AUC | leave one out: chosen on the other two, test AUC |")
    print("|---|---|---|---|")
    for held in names:
        chosen = max(CANDIDATES, key=lambda c: rows[held, c][0])
        others = [n for n in names if n != held]
        fixed = max(CANDIDATES, key=lambda c: np.mean([rows[n, c][0] for n in others]))
        print(f"| {held} | {rows[held, 'all'][1]:.4f} | {chosen}: {rows[held, chosen][1]:.4f} | {fixed}: {rows[held, fixed][1]:.4f} |")


if __name__ == "__main__":
    main()
