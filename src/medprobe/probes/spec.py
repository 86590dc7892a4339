"""Which probe, and with what: one frozen object, checked before any embedding is computed."""

from dataclasses import dataclass

from medprobe.core import defaults
from medprobe.core.errors import ProbeError
from medprobe.probes.columns import COLUMN_CHOICES, LINEAR_PROBES
from medprobe.probes.fit import SELECTIONS, make_probe
from medprobe.probes.zeroshot import read_prompts

ZEROSHOT = "zeroshot"


@dataclass(frozen=True)
class ProbeSpec:
    """A probe name (logreg, svm, knn, pca_logreg, lda, ridge or zeroshot), its class weighting, prompt file, seed
    and hyper-parameter selection protocol ("val": MedMNIST's rule; "cv": repeated CV over train+val, see probes.fit).

    >>> ProbeSpec("knn", class_weight="balanced").check()
    ProbeError: the knn probe has no class_weight; ...
    """

    name: str = "logreg"
    class_weight: str | None = None
    prompts: str | None = None
    seed: int = defaults.SEED
    selection: str = defaults.SELECTION  # "val" is MedMNIST's rule (see probes.fit)
    column_groups: str = defaults.COLUMN_GROUPS  # "choose": the selection also chooses among the recipe's column groups

    def check(self):
        """Raise now for anything that would only fail after the embedding pass."""
        if self.selection not in SELECTIONS:
            raise ProbeError(f"unknown selection {self.selection!r}; choose one of {', '.join(SELECTIONS)}")
        if self.column_groups not in COLUMN_CHOICES:
            raise ProbeError(f"unknown --column-groups {self.column_groups!r}; choose one of {', '.join(COLUMN_CHOICES)}")
        if self.column_groups == "choose" and self.name not in LINEAR_PROBES:
            raise ProbeError(f"--column-groups choose needs a linear probe ({', '.join(LINEAR_PROBES)}), not {self.name}: "
                             "its probe on a subset is saved at full width with zero weight on the other columns")
        if self.name == ZEROSHOT:
            read_prompts(self.prompts)
        else:
            make_probe(self.name, class_weight=self.class_weight, seed=self.seed)
        return self
