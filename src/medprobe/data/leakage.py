"""Leakage a tool that hashes every image can see before any embedding: exact copies across (or within) splits,
the same image under two labels, and groups (patients, lesions) on both sides of a split.

Everything found is recorded in the dataset's `info` (so in results.json), each case by file.
"""

import csv
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from medprobe.core.errors import DatasetError

log = logging.getLogger(__name__)

DUPLICATES = ("drop", "refuse", "keep")
# Which copy of an image survives `drop`: the one in the split a probe learns from.
_KEEP_ORDER = {"train": 0, "": 0, "val": 1, "test": 2}
EXAMPLES = 10  # files named per finding in messages and results.json; counts are always complete


def read_metadata(path, key=None):
    """{id: {column: value}} from a metadata CSV, keyed by `key` (default: `image_id` if present, else the first column)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            records = list(reader)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: metadata CSV not found") from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
    if not columns:
        raise DatasetError(f"{path}: the metadata CSV has no header")
    key = key or ("image_id" if "image_id" in columns else columns[0])
    if key not in columns:
        raise DatasetError(f"{path}: no column {key!r} to join on; columns are {columns}")
    table, repeated = {}, []
    for line, row in enumerate(records, start=2):
        value = (row.get(key) or "").strip()
        if value in table:
            repeated.append(f"{value!r} (row {line})")
        table[value] = {k: (v or "").strip() for k, v in row.items() if k is not None}
    if repeated:
        raise DatasetError(f"{path}: {key} must be unique, but {', '.join(repeated[:EXAMPLES])} repeat earlier rows")
    return key, columns, table


def join_metadata(dataset, path, key=None):
    """Add every metadata column to `dataset.columns`, matching its key to each image's file stem (HAM10000's image_id).

    Images without a metadata row get empty values and are counted; metadata rows without an image are ignored.
    """
    key, columns, table = read_metadata(path, key)
    stems = [Path(i).stem for i in dataset.ids]
    missing = [i for i, stem in zip(dataset.ids, stems) if stem not in table]
    for column in columns:
        if column == key:
            continue
        dataset.columns[column] = np.array([table.get(stem, {}).get(column, "") for stem in stems], dtype=object)
    dataset.info["metadata"] = {
        "file": str(path), "key": key, "columns": [c for c in columns if c != key],
        "matched": len(stems) - len(missing), "unmatched_images": len(missing), "unmatched_examples": missing[:EXAMPLES],
        "unused_rows": len(set(table) - set(stems)),
    }
    if missing:
        log.warning("%d of %d images have no row in %s (matched on the file name without extension against %s), e.g. %s",
                    len(missing), len(stems), path, key, ", ".join(missing[:3]))
    return dataset


def resolve_duplicates(dataset, policy="drop"):
    """Find identical image content; under `drop` keep one copy (train before val before test), refuse or keep otherwise.

    The same content under two labels is a contradiction, not a copy: `drop` removes every copy of it,
    `refuse` stops, `keep` keeps them. Returns the dataset without the dropped rows.
    """
    if policy not in DUPLICATES:
        raise DatasetError(f"duplicates must be one of {', '.join(DUPLICATES)}, got {policy!r}")
    digests = dataset.content_digests()
    rows_by_digest = defaultdict(list)
    for row, digest in enumerate(digests):
        rows_by_digest[digest].append(row)
    groups = [rows for rows in rows_by_digest.values() if len(rows) > 1]
    label_of = (lambda r: tuple(dataset.labels[r].tolist())) if dataset.labels.ndim == 2 else (lambda r: int(dataset.labels[r]))
    conflicting = [rows for rows in groups if len({label_of(r) for r in rows}) > 1]
    cross_split = [rows for rows in groups if len({dataset.splits[r] or "train" for r in rows}) > 1]
    record = {
        "policy": policy, "identical_groups": len(groups), "rows_in_groups": sum(map(len, groups)),
        "across_splits": len(cross_split), "conflicting_labels": len(conflicting), "dropped": 0,
        "examples": [_describe(dataset, rows) for rows in _worst_first(conflicting, cross_split, groups)[:EXAMPLES]],
    }
    dataset.info["duplicates"] = record
    if not groups:
        return dataset
    summary = (f"{len(groups)} image{'s occur' if len(groups) != 1 else ' occurs'} more than once ({record['rows_in_groups']} rows): "
               f"{len(cross_split)} across splits, {len(conflicting)} with different labels")
    listing = "; ".join(_line(dataset, rows) for rows in _worst_first(conflicting, cross_split, groups)[:EXAMPLES])
    if policy == "refuse":
        raise DatasetError(f"{dataset.name}: {summary}: {listing}. Remove the copies, or pass --duplicates drop (keep one copy, "
                           "train first) or --duplicates keep")
    if policy == "keep":
        log.warning("%s: %s; kept as asked (--duplicates keep), so test scores may be inflated: %s", dataset.name, summary, listing)
        return dataset
    conflicting_rows = {r for rows in conflicting for r in rows}
    dropped = set(conflicting_rows)
    for rows in groups:
        if rows[0] in conflicting_rows:
            continue
        keep = min(rows, key=lambda r: (_KEEP_ORDER.get(dataset.splits[r], 0), r))
        dropped.update(r for r in rows if r != keep)
    record["dropped"] = len(dropped)
    record["dropped_by_split"] = {s or "unsplit": int(n) for s, n in zip(*np.unique(dataset.splits[sorted(dropped)], return_counts=True))}
    log.warning("%s: %s; dropped %d rows so each image counts once (train copy kept; every copy of a contradictory image "
                "dropped): %s. Pass --duplicates keep to keep them, or refuse to stop", dataset.name, summary, len(dropped), listing)
    return dataset.subset([r for r in range(len(dataset)) if r not in dropped], check=False)


def _worst_first(conflicting, cross_split, groups):
    """Each group once: contradictions, then copies across splits, then copies within a split."""
    ordered, seen = [], set()
    for rows in conflicting + cross_split + groups:
        if rows[0] not in seen:
            seen.add(rows[0])
            ordered.append(rows)
    return ordered


def _describe(dataset, rows):
    return {"sha256": dataset.content_digests()[rows[0]],
            "files": [{"id": str(dataset.ids[r]), "split": dataset.splits[r] or "unsplit", "label": _label(dataset, r)} for r in rows]}


def _label(dataset, row):
    if dataset.labels.ndim == 2:
        return "+".join(n for n, on in zip(dataset.label_names, dataset.labels[row]) if on) or "none"
    return dataset.label_names[int(dataset.labels[row])]


def _line(dataset, rows):
    return " = ".join(f"{dataset.ids[r]} ({dataset.splits[r] or 'unsplit'}, {_label(dataset, r)})" for r in rows)


def group_ids(dataset, column=None):
    """One id per row such that rows sharing a `column` value or identical content share an id (or None: no groups).

    Identical content always joins its rows, so a made split never puts one image on both sides.
    """
    digests = dataset.content_digests()
    if column is None and len(set(digests)) == len(digests):
        return None
    parent = list(range(len(dataset)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    values = column_values(dataset, column) if column is not None else None
    first = {}  # key -> the first row that had it; every later row with the key joins that row's group
    for row, digest in enumerate(digests):
        for key in [("sha", digest)] + ([("group", values[row])] if values is not None else []):
            if key in first:
                parent[find(row)] = find(first[key])
            else:
                first[key] = row
    return np.array([find(r) for r in range(len(dataset))])


def column_values(dataset, column):
    if column not in dataset.columns:
        known = sorted(dataset.columns)
        raise DatasetError(
            f"{dataset.name}: no column {column!r} to group by; " + (f"columns are {known}" if known else
            "the dataset has no metadata columns: add --metadata FILE.csv (joined on the image file name) or put the column in the CSV manifest")
        )
    values = dataset.columns[column]
    empty = [str(dataset.ids[r]) for r, v in enumerate(values) if not v]
    if empty:
        raise DatasetError(f"{dataset.name}: {len(empty)} images have no {column!r} value, e.g. {', '.join(empty[:3])}; "
                           "fill it in (each image needs its group) or leave out --group")
    return values


def record_straddling(dataset, column):
    """Count the groups whose images sit in more than one split, and the test/val images whose group is also in train."""
    values = column_values(dataset, column)
    splits_of = defaultdict(set)
    for value, split in zip(values, dataset.splits):
        splits_of[value].add(split)
    straddling = sorted(v for v, s in splits_of.items() if len(s) > 1)
    in_train = {v for v, s in splits_of.items() if "train" in s}
    record = {"column": column, "groups": len(splits_of), "straddling_groups": len(straddling), "examples": straddling[:EXAMPLES]}
    for split in ("val", "test"):
        rows = dataset.indices(split)
        record[f"{split}_images_with_group_in_train"] = int(sum(values[r] in in_train for r in rows))
        record[f"{split}_images"] = int(len(rows))
    dataset.info["groups"] = record
    if straddling:
        log.warning("%s: %d of %d %s groups have images in more than one split; %d of %d test images share a %s with train "
                    "(pass --resplit to draw splits by %s instead)", dataset.name, len(straddling), len(splits_of), column,
                    record["test_images_with_group_in_train"], record["test_images"], column, column)
    return record
