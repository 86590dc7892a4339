"""MedMNIST by name: the metadata table (URL, MD5, task, labels, licence), where files are looked for, and the download."""

import json
import os
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from medprobe.core.errors import DatasetError, UnknownNameError
from medprobe.core.files import atomic_target, file_digest
from medprobe.core.locations import user_cache

MEDMNIST_SIZES = (28, 64, 128, 224)


def medmnist_table():
    return json.loads(resources.files("medprobe.data").joinpath("medmnist.json").read_text())["datasets"]


def medmnist_search_dirs(data_dir=None):
    """Where a MedMNIST npz is looked for, in order: --data-dir, $MEDPROBE_DATA, the user cache."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get("MEDPROBE_DATA"):
        dirs.append(Path(os.environ["MEDPROBE_DATA"]))
    dirs.append(user_cache() / "medmnist")
    return dirs


def medmnist_file(name, size=28, data_dir=None, download=True):
    """Path of a verified MedMNIST npz, downloading it into the first search dir if missing."""
    table = medmnist_table()
    if name not in table:
        raise UnknownNameError("dataset", name, table)
    if size not in MEDMNIST_SIZES:
        raise DatasetError(f"MedMNIST size must be one of {MEDMNIST_SIZES}, got {size}")
    entry = table[name]["files"][str(size)]
    search = medmnist_search_dirs(data_dir)
    for folder in search:
        candidate = folder / entry["file"]
        if candidate.is_file():
            if file_digest(candidate, "md5") != entry["md5"]:
                raise DatasetError(_place_by_hand(entry, folder, f"{candidate} has the wrong MD5"))
            return candidate
    target = search[0]
    if not download:
        raise DatasetError(_place_by_hand(entry, target, f"{entry['file']} not found in {', '.join(map(str, search))}"))
    return _download(entry, target)


def _url(entry):
    # A hospital mirror (or a test server) can stand in for Zenodo.
    mirror = os.environ.get("MEDPROBE_MEDMNIST_MIRROR")
    return f"{mirror.rstrip('/')}/{entry['file']}" if mirror else entry["url"]


def _place_by_hand(entry, folder, problem):
    return (
        f"{problem}. Download {_url(entry)} (MD5 {entry['md5']}) and place it as {Path(folder) / entry['file']}, "
        f"or point --data-dir / MEDPROBE_DATA at the folder that holds it"
    )


class _WrongMD5(Exception):
    pass


def _download(entry, folder):
    target = Path(folder) / entry["file"]
    try:
        with atomic_target(target) as partial:  # a half-downloaded or wrong file never carries the real name
            with urllib.request.urlopen(_url(entry), timeout=30) as response, open(partial, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
            if file_digest(partial, "md5") != entry["md5"]:
                raise _WrongMD5
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(_place_by_hand(entry, folder, f"download failed ({e})")) from e
    except _WrongMD5:
        raise DatasetError(_place_by_hand(entry, folder, f"downloaded {entry['file']} has the wrong MD5")) from None
    return target
