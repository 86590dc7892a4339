"""How a probe's hyper-parameter was chosen: one type for the val rule, the cv rule and zero-shot, behind one JSON layout.

Fields a protocol does not use stay None and are left out of the JSON, so results.json and model.json keep the
layout they always had, and files written before this type read back into it.
"""

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Selection:
    """What `fit_probe` (or `fit_zeroshot`) recorded about choosing and fitting the probe.

    >>> fitted.selection.protocol, fitted.selection.fit_on, fitted.selection.score()
    ('cv', 'train+val', 0.781)
    """

    criterion: str  # in words: what the grid was scored by
    protocol: str | None = None  # "val" or "cv"; None for zero-shot, which chooses nothing
    fit_on: str = "train"  # the rows the probe was fitted on: "train", or "train+val" (selection cv with a val split)
    scores: dict = field(default_factory=dict)  # grid value (as text) -> val AUC or mean CV AUC; None where it could not score
    calibration_folds: int | None = None  # svm and ridge: Platt folds, when fewer than usual
    # selection cv only
    folds: int | None = None
    repeats: int | None = None
    folds_keep_groups_whole: bool | None = None
    best: float | None = None  # the best-scoring value (the chosen one is the simplest within one SE of it)
    best_auc: float | None = None
    best_se: float | None = None
    grid_widened: bool | None = None
    solver: str | None = None
    selected_on_rows: int | None = None
    fitted_on_rows: int | None = None
    # `--encoder 'a|b'`: the encoder is one more hyper-parameter, chosen by the same score
    encoder_choice: dict | None = None
    # `--column-groups choose`: which of the recipe's column groups, chosen by the same score (probes.columns)
    column_choice: dict | None = None

    @property
    def fitted_on_val(self):
        """True when val is part of what the probe was fitted on, so val no longer scores it as held out."""
        return self.fit_on == "train+val"

    def score(self):
        """The AUC the protocol chose by (the best CV mean, or the best val AUC); -inf when nothing could be scored."""
        if self.protocol == "cv":
            return self.best_auc if self.best_auc is not None else float("-inf")
        finite = [s for s in self.scores.values() if s is not None]
        return max(finite) if finite else float("-inf")

    def to_json(self):
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data):
        """A Selection from its JSON (results.json, model.json); keys of newer versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
