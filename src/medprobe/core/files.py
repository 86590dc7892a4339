"""One home for writing files safely and for hashing them."""

import errno
import glob
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from medprobe.core.errors import OutputError

log = logging.getLogger(__name__)


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
def atomic_folder(path, names, what="folder"):
    """Yield a temporary sibling folder to fill; it replaces `path` whole only if the block succeeds.

    `names` are the only files the folder may hold: a folder holding anything else is never replaced
    (OutputError), and the previous folder is removed file by file, never with rmtree. The previous
    folder stays in place until the new one is complete, so a kill or a full disk never destroys a
    working one. (Between the two renames, a crash leaves the old folder at `.<name>.old-<pid>`
    beside it; such leftovers, and half-built `.<name>.<pid>.<hex>.part` folders, are removed by the
    next successful swap once their process is gone.)

    >>> with atomic_folder("models/derma", {"model.json"}) as building:
    ...     (building / "model.json").write_text("{}")
    """
    path = real_path(path, what)
    check_replaceable_contents(path, names, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, unlike tempfile.mkdtemp (always 0700), follows the user's umask, so the group can read the saved folder.
    building = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    building.mkdir()
    try:
        yield building
        check_replaceable_contents(path, names, what)  # again: the folder may have changed while the block ran
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(building, path)
        if old.exists() and not _remove_if_only(old, names):
            log.warning("%s: the previous folder holds files medprobe did not write; it was kept at %s", path, old)
        _sweep_leftovers(path, names)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # our own half-built folder, when the block failed


def real_path(path, what="folder"):
    """`path` with every symlink resolved; OutputError for a path through a symlink loop (no folder can be made there).

    >>> real_path("runs/../models/derma")
    PosixPath('/home/me/project/models/derma')
    """
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{what} {path}: the path runs through a symlink loop; fix the link or choose another folder") from e
    return Path(os.path.realpath(path))


def check_replaceable_folder(path, names, what="--save", keep=()):
    """Raise OutputError now, before any work, unless a folder of `names` may be written at `path`.

    Refused: a symlink loop; a file; the current folder or a folder holding it; a folder equal to or holding one
    of `keep`'s paths, or inside one flagged `inside` (each `(label, path, inside)`, e.g. the dataset and the
    results folder); and a folder holding anything but `names` (an empty or missing folder is fine).

    >>> check_replaceable_folder("models/derma", {"model.json"}, keep=[("the dataset folder", "data/derma", True)])
    """
    real = real_path(path, what)
    check_writable_folder(path, what)
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        where = "is the current folder" if real == cwd else f"holds the current folder {cwd}"
        raise OutputError(f"{what} {path}: {where}; give the model a new folder of its own, e.g. {what} model")
    for label, other, inside in keep:
        other = Path(os.path.realpath(other))
        if real == other:
            raise OutputError(f"{what} {path}: is {label} {other}; give the model a new folder of its own")
        if real in other.parents:
            raise OutputError(f"{what} {path}: holds {label} {other}, which replacing it would delete; give the model a new folder of its own")
        if inside and other in real.parents:
            raise OutputError(f"{what} {path}: is inside {label} {other}; give the model a new folder outside it")
    check_replaceable_contents(real, names, what, shown=path)


def check_replaceable_contents(path, names, what="folder", shown=None):
    """Raise OutputError if `path` holds anything but files named in `names` (or their atomic-write partials)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{what} {shown or path}: is a file, not a folder; give a folder name (it is created if missing)")
    try:
        entries = list(os.scandir(path)) if os.path.isdir(path) else []
    except OSError as e:
        raise OutputError(f"{what} {shown or path}: cannot be listed ({e.strerror}); choose another folder") from e
    foreign = sorted(e.name for e in entries if not _is_one_of(e, names))
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        count = f"{len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'}"
        raise OutputError(f"{what} {shown or path}: holds {count} that medprobe did not write ({listed}); it only replaces a folder "
                          "holding nothing but a saved model, so move those out or choose a new folder")


def _is_one_of(entry, names):
    """A plain file (not a link, not a folder) named in `names`, or a temporary file atomic_write_bytes left for one."""
    if not entry.is_file(follow_symlinks=False):
        return False
    partial = re.fullmatch(r"\.(.+)\.\d+\.part", entry.name)
    return entry.name in names or (partial is not None and partial.group(1) in names)


def _remove_if_only(folder, names):
    """Delete `folder` if it holds nothing but `names` (file by file, then the empty folder); False if it was kept."""
    try:
        entries = list(os.scandir(folder))
        if not all(_is_one_of(e, names) for e in entries):
            return False
        for entry in entries:
            os.unlink(entry.path)
        os.rmdir(folder)  # fails, keeping it, if a file appeared meanwhile
    except OSError:
        return False
    return True


def _sweep_leftovers(path, names, older_than_s=3600):
    """Remove what killed saves of `path` left beside it, once the process that made each one is gone.

    A leftover names its pid (`.<name>.<pid>.<hex>.part`, `.<name>.old-<pid>`); one whose process still runs is
    someone's save in progress. Parts from medprobe before the pid was in the name (`.<name>.<8 chars>.part`) are
    judged by age, as the embedding store judges its parts: a live save renames its own within seconds.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.[0-9a-f]+\.part|old-(\d+)|[a-z0-9_]{{8}}\.part)")
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        match = pattern.fullmatch(leftover.name)
        if match is None or not leftover.is_dir() or leftover.is_symlink():
            continue
        pid = match.group(1) or match.group(2)
        try:
            stale = not _running(int(pid)) if pid else time.time() - leftover.stat().st_mtime > older_than_s
        except OSError:
            continue
        if stale and _remove_if_only(leftover, names):
            log.info("removed %s, left by an interrupted save", leftover)


def _running(pid):
    """Whether a process with this id runs on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable_folder(path, what="--out"):
    """Raise OutputError now, before any work, if `path` cannot become a folder we can write into."""
    real_path(path, what)  # a symlink loop: refused now, not as a traceback from mkdir after the work
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: is a file, not a folder; give a folder name (it is created if missing)")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: {existing} is not writable; choose a folder you can write to")


def check_writable_file(path, what="--out"):
    """Raise OutputError now, before any work, if a file cannot be written at `path`."""
    real_path(path, what)
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
