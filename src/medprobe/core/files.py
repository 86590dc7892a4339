"""One home for writing files safely and for hashing them."""

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from medprobe.core.errors import OutputError


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
    """UTF-8; a file name that is not valid UTF-8 (undecodable bytes arrive as lone surrogates) is written as \\udcXX."""
    atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


@contextmanager
def atomic_folder(path):
    """Yield a temporary sibling folder to fill; it replaces `path` whole only if the block succeeds.

    The previous folder stays in place until the new one is complete, so a kill or a full disk
    never destroys a working saved model. (Between the two renames, a crash leaves the old folder
    at `.<name>.old-<pid>` beside it.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield building
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(building, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def check_writable_folder(path, what="--out"):
    """Raise OutputError now, before any work, if `path` cannot become a folder we can write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: is a file, not a folder; give a folder name (it is created if missing)")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: {existing} is not writable; choose a folder you can write to")


def check_writable_file(path, what="--out"):
    """Raise OutputError now, before any work, if a file cannot be written at `path`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} {path}: cannot be written here; choose a path in a folder you can write to")


def is_writable_folder(path):
    """True if files can be created in `path` (created if missing), False otherwise; never raises."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return Path(path).is_dir() and os.access(path, os.W_OK | os.X_OK)


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
