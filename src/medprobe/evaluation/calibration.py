"""Calibration: ECE and Brier score with bootstrap CIs, and post-hoc calibrators fitted on held-out scores (val's or
out-of-fold ones: `medprobe.evaluation.study` records which as `fitted_on`).

ECE: 10 equal-width bins of the confidence, closed on the right as scikit-learn's
`calibration_curve(strategy="uniform")` draws them ((0, 0.1], ..., (0.9, 1], 0 in the first),
weighted by each bin's share of images; the confidence is the positive-class probability for
binary (against the positive rate), the top-class probability for multi-class and ordinal
(against accuracy), every label's probability for multi-label. It is the ECE of the report's
reliability diagram: one function draws both.

Brier score: scikit-learn's `brier_score_loss`, i.e. for binary the mean of (p - y)^2 over the
positive-class probability (0 best, 1 worst), for multi-class the mean over images of the squared
error summed over the one-hot classes (0 best, 2 worst); for multi-label the mean of the labels'
binary Brier scores.

Calibrators are fitted on the val split's scores and applied to test:
- `temperature` (multi-class, ordinal; also binary): softmax(log p / T), T minimising the val
  negative log-likelihood (scipy). It keeps every image's argmax (so ACC), and for binary every
  ranking (so AUC); a multi-class one-vs-rest AUC can move slightly, because dividing log p by T
  re-normalises each row.
- `platt` (binary): sigmoid(a * logit p + b), a logistic regression on the val logit with Platt's
  smoothed targets (as scikit-learn's sigmoid calibration). With a > 0 it keeps the ranking, so the AUC.
- `isotonic` (binary): a non-decreasing step function fitted by scikit-learn's IsotonicRegression
  (linear between its breakpoints, clipped outside). It can merge different scores into one
  value (ties), which can lower the AUC a little; the result says so.
`auto` is temperature for multi-class and ordinal, platt for binary, none for multi-label.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax
from sklearn.metrics import brier_score_loss

from medprobe.core.errors import MedprobeError
from medprobe.evaluation.metrics import (
    BOOTSTRAP_SEED,
    N_BOOTSTRAP,
    bootstrap_weights,
    medmnist_acc,
    medmnist_auc,
    percentile_ci,
    predictions,
)

N_BINS = 10
METHODS = ("none", "auto", "temperature", "platt", "isotonic")
EPS = 1e-12  # probabilities are clipped to [EPS, 1 - EPS] before a log or logit: a probe can output exact 0 or 1


class CalibrationError(MedprobeError):
    """A calibrator that does not apply to this task, or a saved one that is malformed."""


def confidence_and_hit(labels, scores, task):
    """(confidence, hit) pairs the ECE bins: see the module docstring."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if task == "binary":
        confidence, hit = scores[:, -1], labels.astype(int)
    elif task == "multi-label":
        confidence, hit = scores.ravel(), labels.ravel().astype(int)
    else:
        confidence, hit = scores.max(axis=1), (predictions(scores, task) == labels).astype(int)
    return np.clip(confidence, 0.0, 1.0), hit


def _bin_of(confidence, n_bins):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], confidence)  # calibration_curve's own rule: an edge value goes to the bin below


def reliability(labels, scores, task, n_bins=N_BINS):
    """Per-bin (mean confidence, observed frequency, count) and the ECE; empty bins are nan.

    >>> reliability(np.array([1, 0]), np.array([[.2, .8], [.9, .1]]), "binary")[3]
    0.15000000000000002
    """
    confidence, hit = confidence_and_hit(labels, scores, task)
    bins = _bin_of(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, confidence, minlength=n_bins) / count
        observed = np.bincount(bins, hit, minlength=n_bins) / count
    ece = float(np.nansum(count / count.sum() * np.abs(observed - mean_conf)))
    return mean_conf, observed, count, ece


def ece_resampled(labels, scores, task, weights, n_bins=N_BINS):
    """The ECE under each row of resample weights (B, N) over images (multi-label: each image's labels move together)."""
    confidence, hit = confidence_and_hit(labels, scores, task)
    per_image = confidence.size // weights.shape[1]
    bins = _bin_of(confidence, n_bins).reshape(weights.shape[1], per_image)
    confidence, hit = confidence.reshape(bins.shape), hit.reshape(bins.shape)
    gap = np.zeros((weights.shape[0], n_bins))
    for b in range(n_bins):
        inside = bins == b
        # Σ_rows weight * Σ_in-bin (hit - confidence): the bin's |observed - mean confidence| times its weighted count.
        gap[:, b] = np.abs(weights @ np.where(inside, hit - confidence, 0.0).sum(axis=1).astype(weights.dtype))
    return gap.sum(axis=1) / (weights.sum(axis=1) * per_image)


def brier_per_image(labels, scores, task):
    """Each image's Brier loss, so their mean is the Brier score (and a resample's weighted mean its bootstrap value)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if task == "binary":
        return (scores[:, -1] - labels) ** 2
    if task == "multi-label":
        return ((scores - labels) ** 2).mean(axis=1)
    onehot = np.eye(scores.shape[1])[labels]
    return ((scores - onehot) ** 2).sum(axis=1)


def brier_score(labels, scores, task):
    """scikit-learn's brier_score_loss (binary; multi-class over the one-hot); the mean over labels for multi-label."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if task == "binary":
        return float(brier_score_loss(labels, scores[:, -1]))
    if task == "multi-label":
        return float(np.mean([brier_score_loss(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]))
    # brier_score_loss's multi-class form is this same sum over the one-hot (tested), but it warns when float32
    # probabilities miss summing to 1 by 1e-7; the formula itself does not care.
    return float(brier_per_image(labels, scores, task).mean())


def calibration_metrics(labels, scores, task, weights):
    """ECE and Brier with CIs under `weights`, and the reliability bins the report draws."""
    mean_conf, observed, count, ece = reliability(labels, scores, task)
    brier_resampled = weights @ brier_per_image(labels, scores, task).astype(weights.dtype) / weights.sum(axis=1)
    def nan_to_none(values):
        return [None if not np.isfinite(v) else float(v) for v in values]

    return {
        "ece": ece,
        "ece_ci": percentile_ci(ece_resampled(labels, scores, task, weights)),
        "brier": brier_score(labels, scores, task),
        "brier_ci": percentile_ci(brier_resampled),
        "reliability": {"bins": N_BINS, "mean_confidence": nan_to_none(mean_conf), "observed": nan_to_none(observed),
                        "count": [int(c) for c in count]},
    }


# --- calibrators ---------------------------------------------------------------------------------


def resolve_method(method, task):
    """The calibrator `method` means for `task` ('auto' resolved); refuses one that does not apply."""
    if method not in METHODS:
        raise CalibrationError(f"calibration {method!r} is not one of {', '.join(METHODS)}")
    if method == "auto":
        return {"binary": "platt", "multi-label": "none"}.get(task, "temperature")
    if method in ("platt", "isotonic") and task != "binary":
        raise CalibrationError(f"calibration {method!r} is for binary tasks; this task is {task}: use temperature (or auto)")
    if method == "temperature" and task == "multi-label":
        raise CalibrationError("calibration of multi-label probes is not supported; use none")
    return method


@dataclass
class Calibrator:
    """A post-hoc map from a probe's probabilities to calibrated ones; `params` are plain floats or 1-d arrays.

    temperature: {"temperature": T}; platt: {"a": a, "b": b}; isotonic: {"x": breakpoints, "y": values}.

    >>> Calibrator.fit("platt", y_val, scores_val, "binary").apply(scores_test)
    """

    method: str
    params: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, method, labels, scores, task):
        labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
        if method == "temperature":
            return cls(method, {"temperature": _fit_temperature(labels, scores)})
        positive = np.clip(scores[:, -1], EPS, 1 - EPS)
        if len(np.unique(labels)) < 2:
            raise CalibrationError(f"a {method} calibrator is fitted on held-out scores, and these have a single class; use --calibrate none")
        if method == "platt":
            from sklearn.linear_model import LogisticRegression

            # Platt's (2000) targets, (N+ + 1)/(N+ + 2) and 1/(N- + 2) instead of 1 and 0, so a val split the probe separates
            # perfectly gives a finite slope. Soft targets by weight: each image once as positive (weight t), once as negative (1 - t).
            n_pos = float(labels.sum())
            target = np.where(labels == 1, (n_pos + 1) / (n_pos + 2), 1 / (len(labels) - n_pos + 2))
            x = np.r_[logit(positive), logit(positive)][:, None]
            model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(
                x, np.r_[np.ones(len(labels)), np.zeros(len(labels))], sample_weight=np.r_[target, 1 - target])
            return cls(method, {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])})
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(positive, labels)
            return cls(method, {"x": np.asarray(model.X_thresholds_, np.float64), "y": np.asarray(model.y_thresholds_, np.float64)})
        raise CalibrationError(f"unknown calibrator {method!r}")

    def apply(self, scores):
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "temperature":
            return softmax(np.log(np.clip(scores, EPS, 1.0)) / self.params["temperature"], axis=1)
        positive = np.clip(scores[:, -1], EPS, 1 - EPS)
        if self.method == "platt":
            calibrated = expit(self.params["a"] * logit(positive) + self.params["b"])
        else:  # isotonic: what IsotonicRegression.predict does (linear interpolation, clipped outside the breakpoints)
            calibrated = np.interp(positive, self.params["x"], self.params["y"])
        return np.stack([1 - calibrated, calibrated], axis=1)

    def describe(self):
        """JSON-ready: the method and its numbers (isotonic breakpoints as lists)."""
        return {"method": self.method, **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.params.items()}}

    def arrays(self):
        """The array-valued parameters (isotonic breakpoints), for a safetensors file."""
        return {k: v for k, v in self.params.items() if isinstance(v, np.ndarray)}

    def scalars(self):
        return {k: v for k, v in self.params.items() if not isinstance(v, np.ndarray)}

    @classmethod
    def restore(cls, method, scalars, arrays, task):
        """Rebuild a saved calibrator, refusing numbers that could not have come from fitting one."""
        if method not in ("temperature", "platt", "isotonic"):
            raise CalibrationError(f"unknown calibrator {method!r}")
        resolve_method(method, task)
        params = {**{k: float(v) for k, v in scalars.items()}, **{k: np.asarray(v, np.float64) for k, v in arrays.items()}}
        expected = {"temperature": {"temperature"}, "platt": {"a", "b"}, "isotonic": {"x", "y"}}[method]
        if set(params) != expected:
            raise CalibrationError(f"a {method} calibrator has parameters {sorted(expected)}, got {sorted(params)}")
        if not all(np.all(np.isfinite(v)) for v in params.values()):
            raise CalibrationError(f"the {method} calibrator has a non-finite parameter")
        if method == "temperature" and params["temperature"] <= 0:
            raise CalibrationError(f"the temperature must be positive, got {params['temperature']}")
        if method == "isotonic":
            x, y = params["x"], params["y"]
            if x.ndim != 1 or x.shape != y.shape or len(x) < 1 or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
                raise CalibrationError("the isotonic calibrator's breakpoints must be two equal-length 1-d arrays, x and y "
                                       "non-decreasing and y within [0, 1]")
        return cls(method, params)


def _fit_temperature(labels, scores):
    """T > 0 minimising the mean negative log-likelihood of softmax(log p / T) on val (bounded search over log T)."""
    log_p = np.log(np.clip(scores, EPS, 1.0))
    rows = np.arange(len(labels))

    def nll(log_t):
        return -log_softmax(log_p / np.exp(log_t), axis=1)[rows, labels].mean()

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(best.x))


def calibration_report(labels, scores, task, calibrator=None, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED, weights=None):
    """{'bins', 'before': {...}, 'method', 'after': {... , auc, acc}, 'notes'} on these rows (test)."""
    weights = bootstrap_weights(len(labels), n_boot, seed) if weights is None else weights
    report = {"binning": f"{N_BINS} equal-width bins", "before": calibration_metrics(labels, scores, task, weights),
              "method": calibrator.method if calibrator else "none", "notes": []}
    if calibrator is None:
        return report
    after = calibrator.apply(scores)
    report["calibrator"] = calibrator.describe()
    report["after"] = {**calibration_metrics(labels, after, task, weights), "auc": _auc_or_none(labels, after, task),
                       "acc": medmnist_acc(labels, after, task)}
    report["before"].update(auc=_auc_or_none(labels, scores, task), acc=medmnist_acc(labels, scores, task))
    if calibrator.method == "isotonic":
        before, after_auc = report["before"]["auc"], report["after"]["auc"]
        moved = before is not None and after_auc is not None and after_auc != before
        report["notes"].append("isotonic calibration maps ranges of scores to one value (ties); "
                               + (f"here that moved the AUC from {before:.4f} to {after_auc:.4f}" if moved else "here the AUC did not change"))
    if calibrator.method == "platt" and calibrator.params["a"] <= 0:
        report["notes"].append("the Platt slope fitted on the held-out scores is not positive, so it reverses (or flattens) the ranking")
    return report


def _auc_or_none(labels, scores, task):
    try:
        return medmnist_auc(labels, scores, task)
    except ValueError:
        return None
