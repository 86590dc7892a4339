"""Default folders, each overridable by an environment variable. Nothing is created here."""

import os
import tempfile
from pathlib import Path

from medprobe.core.remote import is_url


def user_cache():
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("medprobe"))


def cache_root(cache_dir=None):
    """The embedding cache: --cache-dir, then $MEDPROBE_CACHE, then `<user cache>/medprobe/embeddings`.
    A URL (s3://bucket/store) stays a string: the store reads and writes it through fsspec."""
    chosen = cache_dir or os.environ.get("MEDPROBE_CACHE")
    if chosen:
        return str(chosen) if is_url(str(chosen)) else Path(chosen)
    return user_cache() / "embeddings"


def artifacts_root(cache_dir=None):
    """Where exported graphs are kept: the embedding cache when it is a local folder, else the user cache (ONNX Runtime
    and OpenVINO open files on a local disk, not URLs)."""
    return job_artifacts(cache_root(cache_dir), writable=True)


def job_artifacts(root, writable):
    """Where an embedding job on the store at `root` keeps exported graphs: beside the store when it is a writable local
    folder; the user cache for a store at a URL; else a temporary folder."""
    if is_url(str(root)):  # by what it names, not its type: a Ray worker is handed a local root as a string too
        return user_cache() / "embeddings"
    return Path(root) if writable else Path(tempfile.gettempdir()) / "medprobe-artifacts"
