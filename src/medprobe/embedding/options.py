"""How to embed: one frozen object built once at the edge (the CLI, a bench cell) and passed whole."""

import os
from dataclasses import dataclass, field

from medprobe.core import defaults
from medprobe.core.errors import MedprobeError
from medprobe.encoders.runtimes import RUNTIMES, check_installed

DEFAULT_ENCODER = defaults.ENCODER  # why this one: core/defaults.py
# Rows per committed cache shard: the most work a kill can lose.
DEFAULT_SHARD_SIZE = 512


def _shard_size_from_environment():
    # $MEDPROBE_SHARD_SIZE lowers it for the tests that kill a run mid-way; read when options are built, never at import.
    text = os.environ.get("MEDPROBE_SHARD_SIZE", str(DEFAULT_SHARD_SIZE))
    try:
        return int(text)
    except ValueError:
        raise MedprobeError(f"MEDPROBE_SHARD_SIZE must be a whole number of images per store file, e.g. {DEFAULT_SHARD_SIZE}; "
                            f"got {text!r}") from None


@dataclass(frozen=True)
class EmbedOptions:
    """Encoder spec ('a' or a fusion 'a+b'), its weights, where and how it runs, and the cache.

    >>> options = EmbedOptions("efficientnet_lite0", runtime="onnx", batch_size=32)
    >>> encoded = embed_spec(dataset, options)
    """

    encoder: str = DEFAULT_ENCODER
    weights: str | None = None
    device: str = "cpu"
    runtime: str = "auto"
    batch_size: int = 64
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True
    shard_size: int = field(default_factory=_shard_size_from_environment)
    ray: str | None = None  # embed on Ray: "local" (a Ray started for the job), "auto" or "ray://head:10001"
    ray_actors: int | None = None  # encoder actors on Ray (None: from the cluster's CPUs)

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise MedprobeError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        check_installed(self.runtime)  # before the images are read
        for name in ("batch_size", "shard_size") + (("ray_actors",) if self.ray_actors is not None else ()):
            if int(getattr(self, name)) < 1:
                raise MedprobeError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
