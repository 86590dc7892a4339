"""Operating points: a decision threshold chosen on held-out scores, then sensitivity, specificity, PPV, NPV and F1 on test.

Below, "val" means the held-out scores the threshold is chosen on: the val split's, or the out-of-fold scores over
train+val when selection "cv" fitted the probe on both (`medprobe.evaluation.study` records which, as `chosen_on`).

An AUC is not a decision. For a binary task (the positive class) and for every class of a
multi-class task or label of a multi-label task (one-vs-rest, on that column's score), a rule
picks a threshold on the *val* scores:

- `youden`: the threshold maximising Youden's J = sensitivity + specificity - 1 on val;
- `sensitivity>=X`: the highest threshold whose val sensitivity is at least X (so the best
  specificity that keeps that sensitivity);
- `specificity>=X`: the lowest threshold whose val specificity is at least X.

A score counts as positive when it is >= the threshold. The chosen point is a point of scikit-learn's
`roc_curve` on val; the threshold is the midpoint between that point's val score and the next lower
val score (the convention of R's pROC), which gives exactly the same val sensitivity and specificity. The test metrics at that threshold get percentile CIs over the same seeded
bootstrap resamples of the test rows as the AUC (`medprobe.evaluation.metrics`).

A target is always reachable on val in the trivial way (every image positive reaches any
sensitivity, none positive any specificity). When only that trivial threshold reaches it, the
point is still reported but marked `reached: false` with a note, because on test it means
"call everything positive" (or negative). A val split without both classes chooses nothing:
the threshold is None and the note says why.
"""

import math
import re
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from medprobe.core.errors import MedprobeError
from medprobe.evaluation.metrics import (
    BOOTSTRAP_SEED,
    N_BOOTSTRAP,
    bootstrap_weights,
    percentile_ci,
    scorable,
)

RULES = ("youden", "sensitivity", "specificity")
DEFAULT_RULES = ("youden",)
METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")


class OperatingPointError(MedprobeError):
    """An operating-point rule that cannot be understood (unknown name, target outside (0, 1])."""


@dataclass(frozen=True)
class Rule:
    """How a threshold is chosen on val: Youden's J, or the best point meeting a sensitivity/specificity target."""

    kind: str
    target: float | None = None

    @property
    def name(self):
        """'youden', 'sensitivity>=0.9': the key under which results and saved models hold this point."""
        return self.kind if self.target is None else f"{self.kind}>={self.target:g}"

    @classmethod
    def parse(cls, text):
        """'youden', 'sensitivity=0.9', 'sensitivity>=0.9', 'spec>=0.95' (sens/spec abbreviate).

        >>> Rule.parse("sensitivity=0.9").name
        'sensitivity>=0.9'
        """
        spelled = str(text).strip().lower().replace(" ", "")
        if spelled == "youden":
            return cls("youden")
        match = re.fullmatch(r"(sensitivity|sens|specificity|spec)(>=|=)([0-9.]+)", spelled)
        if not match:
            raise OperatingPointError(f"operating point {text!r} is not understood; use youden, sensitivity=X or specificity=X "
                                      "with X a fraction such as 0.9")
        kind = "sensitivity" if match.group(1).startswith("sens") else "specificity"
        try:
            target = float(match.group(3))
        except ValueError:
            target = math.nan
        if not 0 < target <= 1:
            raise OperatingPointError(f"operating point {text!r}: the target must be a fraction in (0, 1], e.g. {kind}=0.9")
        return cls(kind, target)


def column_names(task, label_names, positive=None):
    """The classes that get thresholds: for binary the positive class (`positive`, default the last, MedMNIST's
    positive), every class or label otherwise."""
    names = list(label_names)
    if task != "binary":
        return names
    if positive is None:
        return names[-1:]
    if positive not in names:
        raise OperatingPointError(f"positive class {positive!r} is not one of the classes {names}")
    return [positive]


def one_vs_rest(y, scores, task, label_names, name):
    """(truth, score) of class or label `name` against the rest."""
    j = list(label_names).index(name)
    truth = y[:, j] if task == "multi-label" else (y == j)
    return truth.astype(int), scores[:, j]


def choose_threshold(truth, score, rule):
    """{'threshold', 'val': {sensitivity, specificity}, 'reached', 'note'} for one binary column of val.

    >>> choose_threshold(np.array([0, 0, 1, 1]), np.array([.1, .6, .4, .9]), Rule("youden"))["threshold"]
    0.75
    """
    truth = np.asarray(truth).astype(int)
    if not scorable(truth):
        return {"threshold": None, "val": None, "reached": False,
                "note": "val has no " + ("positive" if truth.sum() == 0 else "negative") + " image of this class, so no threshold was chosen"}
    fpr, tpr, thresholds = roc_curve(truth, score, drop_intermediate=False)
    if rule.kind == "youden":
        i = int(np.argmax(tpr - fpr))  # the first maximum: the highest threshold among equally good ones
    elif rule.kind == "sensitivity":
        i = int(np.flatnonzero(tpr >= rule.target - 1e-12)[0])
    else:
        i = int(np.flatnonzero(fpr <= 1 - rule.target + 1e-12)[-1])
    # roc_curve's first threshold is +inf (nothing positive); its last is the lowest val score (everything positive).
    nothing, everything = i == 0, bool(tpr[i] == 1.0 and fpr[i] == 1.0)
    note = None
    if nothing or everything:
        called = "negative" if nothing else "positive"
        note = (f"the held-out scores reach {rule.name} only by calling every image {called}" if rule.kind != "youden"
                else f"on the held-out scores no threshold beats calling every image {called}") + "; the threshold is that trivial one"
    # Every threshold between this val score and the next lower one gives the same val point; the midpoint (pROC's
    # convention) does not sit on a val image, so test images just below the lowest chosen positive are not all lost.
    # Nothing positive: just above the highest val score (JSON has no infinity); everything positive: the lowest val score.
    if nothing:
        threshold = float(np.nextafter(thresholds[1], np.inf))
    elif i + 1 < len(thresholds):
        threshold = float((thresholds[i] + thresholds[i + 1]) / 2)
    else:
        threshold = float(thresholds[i])
    return {"threshold": threshold, "val": {"sensitivity": float(tpr[i]), "specificity": float(1 - fpr[i])},
            "reached": not (nothing or everything), "note": note}


def choose_thresholds(y_val, scores_val, task, label_names, rules, positive=None):
    """{rule name: {column name: choice}} on val, for every rule and every scored column."""
    y_val, scores_val = np.asarray(y_val), np.asarray(scores_val, dtype=np.float64)
    columns = {name: one_vs_rest(y_val, scores_val, task, label_names, name) for name in column_names(task, label_names, positive)}
    return {rule.name: {name: choose_threshold(t, s, rule) for name, (t, s) in columns.items()} for rule in rules}


def confusion_counts(truth, positive, weights):
    """(TP, FP, TN, FN), each shaped like `weights`' leading axis, under row weights (B, N) or (N,)."""
    truth, positive = truth.astype(bool), positive.astype(bool)
    weights = np.asarray(weights)
    return tuple(weights @ (a & b).astype(weights.dtype) for a, b in
                 ((positive, truth), (positive, ~truth), (~positive, ~truth), (~positive, truth)))


def rates(tp, fp, tn, fn):
    """Sensitivity, specificity, PPV, NPV, F1 from counts (arrays or scalars); nan where a denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def point_metrics(truth, score, threshold, weights):
    """Counts and the five rates at `threshold` on these rows, each with its bootstrap CI under `weights` (B, N)."""
    truth = np.asarray(truth).astype(int)
    positive = np.asarray(score) >= threshold
    ones = np.ones(len(truth), np.float32)
    tp, fp, tn, fn = (int(v) for v in confusion_counts(truth, positive, ones))
    point = rates(tp, fp, tn, fn)
    resampled = rates(*confusion_counts(truth, positive, weights))
    record = {"counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn}}
    for metric in METRICS:
        value = float(point[metric])
        record[metric] = value if np.isfinite(value) else None  # e.g. PPV with nothing called positive: undefined, never nan
        record[f"{metric}_ci"] = percentile_ci(resampled[metric])
    return record


def score_thresholds(y, scores, task, label_names, chosen, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED, weights=None):
    """Test metrics at thresholds chosen elsewhere: {rule: {column: {threshold, val, reached, note, test: {...}}}}.

    `chosen` is what `choose_thresholds` returned (or a saved model's thresholds, which carry the same keys).
    """
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    weights = bootstrap_weights(len(y), n_boot, seed) if weights is None else weights
    out = {}
    for rule_name, per_column in chosen.items():
        out[rule_name] = {}
        for name, choice in per_column.items():
            entry = dict(choice)
            threshold = choice.get("threshold")
            if threshold is not None:
                truth, score = one_vs_rest(y, scores, task, label_names, name)
                entry["test"] = point_metrics(truth, score, threshold, weights)
            else:
                entry["test"] = None
            out[rule_name][name] = entry
    return out


def thresholds_only(points):
    """{rule: {column: threshold}}: what a saved model keeps of its operating points."""
    return {rule: {name: entry["threshold"] for name, entry in per_column.items()} for rule, per_column in points.items()}


def decide(scores, task, label_names, thresholds):
    """Each row's decision at one rule's thresholds {column: threshold}: binary, the class name; otherwise the
    ';'-joined names of every class or label whose score is >= its threshold (one-vs-rest: none or several can apply).

    >>> decide(np.array([[.3, .7], [.8, .2]]), "binary", ["nv", "mel"], {"mel": 0.5})
    ['mel', 'nv']
    """
    scores, names = np.asarray(scores, dtype=np.float64), list(label_names)
    on = {name: scores[:, names.index(name)] >= threshold for name, threshold in thresholds.items()}
    if task == "binary":
        (positive, hit), = on.items()
        negative = next(n for n in names if n != positive)
        return [positive if h else negative for h in hit]
    return [";".join(name for name in names if name in on and on[name][i]) for i in range(len(scores))]
