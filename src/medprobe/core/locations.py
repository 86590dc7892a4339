"""Default folders, each overridable by an environment variable. Nothing is created here."""

import os
from pathlib import Path


def user_cache():
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("medprobe"))


def cache_root(cache_dir=None):
    """The embedding cache: --cache-dir, then $MEDPROBE_CACHE, then `<user cache>/medprobe/embeddings`."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("MEDPROBE_CACHE"):
        return Path(os.environ["MEDPROBE_CACHE"])
    return user_cache() / "embeddings"
