"""From scores to a validation study: what is decided on held-out scores (calibrator, thresholds), what is reported on test.

The decisions are fitted on scores of images the probe was not fitted on (`FITTED_ON`): the val split's,
when the probe was fitted on train alone (`--selection val`); the out-of-fold scores over train+val, when
`--selection cv` fitted it on train+val (the default); or the out-of-fold scores over train, when there is
no val split. `fit_decisions` fits the calibrator on those scores and then chooses every operating point on
the *calibrated* scores (the scores `predict` will output); `score_decisions` applies the decisions,
unchanged, to test rows: the operating-point metrics, the calibration before/after, and the subgroup table.
Both record where the decisions were fitted. An external evaluation (`medprobe evaluate`) uses the
decisions saved with the model, and where they were fitted.
"""

from dataclasses import dataclass, field

import numpy as np

from medprobe.evaluation.calibration import (
    CalibrationError,
    Calibrator,
    calibration_report,
    resolve_method,
)
from medprobe.evaluation.metrics import BOOTSTRAP_SEED, N_BOOTSTRAP, bootstrap_weights
from medprobe.evaluation.operating_points import (
    DEFAULT_RULES,
    OperatingPointError,
    Rule,
    choose_thresholds,
    column_names,
    score_thresholds,
)
from medprobe.evaluation.subgroups import SubgroupOptions, subgroup_report

# Where a run's calibrator and thresholds were fitted: always scores of images the probe was not fitted on.
ON_VAL = "val"
ON_TRAIN_OUT_OF_FOLD = "out-of-fold scores over train"
ON_TRAIN_VAL_OUT_OF_FOLD = "out-of-fold scores over train+val"
FITTED_ON = (ON_VAL, ON_TRAIN_OUT_OF_FOLD, ON_TRAIN_VAL_OUT_OF_FOLD)
# Models saved before the provenance was recorded say so rather than guess.
NOT_RECORDED = "not recorded (saved by an older medprobe)"


def decisions_fitted_on(probe_fit_on, out_of_fold):
    """Which of FITTED_ON a run's decisions come from: val, unless the probe has out-of-fold scores (selection cv;
    `out_of_fold` is truthy), which come from the rows it was fitted on (`probe_fit_on`: "train" or "train+val")."""
    if out_of_fold is None or out_of_fold is False:
        return ON_VAL
    return ON_TRAIN_VAL_OUT_OF_FOLD if probe_fit_on == "train+val" else ON_TRAIN_OUT_OF_FOLD


@dataclass(frozen=True)
class StudyOptions:
    """Operating-point rules, the calibrator to fit on held-out scores, and the subgroup columns; built once and passed whole.

    >>> StudyOptions(("youden", "sensitivity=0.9"), calibrate="auto", subgroups=SubgroupOptions(("sex", "age")))
    """

    operating_points: tuple = DEFAULT_RULES
    calibrate: str = "none"
    subgroups: SubgroupOptions = field(default_factory=SubgroupOptions)
    positive: str | None = None  # binary: the class whose sensitivity is meant (default the last class, MedMNIST's positive)

    def __post_init__(self):
        rules = tuple(r if isinstance(r, Rule) else Rule.parse(r) for r in self.operating_points)
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise OperatingPointError(f"operating points {names} name one rule twice")
        object.__setattr__(self, "operating_points", rules)
        resolve_method(self.calibrate, "binary")  # the name only; whether it fits the task is checked once the task is known


@dataclass
class Decisions:
    """What was decided on held-out scores: the calibrator (or None), the thresholds {rule: {column: choice}}, and where
    both were fitted (one of FITTED_ON)."""

    calibrator: Calibrator | None = None
    thresholds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    fitted_on: str = ON_VAL

    @property
    def scores_label(self):
        return f"{self.calibrator.method}-calibrated probabilities" if self.calibrator else "the probe's probabilities"

    def apply(self, scores):
        """The scores decisions are made on: calibrated when there is a calibrator."""
        return self.calibrator.apply(scores) if self.calibrator else np.asarray(scores, dtype=np.float64)

    def to_saved(self):
        """(JSON record, arrays) for a saved model: thresholds with how they were chosen, the calibrator's numbers."""
        record = {"thresholds": self.thresholds, "calibrator": None, "fitted_on": self.fitted_on}
        arrays = {}
        if self.calibrator:
            record["calibrator"] = {"method": self.calibrator.method, "scalars": self.calibrator.scalars(),
                                    "arrays": sorted(self.calibrator.arrays())}
            arrays = {f"calibrator.{k}": v for k, v in self.calibrator.arrays().items()}
        return record, arrays

    @classmethod
    def from_saved(cls, record, arrays, task, label_names):
        """Rebuild and check saved decisions: known columns, finite thresholds, a calibrator that fits the task."""
        if record is None:
            return cls()
        if not isinstance(record, dict) or not isinstance(record.get("thresholds"), dict):
            raise CalibrationError("the saved decisions must hold a thresholds table")
        known = set(label_names)
        for rule, per_column in record["thresholds"].items():
            Rule.parse(rule)
            if not isinstance(per_column, dict) or not set(per_column) <= known:
                raise CalibrationError(f"saved operating point {rule!r} names columns {sorted(per_column) if isinstance(per_column, dict) else per_column!r}"
                                       f", not among {sorted(known)}")
            for name, choice in per_column.items():
                threshold = choice.get("threshold") if isinstance(choice, dict) else "?"
                if threshold is not None and (not isinstance(threshold, (int, float)) or not np.isfinite(threshold)):
                    raise CalibrationError(f"saved operating point {rule!r} for {name!r} has threshold {threshold!r}; it must be a finite number")
        calibrator = None
        saved = record.get("calibrator")
        if saved is not None:
            if not isinstance(saved, dict):
                raise CalibrationError(f"the saved calibrator must be a table, got {saved!r}")
            names = saved.get("arrays", [])
            missing = [n for n in names if f"calibrator.{n}" not in arrays]
            if missing:
                raise CalibrationError(f"the saved calibrator's arrays {missing} are missing from the arrays file")
            calibrator = Calibrator.restore(saved.get("method"), saved.get("scalars", {}), {n: arrays[f"calibrator.{n}"] for n in names}, task)
        return cls(calibrator, record["thresholds"], fitted_on=str(record.get("fitted_on", NOT_RECORDED)))


def fit_decisions(y_val, scores_val, task, label_names, options, fitted_on=ON_VAL):
    """Fit the calibrator on held-out scores (`fitted_on`: val's, or out-of-fold ones; see FITTED_ON), then choose each
    operating point on the calibrated scores.

    >>> decisions = fit_decisions(y[val], probe.predict_scores(X[val]), "binary", ["normal", "pneumonia"], StudyOptions())
    >>> decisions.fitted_on
    'val'
    """
    if fitted_on not in FITTED_ON:
        raise ValueError(f"fitted_on must be one of {FITTED_ON}, got {fitted_on!r}")
    y_val, scores_val = np.asarray(y_val), np.asarray(scores_val, dtype=np.float64)
    column_names(task, label_names, options.positive)  # an unknown positive class is refused by name
    method = resolve_method(options.calibrate, task)
    notes, calibrator = [], None
    if method != "none":
        single = task != "multi-label" and len(np.unique(y_val)) < 2
        if len(y_val) == 0 or single:
            notes.append(f"not calibrated: {method} is fitted on {fitted_on}, which has {'no images' if len(y_val) == 0 else 'a single class'}")
        else:
            calibrator = Calibrator.fit(method, y_val, scores_val, task)
    decisions = Decisions(calibrator, notes=notes, fitted_on=fitted_on)
    if len(y_val) == 0:
        decisions.thresholds = {rule.name: {name: {"threshold": None, "val": None, "reached": False, "note": f"no {fitted_on} rows: no threshold chosen"}
                                            for name in column_names(task, label_names, options.positive)} for rule in options.operating_points}
    else:
        decisions.thresholds = choose_thresholds(y_val, decisions.apply(scores_val), task, label_names, options.operating_points,
                                                 options.positive)
    return decisions


def score_decisions(y, scores, task, label_names, decisions, columns=None, options=None, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED,
                    where="the dataset"):
    """{'operating_points', 'calibration', 'subgroups'}: the keys `metrics.test` gains, computed on these (test) rows."""
    options = options or StudyOptions()
    y, scores = np.asarray(y), np.asarray(scores, dtype=np.float64)
    weights = bootstrap_weights(len(y), n_boot, seed)
    final = decisions.apply(scores)
    calibration = calibration_report(y, scores, task, decisions.calibrator, weights=weights)
    calibration["notes"] = decisions.notes + calibration["notes"]
    if decisions.calibrator:
        calibration["fitted_on"] = decisions.fitted_on
    out = {
        "operating_points": {"on": decisions.scores_label, "chosen_on": decisions.fitted_on, "positive_when": "score >= threshold",
                             "points": score_thresholds(y, final, task, label_names, decisions.thresholds, weights=weights)},
        "calibration": calibration,
    }
    if options.subgroups.columns:
        out["subgroups"] = subgroup_report(y, final, task, label_names, columns or {}, options.subgroups, decisions.thresholds,
                                           n_boot, seed, where)
    return out
