"""Missing val and test splits, drawn from train: stratified by class, and by group when images share a patient,
a lesion or their exact content, so no group ever straddles two splits. What was done is recorded as done."""

import hashlib

import numpy as np

from medprobe.core.caught import caught_warnings
from medprobe.core.errors import DatasetError

# Seed of the split made when a dataset has no val (or no test) split. Documented in docs/datasets.md.
SPLIT_SEED = 0
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


def make_missing_splits(dataset, groups=None, group_name=None, seed=SPLIT_SEED):
    """Fill missing test, then val, from train (drawn with `seed`) and record how in `dataset.info["made_splits"]`.

    `groups` (one id per row, or None) keeps every group on one side. Rows with an empty split are
    train rows. The record says "stratified" only when the draw was, and holds the SHA-256 of the
    drawn ids (sorted, one per line), so two draws can be told apart without the ids.
    """
    splits = np.where(dataset.splits == "", "train", dataset.splits).astype(object)
    made = {}
    for split, fraction in (("test", TEST_FRACTION), ("val", VAL_FRACTION)):
        if (splits == split).any():
            continue
        train = np.flatnonzero(splits == "train")
        fraction_of_train = fraction / (1 - TEST_FRACTION) if split == "val" and "test" in made else fraction
        if groups is None:
            taken, how = _draw_rows(dataset, train, fraction_of_train, split, seed)
        else:
            taken, how = _draw_groups(dataset, train, groups[train], fraction_of_train, split, group_name, seed)
        splits[taken] = split
        ids = "\n".join(sorted(str(i) for i in dataset.ids[taken]))
        made[split] = {"images": int(len(taken)), "from": "train", "seed": seed, "method": how,
                       "ids_sha256": hashlib.sha256(ids.encode("utf-8", errors="backslashreplace")).hexdigest()}
    dataset.splits = splits.astype(str)
    if made:
        dataset.info["made_splits"] = made
    return dataset


def _too_few(dataset, n_train, split):
    return DatasetError(
        f"{dataset.name}: {n_train} training image(s) are too few to hold out a {split} split; "
        "add images, or give the split of each image (split/class/ folders or a split column)"
    )


def _draw_rows(dataset, train, fraction, split, seed):
    from sklearn.model_selection import train_test_split

    n_taken = max(1, round(fraction * len(train)))
    if n_taken >= len(train):
        raise _too_few(dataset, len(train), split)
    strata = dataset.labels[train] if dataset.labels.ndim == 1 else None
    if strata is not None:
        counts = np.bincount(strata)[np.unique(strata)]
        if counts.min() < 2 or n_taken < len(counts):
            strata = None  # too few images to stratify; a plain seeded draw is the honest fallback
    _, taken = train_test_split(train, test_size=n_taken, random_state=seed, stratify=strata)
    if strata is None and dataset.labels.ndim == 1:
        labels = dataset.labels
        if set(labels[train].tolist()) != set(labels[np.setdiff1d(train, taken)].tolist()):
            # The plain draw took every train image of a class (5 'mel' and 1 'nv': the 'nv'), and the train rows, which
            # held both classes, were refused as "a single class". Draw again, keeping one image of each class in train.
            rng = np.random.default_rng(seed)
            kept = [rng.choice(train[labels[train] == c]) for c in np.unique(labels[train])]
            pool = np.setdiff1d(train, kept)
            if n_taken > len(pool):
                raise _too_few(dataset, len(train), split)
            taken = pool if n_taken == len(pool) else train_test_split(pool, test_size=n_taken, random_state=seed)[1]
            return taken, "random, one image of each class kept in train (too few images per class to stratify)"
    return taken, "stratified by class" if strata is not None else "random (too few images per class to stratify)"


def _draw_groups(dataset, train, groups, fraction, split, group_name, seed):
    """One fold of StratifiedGroupKFold with 1/fraction folds: whole groups, class balance kept where the groups allow."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    by = f"whole groups ({group_name})" if group_name else "whole groups of identical images"
    n_groups = len(np.unique(groups))
    n_folds = max(2, round(1 / fraction))
    if n_groups < 2:
        raise _too_few(dataset, len(train), split)
    labels = dataset.labels[train]
    if labels.ndim == 1 and n_groups >= n_folds:
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with caught_warnings("ignore", UserWarning):  # "least populated class has only k members": checked below instead
            _, held = next(folds.split(train, labels, groups))
        taken = train[held]
        kept = np.setdiff1d(train, taken)
        # Stratified "where possible": say so only if every class of train is on both sides.
        both = set(labels.tolist()) == set(dataset.labels[kept].tolist()) == set(dataset.labels[taken].tolist())
        return taken, f"{by}, stratified by class (StratifiedGroupKFold)" if both else f"{by}, stratified where groups allowed (some class is on one side only)"
    draw = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    _, held = next(draw.split(train, groups=groups))
    if len(held) == 0 or len(held) == len(train):
        raise _too_few(dataset, len(train), split)
    return train[held], f"{by}, random (too few groups to stratify)"
