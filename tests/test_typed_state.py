"""State has a type, not a shape: Selection, Timings and the held-out scores behind results.json's layout, and its version."""

import inspect
import json

import numpy as np
import pytest

from conftest import QUICK, write_npz
from medprobe.cli import main
from medprobe.core.costs import Timings
from medprobe.probes.fit import fit_probe
from medprobe.probes.selection import Selection
from medprobe.reporting.results import READABLE_SCHEMAS, SCHEMA_VERSION, read_result


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return rng.normal(size=(n, 8)) + y[:, None] * 0.8, y


@pytest.mark.parametrize("protocol", ["val", "cv"])
def test_both_protocols_give_one_type_that_round_trips_through_its_json(protocol):
    X, y = _blobs()
    Xv, yv = _blobs(40, seed=1)
    fitted = fit_probe("logreg", X, y, Xv, yv, task="binary", selection=protocol)
    selection = fitted.selection
    assert isinstance(selection, Selection) and selection.protocol == protocol
    assert Selection.from_json(json.loads(json.dumps(selection.to_json()))) == selection
    assert selection.fitted_on_val == (protocol == "cv") and selection.score() == max(v for v in selection.scores.values() if v is not None)
    held = fitted.held_out(np.vstack([X, Xv]), np.arange(120), np.arange(120, 160))
    if protocol == "val":  # fitted on train: val is held out, and its own scores decide
        assert held.where == "val" and np.array_equal(held.rows, np.arange(120, 160))
        np.testing.assert_array_equal(held.scores, fitted.predict_scores(Xv))
    else:  # fitted on train+val: the out-of-fold scores over both
        assert held.where == "out-of-fold scores over train+val" and len(held.rows) == 160 and held.scores is fitted.out_of_fold
    # Only the fields a protocol uses are written: val's JSON has no CV details
    assert ("folds" in selection.to_json()) == (protocol == "cv")


def test_timings_time_their_stages_and_leave_unknown_costs_unknown():
    timings = Timings()
    with timings.stage("fit"):
        sum(range(100_000))
    data = timings.finish().to_json()
    assert data["fit_s"] > 0 and data["total_s"] >= data["fit_s"] and data["embed_cost_cpu_s"] is None
    assert "ray_start_s" not in data and "ray_start_s" in Timings(ray_start_s=1.5).to_json()


def test_run_is_short_and_reads_as_its_steps():
    from medprobe.workflows import run

    body = inspect.getsource(run.run_here).split('"""')[2]  # after the docstring
    assert len(body.strip().splitlines()) < 50


def test_results_json_carries_its_schema_version_and_the_reader_names_what_it_reads(tmp_path, medprobe):
    tiny = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=8, n_test=12, classes=2)
    assert main(["run", "--dataset", str(tiny), "--out", str(tmp_path / "run"), "--quiet", "--n-boot", "50", *QUICK]) == 0
    path = tmp_path / "run" / "results.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and SCHEMA_VERSION in READABLE_SCHEMAS
    assert read_result(tmp_path / "run").probe["selection"]["protocol"] == "val"
    del data["schema_version"]  # written before it was recorded: version 1, same layout
    path.write_text(json.dumps(data))
    assert read_result(tmp_path / "run").dataset["task"] == "binary"
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    done = medprobe("report", tmp_path / "run")
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "results of schema_version 99" in done.stderr and "reads versions 1, 2" in done.stderr
