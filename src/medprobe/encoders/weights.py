"""Where pretrained weights come from, offline first.

Resolution order for every downloadable encoder:

1. a path the user gives (`--weights`): a weights file or a model folder;
2. the medprobe models folder `$MEDPROBE_MODELS/<encoder>/` (default `<user cache>/medprobe/models/<encoder>/`),
   then the Hugging Face cache (where open_clip and transformers download to) or the torch hub cache,
   without touching the network;
3. a download, unless offline (`MEDPROBE_OFFLINE=1` or `HF_HUB_OFFLINE=1`).

When all three fail, `missing_weights` builds the error that names the files to place and the folder.
"""

import hashlib
import os
from pathlib import Path

from medprobe.core.errors import EncoderError
from medprobe.core.files import file_digest
from medprobe.core.locations import user_cache

OFFLINE_VARIABLES = ("MEDPROBE_OFFLINE", "HF_HUB_OFFLINE")


def models_root():
    """$MEDPROBE_MODELS, else `<user cache>/medprobe/models`: one sub-folder per encoder name."""
    if os.environ.get("MEDPROBE_MODELS"):
        return Path(os.environ["MEDPROBE_MODELS"])
    return user_cache() / "models"


def model_folder(config):
    """The folder a user fills by hand for this encoder (variants such as `@pre` share their base folder)."""
    return models_root() / config.name.split("@")[0]


def is_offline():
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def complete(folder, needed):
    """True if `folder` holds one file of every group in `needed` (a list of tuples of alternatives)."""
    folder = Path(folder)
    return folder.is_dir() and all(any((folder / name).is_file() for name in group) for group in needed)


def hf_cached_folder(repo, needed):
    """The Hugging Face cache snapshot of `repo` if it holds the needed files; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if complete(folder, needed) else None


def hf_download(repo, needed, optional=()):
    """Download just the needed (and optional) files of `repo` into the Hugging Face cache; returns the snapshot folder."""
    from huggingface_hub import snapshot_download

    patterns = sorted({name for group in needed for name in group} | set(optional))
    folder = Path(snapshot_download(repo, allow_patterns=patterns))
    if not complete(folder, needed):
        raise FileNotFoundError(f"{repo} has none of {_describe(needed)}")
    return folder


def user_path(weights):
    """The --weights path, checked to exist."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise EncoderError(f"--weights {weights}: no such file or folder")
    return path


def missing_weights(config, needed, url, problem):
    """The offline error: what is missing, which files to place, where, and the alternatives."""
    folder = model_folder(config)
    problem = " ".join(str(problem).split())  # hub errors span lines; keep the message one line
    problem = problem if len(problem) <= 240 else problem[:237] + "..."
    return EncoderError(
        f"no weights for {config.name} on this machine ({problem}). "
        f"Place {_describe(needed)} from {url} in {folder}/ "
        f"(or point --weights at a folder or file holding them, or set MEDPROBE_MODELS to a folder with a "
        f"{folder.name}/ sub-folder); online, medprobe downloads them into the Hugging Face / torch cache by itself"
    )


def _describe(needed):
    return " and ".join(" or ".join(group) for group in needed)


def weights_fingerprint(path):
    """SHA-256 over a --weights file, or over every file (and its relative name) in a model folder.

    Embeddings from user-supplied weights must never share a cache entry with the default weights' ones.
    """
    path = Path(path).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path) if file != path else file.name}:{file_digest(file)}\n".encode())
    return digest.hexdigest()
