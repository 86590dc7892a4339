"""Default folders, each overridable by an environment variable. Nothing is created here."""

import os
from pathlib import Path


def user_cache():
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("medprobe"))


def cache_root(cache_dir=None):
    """The embedding cache: --cache-dir, then $MEDPROBE_CACHE, then `<user cache>/medprobe/embeddings`.
    A URL (s3://bucket/store) stays a string: the store reads and writes it through fsspec."""
    chosen = cache_dir or os.environ.get("MEDPROBE_CACHE")
    if chosen:
        return str(chosen) if "://" in str(chosen) else Path(chosen)
    return user_cache() / "embeddings"


def artifacts_root(cache_dir=None):
    """Where exported graphs are kept: the embedding cache when it is a local folder, else the user cache (ONNX Runtime
    and OpenVINO open files on a local disk, not URLs)."""
    root = cache_root(cache_dir)
    return user_cache() / "embeddings" if isinstance(root, str) else root
