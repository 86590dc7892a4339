"""Honest numbers on the data people bring: duplicates, groups, rare classes, tiny splits, odd labels.

Every dataset here is made by the test from real images (RetinaMNIST and HAM10000 from ../shared/data)
and run through the CLI as a user would; each test checks the exit code, the message and results.json.
"""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import QUICK
from medprobe.cli import main


def run_main(*args):
    return main([str(a) for a in args])


def results(folder):
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def retina_pngs(shared_data, tmp_path_factory):
    """120 real RetinaMNIST fundus images as PNG files, with their grades (0-4)."""
    root = tmp_path_factory.mktemp("retina_pngs")
    npz = np.load(shared_data / "medmnist" / "retinamnist.npz")
    images, labels = npz["train_images"][:120], npz["train_labels"][:120, 0]
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / f"img_{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append((path, int(label)))
    return paths


def write_manifest(path, rows, header=("path", "label", "split")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def binary_rows(retina_pngs, n, split="", skip=0):
    """n images labelled 'healthy' (grade 0) or 'disease' (grade 1-3), alternating so both classes are present."""
    zeros = [p for p, g in retina_pngs if g == 0][skip // 2:]
    ones = [p for p, g in retina_pngs if 0 < g < 4][skip // 2:]
    rows = []
    for i in range(n):
        path = (zeros if i % 2 else ones)[i // 2]
        rows.append((str(path), "healthy" if i % 2 else "disease", split))
    return rows


def test_every_row_twice_is_found_and_the_copies_leave_test(tmp_path, retina_pngs, medprobe):
    rows = binary_rows(retina_pngs, 60)
    manifest = write_manifest(tmp_path / "twice.csv", rows + rows)
    done = medprobe("run", "--dataset", manifest, "--probe", "knn", "--out", tmp_path / "o", "--quiet", "--n-boot", "100", *QUICK)
    assert done.returncode == 0, done.stderr
    assert "60 images occur more than once (120 rows)" in done.stderr and "dropped 60 rows" in done.stderr
    record = results(tmp_path / "o")["dataset"]
    assert record["duplicates"]["identical_groups"] == 60 and record["duplicates"]["dropped"] == 60
    assert sum(record["n"].values()) == 60
    with open(tmp_path / "o" / "predictions.csv") as f:
        test_ids = [r["id"] for r in csv.DictReader(f)]
    assert len(test_ids) == len(set(test_ids)) == record["n"]["test"]

    refused = medprobe("run", "--dataset", manifest, "--duplicates", "refuse", "--out", tmp_path / "r", "--quiet")
    assert refused.returncode == 2 and "img_" in refused.stderr and "--duplicates drop" in refused.stderr
    assert not (tmp_path / "r").exists()


def test_the_same_image_under_two_labels_is_named_and_dropped(tmp_path, retina_pngs, medprobe):
    rows = binary_rows(retina_pngs, 40)
    contradiction = (rows[0][0], "healthy" if rows[0][1] == "disease" else "disease", "")
    manifest = write_manifest(tmp_path / "conflict.csv", rows + [contradiction])
    done = medprobe("run", "--dataset", manifest, "--out", tmp_path / "o", "--quiet", "--n-boot", "100", *QUICK)
    assert done.returncode == 0, done.stderr
    assert "with different labels" in done.stderr and rows[0][0].split("/")[-1] in done.stderr
    record = results(tmp_path / "o")["dataset"]["duplicates"]
    assert record["conflicting_labels"] == 1 and record["dropped"] == 2
    assert {f["label"] for f in record["examples"][0]["files"]} == {"healthy", "disease"}
    refused = medprobe("run", "--dataset", manifest, "--duplicates", "refuse", "--out", tmp_path / "r", "--quiet")
    assert refused.returncode == 2 and "1 with different labels" in refused.stderr


@pytest.fixture(scope="module")
def ham_subset(shared_data, tmp_path_factory):
    """A split/class/ folder of 120 real HAM10000 images chosen so that many lesions have images in train and test,
    and the metadata CSV of exactly those images (HAM's own columns)."""
    source = shared_data / "ham10000_melnv"
    with open(source / "metadata.csv") as f:
        meta = {r["image_id"]: r for r in csv.DictReader(f)}
    where = {p.stem: p for p in source.glob("*/*/*.jpg")}
    by_lesion = {}
    for image_id, row in meta.items():
        by_lesion.setdefault(row["lesion_id"], []).append(image_id)
    multi = [ids for ids in by_lesion.values() if len(ids) > 1]
    single = [ids for ids in by_lesion.values() if len(ids) == 1]
    chosen = [i for ids in multi[:40] for i in ids][:80] + [ids[0] for ids in single[:40]]
    root = tmp_path_factory.mktemp("ham") / "ham_subset"
    for image_id in chosen:
        path = where[image_id]
        target = root / path.parent.parent.name / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    metadata = root.parent / "metadata.csv"
    with open(metadata, "w", newline="") as f:
        writer = csv.DictWriter(f, list(next(iter(meta.values()))))
        writer.writeheader()
        writer.writerows(meta[i] for i in chosen)
    return root, metadata


def test_groups_straddling_the_given_split_are_counted_and_a_grouped_split_has_none(tmp_path, ham_subset, medprobe):
    root, metadata = ham_subset
    given = medprobe("run", "--dataset", root, "--metadata", metadata, "--group", "lesion_id", "--out", tmp_path / "given", "--quiet",
                "--n-boot", "100", "--encoder", "efficientnet_lite0")
    assert given.returncode == 0, given.stderr
    record = results(tmp_path / "given")["dataset"]
    groups = record["groups"]
    assert groups["column"] == "lesion_id" and groups["straddling_groups"] > 0 and groups["test_images_with_group_in_train"] > 0
    assert f"{groups['test_images_with_group_in_train']} of {groups['test_images']} test images share a lesion_id" in given.stderr
    assert record["made_splits"]["val"]["method"].startswith("whole groups (lesion_id)")
    assert groups["val_images_with_group_in_train"] == 0  # the split medprobe made keeps lesions whole
    assert record["metadata"]["matched"] == 120

    grouped = medprobe("run", "--dataset", root, "--metadata", metadata, "--group", "lesion_id", "--resplit", "--out", tmp_path / "grouped",
                  "--quiet", "--n-boot", "100", "--encoder", "efficientnet_lite0")
    assert grouped.returncode == 0, grouped.stderr
    record = results(tmp_path / "grouped")["dataset"]
    assert record["groups"]["straddling_groups"] == 0 and record["resplit"]["by"] == "lesion_id"
    assert {s for s in record["made_splits"]} == {"val", "test"}
    assert "cache hit" in grouped.stdout  # same images, new split: nothing re-embedded
    # the probe's CV keeps lesions whole too: no fold is scored on a lesion it trained on
    selection = results(tmp_path / "grouped")["probe"]["selection"]
    assert selection["folds_keep_groups_whole"] and "keeping each group whole" in selection["criterion"]


def test_a_group_column_that_does_not_exist_is_explained(tmp_path, ham_subset, medprobe):
    root, metadata = ham_subset
    done = medprobe("run", "--dataset", root, "--metadata", metadata, "--group", "patient", "--out", tmp_path / "o", "--quiet")
    assert done.returncode == 2 and "no column 'patient'" in done.stderr and "lesion_id" in done.stderr
    done = medprobe("run", "--dataset", root, "--group", "lesion_id", "--out", tmp_path / "o", "--quiet")
    assert done.returncode == 2 and "--metadata" in done.stderr


def test_thirteen_images_run_with_every_probe(tmp_path, retina_pngs, medprobe):
    manifest = write_manifest(tmp_path / "thirteen.csv", binary_rows(retina_pngs, 13))
    for probe in ("logreg", "knn", "svm"):
        done = medprobe("run", "--dataset", manifest, "--probe", probe, "--out", tmp_path / probe, "--quiet", "--n-boot", "200")
        assert "Traceback" not in done.stderr
        if done.returncode == 0:
            test = results(tmp_path / probe)["metrics"]["test"]
            assert "nan" not in json.dumps(test).lower() and any("few images" in n for n in test["notes"])
            assert "! few images" in done.stdout
        else:
            assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_a_class_with_one_image_and_svm_says_which_class(tmp_path, retina_pngs, medprobe):
    rows = binary_rows(retina_pngs, 40, "train") + binary_rows(retina_pngs, 20, "test", skip=40)
    rare = [p for p, g in retina_pngs if g == 4][:1]
    rows.append((str(rare[0]), "severe", "train"))
    manifest = write_manifest(tmp_path / "rare.csv", rows)
    done = medprobe("run", "--dataset", manifest, "--probe", "svm", "--out", tmp_path / "o", "--quiet")
    assert done.returncode == 2 and "class 'severe' has 1 training image" in done.stderr and "--probe logreg" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_class_missing_from_test_is_named_and_auc_is_over_the_rest(tmp_path, retina_pngs, medprobe):
    grades = {g: [p for p, gg in retina_pngs if gg == g] for g in range(5)}
    rows = [(str(p), f"grade{g}", "train") for g in (0, 1, 2) for p in grades[g][:8]]
    rows += [(str(p), f"grade{g}", "test") for g in (0, 1) for p in grades[g][8:14]]
    manifest = write_manifest(tmp_path / "absent.csv", rows)
    done = medprobe("run", "--dataset", manifest, "--out", tmp_path / "o", "--quiet", "--n-boot", "200", *QUICK)
    assert done.returncode == 0, done.stderr
    test = results(tmp_path / "o")["metrics"]["test"]
    assert test["auc_over"] == ["grade0", "grade1"] and "'grade2'" in test["notes"][0]
    assert "nan" not in done.stdout.lower() and "nan" not in json.dumps(test).lower()


def test_a_val_split_that_cannot_score_is_not_called_a_val_selection(tmp_path, retina_pngs):
    rows = binary_rows(retina_pngs, 30, "train") + binary_rows(retina_pngs, 12, "test", skip=30)
    rows += [(str(p), "disease", "val") for p, g in retina_pngs if 0 < g < 4][30:33]  # val: one class only
    manifest = write_manifest(tmp_path / "val1.csv", rows)
    assert run_main("run", "--dataset", manifest, "--out", tmp_path / "o", "--quiet", "--n-boot", "100", "--encoder", "efficientnet_lite0") == 0
    criterion = results(tmp_path / "o")["probe"]["selection"]["criterion"]
    assert criterion != "val AUC" and "CV AUC on train" in criterion


def test_few_test_images_per_class_flag_the_result_and_a_thin_bootstrap_says_so(tmp_path, retina_pngs, medprobe):
    grades = {g: [p for p, gg in retina_pngs if gg == g] for g in range(5)}
    rows = [(str(p), f"g{g}", "train") for g in range(4) for p in grades[g][:5]]
    rows += [(str(p), f"g{g}", "test") for g in range(4) for p in grades[g][5:7]]
    manifest = write_manifest(tmp_path / "thin.csv", rows)
    done = medprobe("run", "--dataset", manifest, "--out", tmp_path / "o", "--quiet", *QUICK)
    assert done.returncode == 0, done.stderr
    test = results(tmp_path / "o")["metrics"]["test"]
    valid = test["bootstrap"]["valid_auc_resamples"]
    assert valid < 950 and any(f"only {valid} of 1000 bootstrap resamples" in n for n in test["notes"])
    assert any("few images" in n for n in test["notes"]) and f"only {valid} of 1000" in done.stdout


def test_labels_that_differ_only_in_case_are_named(tmp_path, retina_pngs, medprobe):
    rows = binary_rows(retina_pngs, 20)
    rows[3] = (rows[3][0], rows[3][1].capitalize(), "")
    manifest = write_manifest(tmp_path / "case.csv", rows)
    done = medprobe("run", "--dataset", manifest, "--out", tmp_path / "o", "--quiet")
    assert done.returncode == 2 and "differ only in case" in done.stderr and "row 5" in done.stderr


def test_made_splits_record_the_images_actually_used(tmp_path, retina_pngs):
    folder = tmp_path / "scans"
    for i, (path, grade) in enumerate(retina_pngs[:40]):
        (folder / ("disease" if grade else "healthy")).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / ("disease" if grade else "healthy") / path.name)
    broken = sorted(folder.glob("*/*.png"))[:3]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert run_main("run", "--dataset", folder, "--on-error", "skip", "--out", tmp_path / "o", "--quiet", "--n-boot", "100", *QUICK) == 0
    record = results(tmp_path / "o")["dataset"]
    assert sum(record["n"].values()) == 37 and len(results(tmp_path / "o")["images"]["skipped"]) == 3
    assert record["made_splits"]["test"]["images"] == record["n"]["test"]
    assert record["made_splits"]["val"]["images"] == record["n"]["val"]


def test_a_folder_with_a_manifest_points_at_it(tmp_path, retina_pngs, medprobe):
    folder = tmp_path / "study"
    (folder / "images").mkdir(parents=True)
    rows = []
    for path, grade in retina_pngs[:20]:
        shutil.copy(path, folder / "images" / path.name)
        rows.append((f"images/{path.name}", "disease" if grade else "healthy"))
    write_manifest(folder / "labels.csv", rows, header=("path", "label"))
    done = medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet")
    assert done.returncode == 2 and f"--dataset {folder / 'labels.csv'}" in done.stderr


def test_a_local_folder_named_like_a_medmnist_dataset_is_not_silently_used(tmp_path, retina_pngs, medprobe):
    (tmp_path / "retinamnist" / "a").mkdir(parents=True)
    done = medprobe("run", "--dataset", "retinamnist", "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    assert done.returncode == 2 and "both a MedMNIST dataset name and a folder" in done.stderr and "./retinamnist" in done.stderr


def test_a_re_encoded_copy_of_a_train_image_in_test_is_reported_as_a_near_duplicate(tmp_path, shared_data, medprobe):
    source = sorted((shared_data / "ham10000_melnv" / "train").rglob("*.jpg"))
    folder = tmp_path / "derm"
    for split, offset, count in (("train", 0, 12), ("test", 200, 6)):
        for cls in ("mel", "nv"):
            (folder / split / cls).mkdir(parents=True)
            for path in [p for p in source if p.parent.name == cls][offset : offset + count]:
                shutil.copy(path, folder / split / cls / path.name)
    original = sorted((folder / "train" / "mel").glob("*.jpg"))[0]
    Image.open(original).save(folder / "test" / "mel" / "resaved.jpg", quality=85)  # other bytes, the same picture
    done = medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet", "--n-boot", "50", *QUICK)
    assert done.returncode == 0, done.stderr
    close = results(tmp_path / "o")["near_duplicates"]
    # the floor, or what this encoder makes typical of near train pairs when that is closer (train_nn_p99)
    assert close["count"] >= 1 and close["floor"] == 0.95 and close["threshold"] == max(0.95, close["train_nn_p99"])
    assert {"test": "test/mel/resaved.jpg", "train": f"train/mel/{original.name}"} == {k: close["examples"][0][k] for k in ("test", "train")}
    assert results(tmp_path / "o")["dataset"]["duplicates"]["identical_groups"] == 0  # not byte-identical: only the embedding sees it
    assert "near-duplicates:" in done.stdout and "resaved.jpg" in done.stderr
    assert medprobe("report", tmp_path / "o").returncode == 0
    assert "near-duplicates</b>: " in (tmp_path / "o" / "report.html").read_text()


def test_seeds_scan_once_and_each_seed_is_its_own_grouped_split(tmp_path, ham_subset, medprobe, monkeypatch):
    # `--resplit --seeds 2` draws two different lesion-grouped splits from one scan of the images; each seed's run is
    # exactly what a single run with that split seed gives.
    import medprobe.data.datasets as datasets
    from medprobe.data.datasets import DataSpec
    from medprobe.embedding.options import EmbedOptions
    from medprobe.probes.spec import ProbeSpec
    from medprobe.workflows.run import EvalOptions, run

    root, metadata = ham_subset
    scans = []
    real_scan = datasets.scan_images
    monkeypatch.setattr(datasets, "scan_images", lambda *a, **k: scans.append(1) or real_scan(*a, **k))
    done = medprobe("run", "--dataset", root, "--metadata", metadata, "--group", "lesion_id", "--resplit", "--seeds", "2",
                    "--out", tmp_path / "seeds", "--quiet", "--n-boot", "50", "--encoder", "efficientnet_lite0")
    assert done.returncode == 0, done.stderr
    assert len(scans) == 1
    repeats = results(tmp_path / "seeds")["repeats"]
    assert repeats["distinct"]["test_sets"] == 2 and repeats["spread_is"] == "sampling and method variance"
    spec = DataSpec(str(root), metadata=str(metadata), group="lesion_id", resplit=True, split_seed=1)
    alone = run(spec, EmbedOptions("efficientnet_lite0", progress=False), ProbeSpec(seed=1), EvalOptions(n_boot=50))
    assert alone.metrics["test"]["auc"] == repeats["per_seed"][1]["test"]["auc"]
    assert alone.dataset["groups"]["straddling_groups"] == 0 and alone.dataset["made_splits"]["test"]["seed"] == 1


# --- a hand-edited predictions.csv (issue 27): one line naming the file, line and column; never a traceback ------------


@pytest.fixture(scope="module")
def two_runs(retina_pngs, tmp_path_factory):
    """Two runs (logreg, knn) on the same 40 real RetinaMNIST images: what `compare` and `report` read."""
    root = tmp_path_factory.mktemp("two_runs")
    manifest = write_manifest(root / "m.csv", binary_rows(retina_pngs, 40))
    fast = ("--encoder", "efficientnet_lite0", "--selection", "val", "--n-boot", "200", "--quiet", "--cache-dir", root / "cache")
    for probe in ("logreg", "knn"):
        assert run_main("run", "--dataset", manifest, "--probe", probe, "--out", root / probe, *fast) == 0
    return root / "logreg", root / "knn"


def edit_predictions(folder, edit, checksum="recomputed"):
    """Edit predictions.csv line 2 (the first row); `recomputed`: the checksum in results.json follows, as a careful editor's."""
    import hashlib

    path = folder / "predictions.csv"
    lines = path.read_text().splitlines()
    lines = edit(lines)
    path.write_text("\n".join(lines) + "\n")
    if checksum == "recomputed":
        record = results(folder)
        record["files"]["predictions.csv"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (folder / "results.json").write_text(json.dumps(record, indent=1))
    return path


def cell(column, value):
    """An edit that sets one cell of the first row."""
    def edit(lines):
        header, row = lines[0].split(","), lines[1].split(",")
        row[header.index(column)] = value
        return [lines[0], ",".join(row), *lines[2:]]
    return edit


@pytest.mark.parametrize("edit, where", [
    (cell("score_healthy", "nan"), "line 2, column score_healthy: 'nan' is not a probability (a number from 0 to 1)"),
    (cell("score_healthy", "inf"), "line 2, column score_healthy: 'inf' is not a probability (a number from 0 to 1)"),
    (cell("score_disease", "abc"), "line 2, column score_disease: 'abc' is not a probability (a number from 0 to 1)"),
    (cell("score_disease", "1.5"), "line 2, column score_disease: '1.5' is not a probability (a number from 0 to 1)"),
    (cell("label", "7"), "line 2, column label: '7' is not a class index from 0 to 1"),
    (cell("label", ""), "line 2, column label: '' is not a class index from 0 to 1"),
    (lambda lines: [lines[0], lines[1].rsplit(",", 1)[0], *lines[2:]], "line 2: 3 field(s), the header has 4"),
    (lambda lines: [lines[0].replace("score_healthy", "score_normal"), *lines[1:]],
     "the header must be id,label,score_disease,score_healthy (the run's label names), got 'id,label,score_disease,score_normal'"),
    (lambda lines: ["\x85" + lines[0].removeprefix("id"), *lines[1:]],  # a line break to Python's splitlines: quoted, one line
     "the header must be id,label,score_disease,score_healthy (the run's label names), got '\\x85,label,score_disease,score_healthy'"),
])
def test_a_hand_edited_predictions_file_is_refused_by_line_and_column(tmp_path, two_runs, medprobe, edit, where):
    edited = tmp_path / "edited"
    shutil.copytree(two_runs[0], edited)
    path = edit_predictions(edited, edit)
    expected = f"medprobe: error: {path}{', ' if where.startswith('line') else ': '}{where}; the file was edited after the run: restore it or rerun"
    for done in (medprobe("compare", edited, two_runs[1]), medprobe("compare", two_runs[1], edited), medprobe("report", edited)):
        assert done.returncode == 2 and done.stderr.strip() == expected


def test_an_edited_predictions_file_with_a_stale_checksum_is_said_to_be_changed_after_the_run(tmp_path, two_runs, medprobe):
    edited = tmp_path / "edited"
    shutil.copytree(two_runs[0], edited)
    path = edit_predictions(edited, cell("score_healthy", "0.5"), checksum="stale")
    done = medprobe("compare", edited, two_runs[1])
    assert done.returncode == 2 and done.stderr.startswith(f"medprobe: error: {path} does not belong to {edited / 'results.json'}: "
                                                           "it was changed after that run (its checksum differs")


def test_an_untouched_pair_of_runs_still_compares_and_reports(two_runs, medprobe):
    done = medprobe("compare", *two_runs)
    assert done.returncode == 0, done.stderr
    assert medprobe("report", two_runs[0], "--out", two_runs[0].parent / "r.html").returncode == 0


# --- the right words (issue 27) --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ham_files(shared_data):
    """Real HAM10000 JPEGs by split and class (paths only; each test copies or lists what it needs)."""
    source = shared_data / "ham10000_melnv"
    return {(split, label): sorted((source / split / label).glob("*.jpg")) for split in ("train", "test") for label in ("mel", "nv")}


def ham_manifest(path, ham_files, n_train, n_test=2, group=None):
    """train rows: n_train[label] images of each label; test rows: n_test of each; `group(label, i)` fills a lesion column."""
    rows = []
    for split, counts in (("train", n_train), ("test", {"mel": n_test, "nv": n_test})):
        for label, n in counts.items():
            for i, image in enumerate(ham_files[(split, label)][:n]):
                rows.append((str(image), label, split) + ((group(label, i) if split == "train" else f"{split}{label}{i}",) if group else ()))
    return write_manifest(path, rows, ("path", "label", "split") + (("lesion",) if group else ()))


def test_val_drawn_out_of_train_rows_of_both_classes_keeps_both_in_train(tmp_path, ham_files):
    from medprobe.data.datasets import load_dataset

    # 5 'mel' and 1 'nv' train rows: the plain draw for val took the one 'nv', and the run was refused as
    # "the train split has a single class (mel)" though the user's train rows hold both.
    data = load_dataset(ham_manifest(tmp_path / "m.csv", ham_files, {"mel": 5, "nv": 1}))
    assert sorted(set(data.labels[data.indices("train")].tolist())) == [0, 1]
    assert len(data.indices("val")) == 1 and data.info["made_splits"]["val"]["method"].startswith("random, one image of each class kept")


def test_a_grouped_draw_that_takes_a_class_whole_says_so(tmp_path, ham_files):
    from medprobe.core.errors import DatasetError
    from medprobe.data.datasets import DataSpec

    # Two lesions, one per class: val drawn by whole lesions takes a class whole, whatever the seed.
    manifest = ham_manifest(tmp_path / "m.csv", ham_files, {"mel": 4, "nv": 4}, group=lambda label, i: f"lesion_{label}")
    with pytest.raises(DatasetError) as raised:
        DataSpec(str(manifest), group="lesion").load()
    message = str(raised.value)
    assert message.startswith("m: the train rows hold two or more classes, but drawing val out of them (whole groups (lesion), ")
    assert "left only" in message and "give each image's split (a split column or split/class/ folders)" in message


@pytest.fixture(scope="module")
def ham_model(ham_files, tmp_path_factory):
    """A probe fitted on 16 real HAM10000 images and saved."""
    root = tmp_path_factory.mktemp("ham_model")
    for label in ("mel", "nv"):
        (root / "data" / label).mkdir(parents=True)
        for image in ham_files[("train", label)][:8]:
            shutil.copy(image, root / "data" / label / image.name)
    assert run_main("fit", "--dataset", root / "data", "--save", root / "model", "--encoder", "efficientnet_lite0", "--selection", "val",
                    "--n-boot", "200", "--quiet", "--cache-dir", root / "cache") == 0
    return root / "model", root / "cache"


def test_evaluate_on_a_small_external_set_draws_no_split(tmp_path, ham_files, ham_model, medprobe):
    # Four images, two of each class: evaluate drew val and test out of them and refused "the train split has a
    # single class (mel)", though it trains nothing.
    model, cache = ham_model
    for label in ("mel", "nv"):
        (tmp_path / "ext" / label).mkdir(parents=True)
        for image in ham_files[("test", label)][:2]:
            shutil.copy(image, tmp_path / "ext" / label / image.name)
    done = medprobe("evaluate", model, "--dataset", tmp_path / "ext", "--out", tmp_path / "out", "--n-boot", "200", "--quiet",
                    "--cache-dir", cache)
    assert done.returncode == 0, done.stderr
    assert results(tmp_path / "out")["dataset"]["evaluated"]["rows"] == "all"
    shutil.rmtree(tmp_path / "ext" / "nv")
    done = medprobe("evaluate", model, "--dataset", tmp_path / "ext", "--out", tmp_path / "out2", "--n-boot", "200", "--quiet",
                    "--cache-dir", cache)
    assert done.returncode == 2 and "train" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "the model's classes 'nv' do not occur in ext" in done.stderr


def test_knn_chosen_by_cv_on_a_dozen_training_images_keeps_k_within_each_folds_rows():
    from medprobe.probes.fit import fit_probe

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 8)), np.arange(12) % 2
    fitted = fit_probe("knn", X, y, task="binary", selection="val")  # no val: k chosen by 5-fold CV on 12 rows (9 or 10 per fold)
    assert fitted.params["n_neighbors"] <= 9 and all(int(k) <= 9 for k in fitted.selection.scores)
