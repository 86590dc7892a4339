"""Is model A better than model B on the same test images? A paired comparison of two score sets.

Two answers, both on the difference D = AUC_A - AUC_B of MedMNIST's AUC (binary: the positive
column; multi-class and ordinal: the unweighted mean of one-vs-rest AUCs; multi-label: the mean
of per-label AUCs):

- **Paired bootstrap.** The same resampled rows score both models (`resample_counts`, seed
  BOOTSTRAP_SEED, N_BOOTSTRAP resamples, the draws every medprobe CI uses), so the percentile
  interval of D keeps the pairing; each model's own interval is the one its run reported.
- **DeLong's test** (DeLong, DeLong & Clarke-Pearson, Biometrics 1988), with the structural
  components computed from midranks (Sun & Xu, IEEE SPL 2014): for one binary problem with m
  positives and n negatives, V10(i) = the share of negatives that positive i outscores (ties
  1/2) and V01(j) = the share of positives that outscore negative j; AUC = mean V10 = mean V01.

How the DeLong variance of a macro (mean over classes) difference is derived. Write each
image's *influence* on class k's AUC as its structural component in that one-vs-rest problem
divided by the size of its side there: z_k(i) = V10_k(i) / m_k when image i is of class k, and
V01_k(i) / n_k otherwise. The influence of image i on D is then

    phi(i) = (1/K) * sum over scored classes k of [z_k^A(i) - z_k^B(i)]

and, with the images grouped by their true class c (the strata, as positives and negatives are
in DeLong's binary test),

    Var(D) = sum over c of  n_c / (n_c - 1) * sum over i in c of (phi(i) - mean of phi over c)^2

For a binary task (K = 1, strata = positives and negatives) this is exactly DeLong's
S10/m + S01/n for the difference, Var(A) + Var(B) - 2 Cov(A, B). For K classes it adds the
covariances between class AUCs that come from the same image appearing in every one-vs-rest
problem. Multi-label images belong to several labels at once, so there are no class strata:
the images are one stratum and phi is centred on its overall mean. z = D / sqrt(Var(D)) and the
p-value is two-sided from the standard normal.
"""

import numpy as np
from scipy.stats import norm, rankdata

from medprobe.evaluation.metrics import (
    BOOTSTRAP_SEED,
    N_BOOTSTRAP,
    binary_columns,
    medmnist_auc,
    percentile_ci,
    resample_counts,
    scorable,
    weighted_auc,
)

LEVEL = 0.95


def structural_components(truth, score):
    """(AUC, V10 per positive, V01 per negative) of one binary problem, from midranks (Sun & Xu 2014).

    >>> structural_components(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.2]))
    (0.75, array([1. , 0.5]), array([0.75]))
    """
    truth = np.asarray(truth).astype(bool)
    positives, negatives = score[truth], score[~truth]
    m, n = len(positives), len(negatives)
    rank_all = rankdata(np.concatenate([positives, negatives]))  # midranks: a tie counts one half
    v10 = (rank_all[:m] - rankdata(positives)) / n  # negatives below positive i (ties 1/2), as a share
    v01 = 1.0 - (rank_all[m:] - rankdata(negatives)) / m  # positives above negative j (ties 1/2), as a share
    return float(v10.mean()), v10, v01


def delong_test(y_true, scores_a, scores_b, task):
    """DeLong's two-sided test of AUC_A = AUC_B on the same rows: {difference, se, z, p, ci}; see the module docstring.

    `se`, `z` and `p` are None when the variance cannot be estimated (a stratum of one image, or two
    identical score sets: then D = 0 with no variance).
    """
    y_true = np.asarray(y_true)
    columns_a = binary_columns(y_true, np.asarray(scores_a, dtype=np.float64), task)
    columns_b = binary_columns(y_true, np.asarray(scores_b, dtype=np.float64), task)
    scored = [k for k, (t, _) in enumerate(columns_a) if scorable(t)]
    phi = np.zeros(len(y_true))
    difference = 0.0
    for k in scored:
        truth = columns_a[k][0].astype(bool)
        auc_a, v10_a, v01_a = structural_components(truth, columns_a[k][1])
        auc_b, v10_b, v01_b = structural_components(truth, columns_b[k][1])
        difference += (auc_a - auc_b) / len(scored)
        phi[truth] += (v10_a - v10_b) / truth.sum() / len(scored)
        phi[~truth] += (v01_a - v01_b) / (~truth).sum() / len(scored)
    strata = np.zeros(len(y_true), dtype=int) if task == "multi-label" else y_true  # binary: positives and negatives
    variance, usable = 0.0, True
    for c in np.unique(strata):
        members = phi[strata == c]
        if len(members) < 2:
            usable = False
            break
        variance += len(members) / (len(members) - 1) * ((members - members.mean()) ** 2).sum()
    record = {"difference": float(difference), "se": None, "z": None, "p": None, "ci": None}
    if usable and variance > 0:
        se = float(np.sqrt(variance))
        z = difference / se
        half = norm.ppf(0.5 + LEVEL / 2) * se
        record.update(se=se, z=float(z), p=float(2 * norm.sf(abs(z))), ci=[float(difference - half), float(difference + half)])
    return record


def paired_bootstrap(y_true, scores_a, scores_b, task, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED, level=LEVEL):
    """Percentile CIs of AUC_A, AUC_B and AUC_A - AUC_B over the same `n_boot` seeded resamples of the rows.

    A resample in which a scored class is absent has no AUC and is left out, as in `bootstrap_ci`.
    """
    y_true = np.asarray(y_true)
    columns = [(t, a, b) for (t, a), (_, b) in zip(binary_columns(y_true, np.asarray(scores_a, dtype=np.float64), task),
                                                   binary_columns(y_true, np.asarray(scores_b, dtype=np.float64), task))
               if scorable(t)]
    draws_a, draws_b = [], []
    for counts in resample_counts(len(y_true), n_boot, seed):
        draws_a.append(np.mean([weighted_auc(t, a, counts) for t, a, _ in columns], axis=0))
        draws_b.append(np.mean([weighted_auc(t, b, counts) for t, _, b in columns], axis=0))
    draws_a, draws_b = np.concatenate(draws_a), np.concatenate(draws_b)
    valid = np.isfinite(draws_a) & np.isfinite(draws_b)  # paired: a resample counts for both or for neither

    def interval(values):
        return percentile_ci(values[valid], level)

    difference = draws_a - draws_b
    return {
        "auc_a_ci": interval(draws_a),
        "auc_b_ci": interval(draws_b),
        "difference_ci": interval(difference),
        "difference_sd": float(np.std(difference[valid], ddof=1)) if valid.sum() > 1 else None,
        "bootstrap": {"n": n_boot, "seed": seed, "level": level, "valid_resamples": int(valid.sum())},
    }


def paired_comparison(y_true, scores_a, scores_b, task, label_names=None, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """AUC of A and of B, their difference with a paired bootstrap CI, and DeLong's z and two-sided p.

    The rows of `scores_a` and `scores_b` must be the same images in the same order, with labels `y_true`.

    >>> c = paired_comparison(y, scores_lite0, scores_lite2, "ordinal")
    >>> c["difference"], c["difference_ci"], c["delong"]["p"]
    """
    y_true = np.asarray(y_true)
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if scores_a.shape != scores_b.shape or len(scores_a) != len(y_true):
        raise ValueError(f"paired scores must have the same shape and one row per label; got {scores_a.shape}, {scores_b.shape} "
                         f"for {len(y_true)} labels")
    columns = binary_columns(y_true, scores_a, task)
    names = list(label_names) if label_names is not None else [str(k) for k in range(len(columns))]
    names = names[-1:] if task == "binary" else names
    over = [name for name, (t, _) in zip(names, columns) if scorable(t)]
    if not over:
        raise ValueError("no class has both positive and negative images here, so AUC is undefined")
    delong = delong_test(y_true, scores_a, scores_b, task)
    aucs = [medmnist_auc(y_true, scores_a, task), medmnist_auc(y_true, scores_b, task)]  # the AUCs every run reports
    method = ("DeLong (1988) via midranks (Sun & Xu 2014)"
              + ("" if task == "binary" else f"; {'per-label' if task == 'multi-label' else 'one-vs-rest'} mean over "
                 f"{len(over)} {'labels' if task == 'multi-label' else 'classes'}, variance from per-image influences summed over them")
              + f"; paired percentile bootstrap, {n_boot} resamples (seed {seed})")
    return {
        "n": len(y_true),
        "task": task,
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": float(aucs[0] - aucs[1]),
        **paired_bootstrap(y_true, scores_a, scores_b, task, n_boot, seed),
        "delong": delong,
        "auc_over": over,
        "method": method,
    }

