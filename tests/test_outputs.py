"""Where results go is checked before any work, a run's files never mix, and a read-only cache is not fatal."""

import json
import os

import pytest

from conftest import QUICK, write_npz
from medprobe.cli import main


@pytest.fixture
def tiny(tmp_path):
    return write_npz(tmp_path / "tiny.npz", n_train=24, n_val=8, n_test=12, classes=2)


def test_out_that_is_a_file_stops_before_any_work(tmp_path, tiny, medprobe):
    (tmp_path / "taken").write_text("not a folder")
    done = medprobe("run", "--dataset", tiny, "--out", tmp_path / "taken", "--quiet", "--cache-dir", tmp_path / "cache")
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()  # nothing was embedded


def test_predict_out_that_is_a_folder_stops_before_any_work(tmp_path, tiny, medprobe):
    assert main(["fit", "--dataset", str(tiny), "--save", str(tmp_path / "m"), "--quiet", "--n-boot", "50", *QUICK]) == 0
    (tmp_path / "preds").mkdir()
    done = medprobe("predict", tmp_path / "m", tmp_path / "tiny.npz", "--out", tmp_path / "preds")
    assert done.returncode == 2 and "is a folder; give a file name" in done.stderr


def test_an_unwritable_out_folder_is_refused_up_front(tmp_path, tiny, monkeypatch):
    # Root ignores permission bits, so the refusal is exercised through the same os.access the check uses.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).startswith(str(tmp_path / "locked")) else real_access(path, mode))
    (tmp_path / "locked").mkdir()
    assert main(["run", "--dataset", str(tiny), "--out", str(tmp_path / "locked" / "run"), "--quiet"]) == 2


def test_a_cache_that_cannot_be_written_is_used_without_writing(tmp_path, tiny, medprobe):
    (tmp_path / "cachefile").write_text("MEDPROBE_CACHE points at a file")
    done = medprobe("run", "--dataset", tiny, "--out", tmp_path / "o", "--quiet", "--n-boot", "50", *QUICK, env={"MEDPROBE_CACHE": str(tmp_path / "cachefile")})
    assert done.returncode == 0, done.stderr
    assert "is not writable (or not a folder); embedding without saving" in done.stderr
    assert json.loads((tmp_path / "o" / "results.json").read_text())["cache"]["path"] == ""


def test_the_report_refuses_a_folder_that_mixes_two_runs(tmp_path, tiny, medprobe):
    for probe, out in (("logreg", "a"), ("knn", "b")):
        assert main(["run", "--dataset", str(tiny), "--probe", probe, "--out", str(tmp_path / out), "--quiet", "--n-boot", "50", *QUICK]) == 0
    # As after a kill between the two files: b's predictions beside a's results.json.
    (tmp_path / "a" / "predictions.csv").write_bytes((tmp_path / "b" / "predictions.csv").read_bytes())
    done = medprobe("report", tmp_path / "a")
    assert done.returncode == 2 and "predictions.csv does not belong to" in done.stderr and "mixes two runs" in done.stderr
    assert medprobe("report", tmp_path / "b").returncode == 0


def test_a_file_name_that_is_not_utf8_does_not_lose_the_run(tmp_path, medprobe):
    import shutil

    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "imgs", per_class=10)
    odd = os.fsencode(folder / "a") + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    shutil.move(folder / "a" / "a_0.png", os.fsdecode(odd))
    done = medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet", "--n-boot", "50", "--on-error", "skip", *QUICK)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "o" / "predictions.csv").read_text(encoding="utf-8") + (tmp_path / "o" / "results.json").read_text(encoding="utf-8")
    assert "Traceback" not in done.stderr and written
