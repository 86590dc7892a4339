"""Which probe, and with what: one frozen object, checked before any embedding is computed."""

from dataclasses import dataclass

from medprobe.probes.fit import make_probe
from medprobe.probes.zeroshot import read_prompts

ZEROSHOT = "zeroshot"


@dataclass(frozen=True)
class ProbeSpec:
    """A probe name (logreg, svm, knn or zeroshot), its class weighting, prompt file and seed.

    >>> ProbeSpec("knn", class_weight="balanced").check()
    ProbeError: the knn probe has no class_weight; ...
    """

    name: str = "logreg"
    class_weight: str | None = None
    prompts: str | None = None
    seed: int = 0

    def check(self):
        """Raise now for anything that would only fail after the embedding pass."""
        if self.name == ZEROSHOT:
            read_prompts(self.prompts)
        else:
            make_probe(self.name, class_weight=self.class_weight, seed=self.seed)
        return self
