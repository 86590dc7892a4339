"""One home for writing files safely and for hashing them."""

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path):
    """Yield a temporary sibling of `path` to write; it replaces `path` only if the block succeeds.

    A crash or kill never leaves a half-written file under the real name, and racing writers each
    rename a whole file. Use it where another library writes the file (a download, an ONNX export).

    >>> with atomic_target("model.onnx") as partial:
    ...     torch.onnx.export(module, example, partial)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a synced temporary file and a rename."""
    with atomic_target(path) as partial:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def file_digest(path, algorithm="sha256"):
    """Hex digest of a file's bytes, read in 1 MiB blocks (MedMNIST publishes MD5s, everything of ours is SHA-256).

    >>> file_digest("retinamnist.npz", "md5")
    'bd4c0672f1bba3e3a89f0e4e876791e4'
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
