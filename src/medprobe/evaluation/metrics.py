"""Metrics exactly as MedMNIST's evaluator defines them, plus seeded bootstrap CIs.

| task | AUC | ACC |
| binary | ROC AUC of the positive-class score | threshold 0.5 on the positive-class score |
| multi-class, ordinal | unweighted mean of one-vs-rest AUCs | argmax |
| multi-label | mean of per-label AUCs | mean per-label accuracy at threshold 0.5 |

The bootstrap resamples test rows with replacement; each resample is a vector of counts, and
AUC under counts is the weighted Mann-Whitney statistic, computed for all resamples at once.

A class (or label) with no positive or no negative image in the scored rows has no AUC. The
macro AUC is then the mean over the classes that have one, and the result names the others;
it is never nan. When every class is present this is exactly MedMNIST's number.
"""

from dataclasses import asdict, dataclass, field, fields

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from medprobe.core.defaults import N_BOOTSTRAP
from medprobe.core.defaults import SEED as BOOTSTRAP_SEED
from medprobe.core.errors import MedprobeError

# MedMNIST's evaluator (medmnist/evaluator.py, getACC) calls a score positive when it is strictly above 0.5.
# Every decision in medprobe (ACC, confusion matrices, `predict`) goes through `predictions` below.
THRESHOLD = 0.5
SMALL_CLASS = 10  # fewer test images than this in some class: the result is flagged as resting on few images
MIN_VALID_RESAMPLES = 0.95  # below this share of usable bootstrap resamples the CI is flagged


def binary_columns(y_true, scores, task):
    """The (truth, score) pairs whose AUCs MedMNIST averages, one per class or label."""
    if task == "binary":
        return [(y_true, scores[:, -1] if scores.ndim == 2 else scores)]
    if task == "multi-label":
        return [(y_true[:, j], scores[:, j]) for j in range(scores.shape[1])]
    return [((y_true == k).astype(int), scores[:, k]) for k in range(scores.shape[1])]


def predictions(scores, task):
    """Predicted class index per row (argmax; binary: positive score > THRESHOLD), or a 0/1 matrix for multi-label."""
    if task == "binary":
        return ((scores[:, -1] if scores.ndim == 2 else scores) > THRESHOLD).astype(int)
    if task == "multi-label":
        return (scores > THRESHOLD).astype(int)
    return np.argmax(scores, axis=-1)


def scorable(truth):
    """A one-vs-rest column has an AUC only if it has both positives and negatives."""
    return 0 < truth.sum() < len(truth)


def medmnist_auc(y_true, scores, task):
    """Mean AUC over the classes that have one (all of them, in any usable test set: then it is MedMNIST's AUC)."""
    aucs = [roc_auc_score(t, s) for t, s in binary_columns(y_true, scores, task) if scorable(t)]
    if not aucs:
        raise ValueError("no class has both positive and negative images here, so AUC is undefined")
    return float(np.mean(aucs))


def medmnist_acc(y_true, scores, task):
    return float(np.mean(_correct(y_true, scores, task)))


def _correct(y_true, scores, task):
    """Per-row correctness whose mean is the MedMNIST ACC (per-label accuracy averaged for multi-label)."""
    predicted = predictions(scores, task)
    if task == "multi-label":
        return (predicted == y_true).mean(axis=1)
    return (predicted == y_true).astype(float)


def weighted_auc(truth, score, weights):
    """ROC AUC of one binary problem under each row of `weights` (B, N); ties count one half.

    With integer weights this equals roc_auc_score on the rows repeated that many times.
    """
    order = np.argsort(score, kind="mergesort")
    score, truth, weights = score[order], truth[order].astype(bool), weights[:, order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])  # first row of each group of tied scores
    positives = np.add.reduceat(weights * truth, starts, axis=1)
    negatives = np.add.reduceat(weights * ~truth, starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positives * (below + 0.5 * negatives)).sum(axis=1) / pairs


def check_n_boot(n_boot):
    """Refuse, before any work, a resample count that gives no interval (-1 was taken and printed 'no CI').

    >>> check_n_boot(1000)
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise MedprobeError(f"the number of bootstrap resamples (--n-boot) must be a whole number of at least 1 (default {N_BOOTSTRAP}), "
                            f"got {n_boot!r}")


def resample_counts(n, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """The seeded bootstrap resamples of `n` rows, as blocks of count vectors (B, n): how often each row was drawn.

    Every bootstrap in medprobe draws through here, so two analyses with the same seed resample the same rows
    (a paired comparison's per-run intervals are those the runs reported).
    """
    rng = np.random.default_rng(seed)
    for block in np.array_split(np.arange(n_boot), max(1, n_boot * n // 5_000_000)):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=len(block)).astype(np.float64)


def bootstrap_weights(n, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """(n_boot, n) resample counts: the very resamples `bootstrap_ci` draws for the AUC's CI (same seed, same blocks).

    float32 holds every count exactly and halves the memory (1,000 resamples of 47,000 test images: 190 MB).
    """
    return np.concatenate([counts.astype(np.float32) for counts in resample_counts(n, n_boot, seed)])


def percentile_ci(values, level=0.95):
    """[lo, hi] over the finite values, or None when there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = 100 * (1 - level) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def bootstrap_ci(y_true, scores, task, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED, level=0.95):
    """Percentile CIs for AUC and ACC over `n_boot` seeded resamples of the rows.

    A resample in which a scored class is absent (or alone) has no AUC and is left out of the AUC
    interval; how many were usable is recorded, and the interval is None when none were.
    """
    n = len(y_true)
    columns = [(t, s) for t, s in binary_columns(y_true, scores, task) if scorable(t)]
    correct = _correct(y_true, scores, task)
    aucs, accs = [], []
    for counts in resample_counts(n, n_boot, seed):
        per_class = [weighted_auc(t, s, counts) for t, s in columns]
        aucs.append(np.mean(per_class, axis=0) if per_class else np.full(len(counts), np.nan))
        accs.append(counts @ correct / n)
    aucs, accs = np.concatenate(aucs), np.concatenate(accs)
    valid = int(np.isfinite(aucs).sum())
    return {
        "auc_ci": percentile_ci(aucs, level),
        "acc_ci": percentile_ci(accs, level),
        "bootstrap": {"n": n_boot, "seed": seed, "level": level, "valid_auc_resamples": valid},
    }


@dataclass
class SplitMetrics:
    """One split's metrics, MedMNIST AUC and ACC first with their 95 % bootstrap CIs: results.json's `metrics[split]`.

    The validation study adds its operating points, calibration and subgroups on test; `scored_by` says when val was
    scored by out-of-fold predictions. Fields left None are not written, so the JSON keeps its layout.
    """

    auc: float | None  # None: no class has both positives and negatives
    acc: float
    auc_ci: tuple
    acc_ci: tuple
    bootstrap: dict
    balanced_accuracy: float
    macro_f1: float
    per_class_auc: dict
    auc_over: list
    images_per_class: dict
    n: int
    notes: list = field(default_factory=list)  # in words, what makes the numbers less than they look
    operating_points: dict | None = None
    calibration: dict | None = None
    subgroups: dict | None = None
    scored_by: str | None = None

    def to_json(self):
        return {k: v for k, v in asdict(self).items() if v is not None or k == "auc"}

    @classmethod
    def from_json(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def evaluate(y_true, scores, task, label_names=None, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """All metrics for one split, MedMNIST-defined AUC and ACC first, with 95 % bootstrap CIs.

    `notes` lists, in words, everything that makes the numbers less than they look: classes left
    out of the AUC, classes with few images, a CI resting on too few usable resamples.

    >>> evaluate(np.array([0, 1, 1, 0]), np.array([[.9, .1], [.2, .8], [.4, .6], [.6, .4]]), "binary").auc
    1.0
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    predicted = predictions(scores, task)
    columns = binary_columns(y_true, scores, task)
    names = list(label_names) if label_names is not None else [str(i) for i in range(len(columns))]
    if task == "binary":
        names = names[-1:]
    if task == "multi-label":
        balanced = np.mean([balanced_accuracy_score(y_true[:, j], predicted[:, j]) for j in range(y_true.shape[1])])
    else:
        balanced = balanced_accuracy_score(y_true, predicted)
    per_class = {name: float(roc_auc_score(t, s)) for name, (t, s) in zip(names, columns) if scorable(t)}
    unscored = [name for name in names if name not in per_class]
    metrics = {
        # medmnist_auc's mean, from the per-class AUCs computed once; None: no class has both positives and negatives
        "auc": float(np.mean(list(per_class.values()))) if per_class else None,
        "acc": medmnist_acc(y_true, scores, task),
        **bootstrap_ci(y_true, scores, task, n_boot, seed),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
        "per_class_auc": per_class,
        "auc_over": list(per_class),
        "images_per_class": _images_per_class(y_true, task, label_names, len(columns)),
        "n": int(len(y_true)),
    }
    return SplitMetrics(**metrics, notes=_notes(metrics, unscored))


def _images_per_class(y_true, task, label_names, k):
    names = list(label_names) if label_names is not None else [str(i) for i in range(k)]
    counts = y_true.sum(axis=0) if task == "multi-label" else np.bincount(y_true, minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts)}


def _notes(metrics, unscored):
    notes = []
    if metrics["auc"] is None:
        notes.append("AUC is undefined here: no class has both positive and negative images")
    elif unscored:
        notes.append(f"AUC is the mean over {len(metrics['auc_over'])} classes; {', '.join(map(repr, unscored))} "
                     "cannot be scored here (no positive or no negative image)")
    small = {name: n for name, n in metrics["images_per_class"].items() if n < SMALL_CLASS}
    if small:
        notes.append(f"few images: {', '.join(f'{name!r} has {n}' for name, n in small.items())} (under {SMALL_CLASS}); "
                     "the AUC and its CI rest on them")
    boot = metrics["bootstrap"]
    if boot["valid_auc_resamples"] < MIN_VALID_RESAMPLES * boot["n"]:
        notes.append(f"only {boot['valid_auc_resamples']} of {boot['n']} bootstrap resamples had every scored class, "
                     "so the AUC interval is from those" + ("" if boot["valid_auc_resamples"] else " (none: no interval)"))
    return notes
