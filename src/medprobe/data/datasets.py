"""Datasets: one contract for MedMNIST names, npz files, image folders and CSV manifests.

Every dataset is a `Dataset`: N records (ids, split names) aligned with an N-row label
array and an image source, plus the task type and label names.
"""

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medprobe.core.errors import DatasetError
from medprobe.data.images import is_image_file
from medprobe.data.medmnist import medmnist_file, medmnist_table
from medprobe.data.scan import ON_ERROR, scan_images
from medprobe.data.sources import ArrayImages, FileImages, ImageSource

SPLITS = ("train", "val", "test")
TASKS = ("binary", "multi-class", "ordinal", "multi-label")
# Seed of the stratified split made when a dataset has no val (or no test) split. Documented in the README.
SPLIT_SEED = 0
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


@dataclass
class Dataset:
    name: str
    task: str
    label_names: list
    ids: np.ndarray
    splits: np.ndarray
    labels: np.ndarray  # (N,) class index, or (N, L) 0/1 for multi-label
    images: ImageSource  # aligned with ids
    info: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ids)

    def indices(self, split):
        return np.flatnonzero(self.splits == split)

    def describe(self):
        """JSON-ready description recorded in results."""
        counts = {s: int((self.splits == s).sum()) for s in SPLITS}
        return {"name": self.name, "task": self.task, "label_names": list(self.label_names), "n": counts, **self.info}

    def subset(self, rows, check=True):
        """The same dataset restricted to `rows` (e.g. without unreadable images), checked again unless check=False."""
        rows = np.asarray(rows, dtype=np.int64)
        kept = replace(self, ids=self.ids[rows], splits=self.splits[rows], labels=self.labels[rows], images=self.images.subset(rows), info=dict(self.info))
        if check:
            _check(kept)
        return kept


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, where to find MedMNIST files, at what size, and what to do with unreadable images.

    Built once from the command line (or a bench cell) and passed whole, so every command loads
    and pre-scans its data the same way.

    >>> data, scanned = DataSpec("retinamnist", data_dir="../shared/data/medmnist").load()
    """

    dataset: str
    data_dir: str | None = None
    size: int = 28
    on_error: str = "fail"

    def __post_init__(self):
        # A path is kept as its string, as on the command line, so specs compare (and round-trip through JSON) equal.
        object.__setattr__(self, "dataset", str(self.dataset))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        if self.on_error not in ON_ERROR:
            raise DatasetError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")

    def load(self, check=True):
        """(dataset without unreadable rows, ScanReport): every image decoded once before any work."""
        return scan_images(load_dataset(self.dataset, data_dir=self.data_dir, size=self.size), self.on_error, check=check)


def load_dataset(spec, data_dir=None, size=28, download=True):
    """Load a dataset from a MedMNIST name, an npz path, an image folder or a CSV manifest.

    >>> ds = load_dataset("retinamnist", data_dir="../shared/data/medmnist")
    >>> ds.task, len(ds)
    ('ordinal', 1600)
    """
    spec = str(spec)
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DatasetError(f"{path}: npz file not found")
        dataset = _from_npz(path, name=path.stem)
    elif path.suffix.lower() == ".csv":
        dataset = _from_csv(path)
    elif path.is_dir():
        dataset = _from_folder(path)
    else:
        dataset = _from_medmnist(spec.lower(), data_dir, size, download)
    _check(dataset)
    return dataset


# --- MedMNIST by name ---------------------------------------------------------------------------


def _from_medmnist(name, data_dir, size, download):
    path = medmnist_file(name, size, data_dir, download)
    meta = medmnist_table()[name]
    dataset = _from_npz(path, name=name if size == 28 else f"{name}_{size}")
    dataset.task = meta["task"]
    dataset.label_names = list(meta["label_names"])
    dataset.info.update(source="medmnist", size=size, license=meta["license"], md5=meta["files"][str(size)]["md5"])
    return dataset


# --- npz in the MedMNIST layout ------------------------------------------------------------------


def _from_npz(path, name):
    try:
        npz = np.load(path, mmap_mode="r")
        keys = set(npz.files)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable npz file ({e})") from e
    present = [s for s in SPLITS if f"{s}_images" in keys]
    missing = [f"{s}_labels" for s in present if f"{s}_labels" not in keys]
    if "train" not in present or missing:
        raise DatasetError(
            f"{path}: expected MedMNIST keys train_images/train_labels (and val_, test_); "
            f"found {sorted(keys)}" + (f", missing {missing}" if missing else "")
        )
    images = [npz[f"{s}_images"] for s in present]
    labels = [np.asarray(npz[f"{s}_labels"]) for s in present]
    for split, image_array, label_array in zip(present, images, labels):
        if len(image_array) != len(label_array):
            raise DatasetError(f"{path}: {split} has {len(image_array)} images but {len(label_array)} labels")
    splits = np.concatenate([[s] * len(a) for s, a in zip(present, images)])
    ids = np.array([f"{s}/{i}" for s, a in zip(present, images) for i in range(len(a))])
    stacked = np.concatenate([a.reshape(len(a), -1) for a in labels]).astype(np.int64)
    task = "multi-label" if stacked.shape[1] > 1 else ("binary" if stacked.max() <= 1 else "multi-class")
    labels_out = stacked if task == "multi-label" else stacked[:, 0]
    n_labels = stacked.shape[1] if task == "multi-label" else int(stacked.max()) + 1
    dataset = Dataset(
        name=name,
        task=task,
        label_names=[str(i) for i in range(n_labels)],
        ids=ids,
        splits=splits,
        labels=labels_out,
        images=ArrayImages(images),
        info={"source": "npz", "path": str(path)},
    )
    _make_missing_splits(dataset)
    return dataset


# --- image folders and CSV manifests -------------------------------------------------------------


def _from_folder(root):
    """`class/image` or `split/class/image`; the class folder names become the label names."""
    children = {p.name for p in root.iterdir() if p.is_dir()}
    has_splits = bool(children) and children <= set(SPLITS)
    rows = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_image_file(path):
            parts = path.relative_to(root).parts
            if len(parts) != (3 if has_splits else 2):
                raise DatasetError(
                    f"{path}: expected {'split/class/image' if has_splits else 'class/image'} under {root}"
                )
            rows.append((path, parts[1] if has_splits else parts[0], parts[0] if has_splits else ""))
    if not rows:
        raise DatasetError(f"{root}: no images found (expected class/image or split/class/image folders)")
    return _from_rows(root.name, rows, root, source="folder")


def _from_csv(path):
    """Columns `path,label` and an optional `split`; paths are relative to the CSV's folder."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            records = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
    if not {"path", "label"} <= set(columns):
        raise DatasetError(f"{path}: the header must have columns path,label (and optionally split); got {columns}")
    rows = []
    for line, row in enumerate(records, start=2):
        where = f"{path}, row {line}"
        if not (row.get("path") or "").strip():
            raise DatasetError(f"{where}: empty path")
        label = (row.get("label") or "").strip()
        if not label:
            raise DatasetError(f"{where}: missing label for {row['path']}")
        split = (row.get("split") or "").strip().lower()
        if split and split not in SPLITS:
            raise DatasetError(f"{where}: split must be one of {', '.join(SPLITS)} or empty, got {split!r}")
        # A missing image is reported by the pre-scan together with every other unreadable file (medprobe.scan).
        rows.append((path.parent / row["path"].strip(), label, split))
    if not rows:
        raise DatasetError(f"{path}: the manifest has no rows")
    return _from_rows(path.stem, rows, path.parent, source="csv")


def _from_rows(name, rows, root, source):
    paths, label_strings, splits = zip(*rows)
    label_names = sorted(set(label_strings), key=_natural_key)
    index = {label: i for i, label in enumerate(label_names)}
    dataset = Dataset(
        name=name,
        task="binary" if len(label_names) == 2 else "multi-class",
        label_names=label_names,
        ids=np.array([os.path.relpath(p, root) for p in paths]),
        splits=np.array(splits, dtype=object),
        labels=np.array([index[label] for label in label_strings], dtype=np.int64),
        images=FileImages(paths),
        info={"source": source, "path": str(root)},
    )
    _make_missing_splits(dataset)
    return dataset


def _natural_key(label):
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


# --- splits and checks ---------------------------------------------------------------------------


def _make_missing_splits(dataset):
    """Fill missing test, then val, with a stratified draw from train (seed SPLIT_SEED), and record it."""
    from sklearn.model_selection import train_test_split

    splits = np.where(dataset.splits == "", "train", dataset.splits).astype(object)
    made = {}
    for split, fraction in (("test", TEST_FRACTION), ("val", VAL_FRACTION)):
        if (splits == split).any():
            continue
        train = np.flatnonzero(splits == "train")
        fraction_of_train = fraction / (1 - TEST_FRACTION) if split == "val" and "test" in made else fraction
        n_taken = max(1, round(fraction_of_train * len(train)))
        if n_taken >= len(train):
            raise DatasetError(
                f"{dataset.name}: {len(train)} training image(s) are too few to hold out a {split} split; "
                "add images, or give the split of each image (split/class/ folders or a split column)"
            )
        strata = dataset.labels[train] if dataset.labels.ndim == 1 else None
        if strata is not None:
            counts = np.bincount(strata)[np.unique(strata)]
            if counts.min() < 2 or n_taken < len(counts):
                strata = None  # too few images to stratify; a plain seeded draw is the honest fallback
        _, taken = train_test_split(train, test_size=n_taken, random_state=SPLIT_SEED, stratify=strata)
        splits[taken] = split
        made[split] = f"stratified {len(taken)} images from train (seed {SPLIT_SEED})"
    dataset.splits = splits.astype(str)
    if made:
        dataset.info["made_splits"] = made


def _check(dataset):
    """Refuse label layouts a probe cannot be honestly fitted or scored on."""
    if dataset.task not in TASKS:
        raise DatasetError(f"{dataset.name}: task must be one of {TASKS}, got {dataset.task!r}")
    if dataset.task == "multi-label":
        return
    names = dataset.label_names
    train = set(dataset.labels[dataset.indices("train")].tolist())
    if len(train) < 2:
        only = names[next(iter(train))] if train else "none"
        raise DatasetError(f"{dataset.name}: the train split has a single class ({only}); a classifier needs two or more")
    for split in ("val", "test"):
        present = set(dataset.labels[dataset.indices(split)].tolist())
        unseen = sorted(present - train)
        if unseen:
            first = dataset.ids[dataset.indices(split)][np.isin(dataset.labels[dataset.indices(split)], unseen)][0]
            raise DatasetError(
                f"{dataset.name}: class {', '.join(repr(names[c]) for c in unseen)} appears in {split} "
                f"(e.g. {first}) but never in train; add training images of it or drop those rows"
            )
        if split == "test" and len(present) < 2:
            raise DatasetError(f"{dataset.name}: the test split has a single class; AUC is undefined")
