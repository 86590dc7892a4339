"""Datasets: one contract for MedMNIST names, npz files, image folders and CSV manifests.

Every dataset is a `Dataset`: N records (ids, split names) aligned with an N-row label
array and an image source, plus the task type and label names.
"""

import copy
import csv
import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medprobe.core import remote
from medprobe.core.errors import DatasetError
from medprobe.core.names import printable
from medprobe.data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_image_file
from medprobe.data.leakage import DUPLICATES, group_ids, join_metadata, record_straddling, resolve_duplicates
from medprobe.data.medmnist import medmnist_file, medmnist_table
from medprobe.data.scan import ON_ERROR, scan_images
from medprobe.data.sources import ArrayImages, FileImages, ImageSource, content_digests
from medprobe.data.splits import SPLIT_SEED, make_missing_splits

SPLITS = ("train", "val", "test")
ROWS = ("all", *SPLITS)  # what `evaluate --rows` may score: every row, or one split
TASKS = ("binary", "multi-class", "ordinal", "multi-label")


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
    columns: dict = field(default_factory=dict)  # metadata, one str array per column (a CSV's extra columns, --metadata)
    digests: list | None = None  # SHA-256 of each image's content, once computed
    # One id per row shared by the images of one group (--group: a patient, a lesion) and by identical copies, or None.
    # Splits are drawn by it, and the probe's CV folds keep each group whole with it.
    groups: np.ndarray | None = None

    def __len__(self):
        return len(self.ids)

    def content_digests(self):
        """SHA-256 of every image's content, computed once: duplicates, groups and the embedding cache all use it."""
        if self.digests is None:
            self.digests = content_digests(self.images)
        return self.digests

    def indices(self, split):
        return np.flatnonzero(self.splits == split)

    def groups_of(self, *rows):
        """The group ids of each set of `rows` (what `fit_probe(groups=...)` takes), or None when there are no groups."""
        return None if self.groups is None else tuple(self.groups[r] for r in rows)

    def describe(self):
        """JSON-ready description recorded in results."""
        counts = {s: int((self.splits == s).sum()) for s in SPLITS}
        return {"name": self.name, "task": self.task, "label_names": list(self.label_names), "n": counts, **self.info}

    def subset(self, rows, check=True):
        """The same dataset restricted to `rows` (e.g. without unreadable images), checked again unless check=False."""
        rows = np.asarray(rows, dtype=np.int64)
        kept = replace(
            self, ids=self.ids[rows], splits=self.splits[rows], labels=self.labels[rows], images=self.images.subset(rows),
            info=dict(self.info), columns={k: v[rows] for k, v in self.columns.items()},
            digests=None if self.digests is None else [self.digests[r] for r in rows],
            groups=None if self.groups is None else self.groups[rows],
        )
        if check:
            _check(kept)
        return kept


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, and everything that decides which images end up in which split.

    Built once from the command line (or a bench cell) and passed whole, so every command loads,
    pre-scans, de-duplicates and splits its data the same way. `metadata` is a CSV joined on the
    image file name (its `metadata_key` column, default image_id); `group` names a column
    (patient, lesion, study) whose images must stay in one split; `resplit` ignores the dataset's
    own splits and draws all three by group. `split_seed` draws the splits that are made (missing
    ones, or all three with `resplit`); the dataset's own splits never change with it.

    >>> data, scanned = DataSpec("ham10000_melnv", metadata="metadata.csv", group="lesion_id").load()
    """

    dataset: str
    data_dir: str | None = None
    size: int = 28
    on_error: str = "fail"
    metadata: str | None = None
    metadata_key: str | None = None
    group: str | None = None
    resplit: bool = False
    duplicates: str = "drop"
    split_seed: int = SPLIT_SEED

    def __post_init__(self):
        # A path is kept as its string, as on the command line, so specs compare (and round-trip through JSON) equal.
        object.__setattr__(self, "dataset", str(self.dataset))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        if self.on_error not in ON_ERROR:
            raise DatasetError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.duplicates not in DUPLICATES:
            raise DatasetError(f"duplicates must be one of {', '.join(DUPLICATES)}, got {self.duplicates!r}")
        if self.resplit and not self.group:
            raise DatasetError("--resplit draws new splits by group; name the group column with --group")

    def load(self, scanned=None):
        """(dataset, ScanReport): `scan()`, then the missing splits made with `split_seed`, groups kept whole.

        Splits are made last, from the images that are actually used, so what is recorded is what ran. `scanned`, an
        earlier `scan()` of this spec, is reused instead of decoding every image again (`medprobe run --seeds`); the
        splits are drawn on a copy, so it serves any number of seeds.
        """
        data, report = scanned or self.scan()
        data = replace(data, splits=data.splits.copy(), info=copy.deepcopy(data.info))
        data.groups = group_ids(data, self.group)
        prepare(data, data.groups, self.group, self.split_seed)
        if self.group:
            record_straddling(data, self.group)
        return data, report

    def scan(self, read=None):
        """(dataset, ScanReport) before any split is drawn: images decoded once, copies resolved, metadata joined.

        `read(dataset, on_error)` stands in for the local pre-scan (`scan_images`): on Ray the workers read, hash and
        decode each file (`medprobe.embedding.ray.read_on_cluster`), and this process never reads an image.
        """
        data = read_dataset(self.dataset, self.data_dir, self.size)
        data, scanned = read(data, self.on_error) if read else scan_images(data, self.on_error, check=False)
        if self.metadata:
            join_metadata(data, self.metadata, self.metadata_key)
        data = resolve_duplicates(data, self.duplicates)
        if self.group and self.resplit:
            data.info["resplit"] = {"by": self.group, "given_splits_ignored": {s: int((data.splits == s).sum()) for s in SPLITS}}
            data.splits = np.full(len(data), "", dtype=object)
        return data, scanned


def read_dataset(spec, data_dir=None, size=28, download=True):
    """The dataset as its source gives it: rows without a split have an empty split name."""
    spec = str(spec)
    if remote.is_url(spec):
        return _from_url(spec)
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DatasetError(f"{path}: npz file not found")
        return _from_npz(path, name=path.stem)
    if path.suffix.lower() == ".csv":
        return _from_csv(path)
    if path.is_dir():
        if spec.lower() in medmnist_table() and "/" not in spec and "\\" not in spec:
            raise DatasetError(
                f"{spec!r} is both a MedMNIST dataset name and a folder here; write ./{spec} for the folder, "
                f"or run from another folder for MedMNIST's {spec}"
            )
        return _from_folder(path)
    return _from_medmnist(spec.lower(), data_dir, size, download)


def prepare(dataset, groups=None, group_name=None, seed=SPLIT_SEED):
    """Make the missing splits (by group when given, drawn with `seed`) and check the label layout."""
    make_missing_splits(dataset, groups, group_name, seed)
    _check(dataset)
    return dataset


def load_dataset(spec, data_dir=None, size=28, download=True):
    """Load a dataset from a MedMNIST name, an npz path, an image folder or a CSV manifest; missing splits made.

    This reads no image. `DataSpec(...).load()`, which every command uses, first decodes every
    image, resolves identical copies and joins metadata, so its splits keep copies and groups whole.

    >>> ds = load_dataset("retinamnist", data_dir="../shared/data/medmnist")
    >>> ds.task, len(ds)
    ('ordinal', 1600)
    """
    return prepare(read_dataset(spec, data_dir, size, download))


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


def _from_npz(path, name, where=None):
    """`where` names a file opened from its bytes (a URL's)."""
    where = where or path
    try:
        npz = np.load(path, mmap_mode="r")
        keys = set(npz.files)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{where}: not a readable npz file ({e})") from e
    present = [s for s in SPLITS if f"{s}_images" in keys]
    missing = [f"{s}_labels" for s in present if f"{s}_labels" not in keys]
    if "train" not in present or missing:
        raise DatasetError(
            f"{where}: expected MedMNIST keys train_images/train_labels (and val_, test_); "
            f"found {sorted(keys)}" + (f", missing {missing}" if missing else "")
        )
    images = [npz[f"{s}_images"] for s in present]
    labels = [np.asarray(npz[f"{s}_labels"]) for s in present]
    for split, image_array, label_array in zip(present, images, labels):
        if len(image_array) != len(label_array):
            raise DatasetError(f"{where}: {split} has {len(image_array)} images but {len(label_array)} labels")
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
        info={"source": "npz", "path": str(where)},
    )
    return dataset


# --- image folders and CSV manifests -------------------------------------------------------------


def _from_folder(root):
    """`class/image` or `split/class/image`; the class folder names become the label names."""
    manifests = [p for p in sorted(root.glob("*.csv")) if {"path", "label"} <= set(_csv_header(p))]
    if manifests:  # a folder of images beside labels.csv: reading it as class folders would invent a class per sub-folder
        raise DatasetError(
            f"{root} holds the manifest {manifests[0].name} (path,label columns), but a folder dataset takes its labels from "
            f"class/ sub-folders; pass --dataset {manifests[0]} to use the manifest"
        )
    children = {p.name for p in root.iterdir() if p.is_dir()}
    has_splits = bool(children) and children <= set(SPLITS)
    rows = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_image_file(path):
            rows.append(_class_folder_row(path, path.relative_to(root).parts, has_splits, root))
    if not rows:
        raise DatasetError(f"{root}: no images found (expected class/image or split/class/image folders)")
    return _from_rows(root.name, rows, root, source="folder")


def _class_folder_row(path, parts, has_splits, root):
    """(path, label, split) of an image whose path under the dataset's root (a folder or a URL) is `parts`."""
    if len(parts) != (3 if has_splits else 2):
        raise DatasetError(f"{path}: expected {'split/class/image' if has_splits else 'class/image'} under {root}")
    return path, parts[1] if has_splits else parts[0], parts[0] if has_splits else ""


def _csv_header(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _from_url(url):
    """A CSV manifest, an npz file or an image folder at a URL (s3://bucket/ham.csv, s3://bucket/ham/); a manifest's
    relative paths resolve beside it."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix.lower()
    if suffix not in (".csv", ".npz"):
        return _from_url_folder(url)
    try:
        data = remote.read_bytes(url)
    except Exception as e:  # noqa: BLE001 -- each filesystem (s3fs, gcsfs, ...) raises its own types
        raise DatasetError(f"{url}: {remote.reason(e)}") from e
    if suffix == ".npz":
        return _from_npz(io.BytesIO(data), name=Path(name).stem, where=url)
    return _from_csv(url, data)


def _from_url_folder(url):
    """`class/image` or `split/class/image` under a URL, as a local folder: one listing of the objects, no image read.
    An object is an image by its suffix (a suffix-less DICOM file, which a local folder recognises by its bytes, is not
    looked into: name it .dcm or list it in a manifest)."""
    fs, base = remote.filesystem(url)
    scheme, base = url.split("://", 1)[0], base.rstrip("/")
    try:
        keys = fs.find(base)
    except Exception as e:  # noqa: BLE001 -- each filesystem (s3fs, gcsfs, ...) raises its own types
        raise DatasetError(f"{url}: {remote.reason(e)}") from e
    relative = sorted(key[len(base) + 1:] for key in keys if key.startswith(base + "/"))
    for name in (r for r in relative if "/" not in r and r.lower().endswith(".csv")):
        with fs.open(f"{base}/{name}", "rb") as f:
            header = next(csv.reader(io.StringIO(f.readline().decode("utf-8-sig", errors="replace"))), [])
        if {"path", "label"} <= {c.strip() for c in header}:
            raise DatasetError(f"{url} holds the manifest {name} (path,label columns), but a folder dataset takes its labels from class/ "
                               f"sub-folders; pass --dataset {scheme}://{base}/{name} to use the manifest")
    tops = {r.split("/", 1)[0] for r in relative if "/" in r}
    has_splits = bool(tops) and tops <= set(SPLITS)
    rows = []
    for r in relative:
        if Path(r).suffix.lower() not in IMAGE_SUFFIXES | DICOM_SUFFIXES:
            continue
        rows.append(_class_folder_row(f"{scheme}://{base}/{r}", r.split("/"), has_splits, url))
    if not rows:
        raise DatasetError(f"{url}: no images found (expected class/image or split/class/image under it)")
    return _from_rows(base.rsplit("/", 1)[-1], rows, f"{scheme}://{base}", source="folder")


def _from_csv(path, data=None):
    """Columns `path,label` and an optional `split`; paths are relative to the CSV's folder (in its bucket, for a URL).

    `data`: the CSV's bytes, already read (a URL's).
    """
    url = remote.is_url(path)
    if data is None and not path.is_file():
        raise DatasetError(f"{path}: CSV manifest not found")
    try:
        if data is None:
            data = path.read_bytes()
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
        columns = reader.fieldnames or []
        records = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
    if not {"path", "label"} <= set(columns):
        raise DatasetError(f"{path}: the header must have columns path,label (and optionally split); got {columns}")
    rows, lines = [], []
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
        given = row["path"].strip()
        # A URL in the path column is the image's own address, whichever disk or bucket the manifest is on
        rows.append((given if remote.is_url(given) else remote.join(remote.parent(path), given) if url else path.parent / given, label, split))
        lines.append(line)
    if not rows:
        raise DatasetError(f"{path}: the manifest has no rows")
    stem, folder = (Path(path.rsplit("/", 1)[-1]).stem, remote.parent(path)) if url else (path.stem, path.parent)
    dataset = _from_rows(stem, rows, folder, source="csv", where=[f"{path}, row {n}" for n in lines])
    for column in columns:
        if column not in ("path", "label", "split"):
            dataset.columns[column] = np.array([(r.get(column) or "").strip() for r in records], dtype=object)
    return dataset


def _from_rows(name, rows, root, source, where=None):
    paths, label_strings, splits = zip(*rows)
    label_names = sorted(set(label_strings), key=_natural_key)
    _refuse_near_identical_labels(label_names, label_strings, where or [str(p) for p in paths])
    index = {label: i for i, label in enumerate(label_names)}
    dataset = Dataset(
        name=name,
        task="binary" if len(label_names) == 2 else "multi-class",
        label_names=label_names,
        ids=np.array([printable(_image_id(p, root)) for p in paths]),  # ids are names for people and files; paths stay exact
        splits=np.array(splits, dtype=object),
        labels=np.array([index[label] for label in label_strings], dtype=np.int64),
        images=FileImages(paths),
        info={"source": source, "path": str(root)},
    )
    return dataset


def _image_id(path, root):
    """An image's name for people: its path relative to the dataset's folder, or its whole URL when outside it."""
    if remote.is_url(path):
        return path[len(str(root)) + 1:] if str(path).startswith(f"{root}/") else path
    return os.path.relpath(path, root)


def _refuse_near_identical_labels(label_names, label_strings, where):
    """'Mel' and 'mel' (or 'mel ' in a folder name) would silently become two classes."""
    spelled = {}
    for name in label_names:
        spelled.setdefault(name.strip().casefold(), []).append(name)
    clashes = [names for names in spelled.values() if len(names) > 1]
    if clashes:
        first = {name: where[label_strings.index(name)] for names in clashes for name in names}
        described = "; ".join(" vs ".join(f"{n!r} (first at {first[n]})" for n in names) for names in clashes)
        raise DatasetError(f"labels that differ only in case or spaces would be separate classes: {described}; spell each class one way")


def _natural_key(label):
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


# --- checks ---------------------------------------------------------------------------------------


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
        drawn = dataset.info.get("made_splits", {})
        if drawn and len(set(dataset.labels[np.isin(dataset.splits, ["train", *drawn])].tolist())) > 1:  # the draw took a class whole
            raise DatasetError(f"{dataset.name}: the train rows hold two or more classes, but drawing {' and '.join(drawn)} out of them "
                               f"({', '.join(d['method'] for d in drawn.values())}) left only {only!r} in train; give each image's "
                               "split (a split column or split/class/ folders), or add train images of the other classes")
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
