"""The validation study through the CLI and saved models, on tiny data: options refused before any work, decisions saved."""

import csv
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import QUICK, write_image_folder, write_npz
from medprobe.core.errors import ModelError
from medprobe.data.datasets import Dataset
from medprobe.data.sources import FileImages
from medprobe.encoders import get_config
from medprobe.encoders.transforms import make_transform
from medprobe.evaluation.study import StudyOptions, fit_decisions
from medprobe.probes.fit import fit_probe
from medprobe.probes.saved import CHECKSUM, MODEL_JSON, load_model, save_model


def _saved_with_decisions(tmp_path, calibrate="isotonic"):
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    X = rng.normal(size=(120, 8)) + y[:, None] * 0.7
    fitted = fit_probe("logreg", X[:80], y[:80], X[80:100], y[80:100], task="binary", selection="val")
    decisions = fit_decisions(y[80:100], fitted.predict_scores(X[80:100]), "binary", ["a", "b"],
                              StudyOptions(("youden", "specificity=0.9"), calibrate))
    data = Dataset("toy", "binary", ["a", "b"], np.arange(80).astype(str), np.array(["train"] * 80), y[:80], FileImages([]))
    config = get_config("efficientnet_lite0")
    folder = save_model(tmp_path / "model", fitted, data, SimpleNamespace(config=config), make_transform(config), "efficientnet_lite0",
                        decisions=decisions)
    return folder, decisions, fitted, X[100:]


def test_saved_model_carries_calibrator_and_thresholds(tmp_path):
    folder, decisions, fitted, X_new = _saved_with_decisions(tmp_path)
    model = load_model(folder)
    np.testing.assert_array_equal(model.predict_scores(X_new), decisions.apply(fitted.predict_scores(X_new)))
    assert model.decisions.thresholds == json.loads(json.dumps(decisions.thresholds))
    meta = json.loads((folder / MODEL_JSON).read_text())
    assert meta["decisions"]["calibrator"] == {"method": "isotonic", "scalars": {}, "arrays": ["x", "y"]}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["calibrator"].update(method="platt", scalars={"a": float("nan"), "b": 0.0}, arrays=[]), "non-finite"),
    (lambda d: d["calibrator"].update(method="temperature", scalars={"temperature": -2.0}, arrays=[]), "positive"),
    (lambda d: d["thresholds"]["youden"].update(cat={"threshold": 0.5}), "not among"),
    (lambda d: d["thresholds"]["youden"]["b"].update(threshold="high"), "finite number"),
])
def test_a_tampered_calibrator_or_threshold_is_refused_on_load(tmp_path, edit, message):
    folder, *_ = _saved_with_decisions(tmp_path)
    meta = json.loads((folder / MODEL_JSON).read_text())
    edit(meta["decisions"])
    text = (json.dumps(meta, indent=1) + "\n").encode()
    (folder / MODEL_JSON).write_bytes(text)
    (folder / CHECKSUM).write_text(f"{hashlib.sha256(text).hexdigest()}  {MODEL_JSON}\n")  # a deliberate edit, checksum redone
    with pytest.raises(ModelError, match=message):
        load_model(folder)


def test_study_options_are_refused_before_any_embedding(tmp_path, medprobe, monkeypatch):
    import medprobe.workflows.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("embedded before checking the options")

    monkeypatch.setattr(run_module, "embed_spec", refuse)
    npz = write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=6, classes=3)
    cases = [
        (["--operating-point", "youdn"], "operating point 'youdn' is not understood"),
        (["--calibrate", "platt"], "calibration 'platt' is for binary tasks"),
        (["--subgroup", "sex"], "no metadata column 'sex' for subgroups"),
        (["--age-bands", "60,20"], "increasing lower edges"),
    ]
    for extra, message in cases:
        done = medprobe("run", "--dataset", npz, "--out", tmp_path / "out", "--quiet", *extra)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr)


def test_fit_predict_decision_and_evaluate_on_a_small_folder(tmp_path, medprobe):
    write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=40, seed=1)
    with open(tmp_path / "meta.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "site"])
        for i, path in enumerate(sorted((tmp_path / "imgs").rglob("*.png"))):
            writer.writerow([path.stem, "north" if i % 2 else "south"])
    done = medprobe("fit", "--dataset", tmp_path / "imgs", "--metadata", tmp_path / "meta.csv", "--save", tmp_path / "model",
                    "--out", tmp_path / "run", "--operating-point", "youden", "--operating-point", "sensitivity=0.9",
                    "--positive", "a", "--calibrate", "platt", "--subgroup", "site", "--n-boot", "50", "--quiet", *QUICK)
    assert done.returncode == 0, done.stderr
    assert "operating points" in done.stdout and "after platt" in done.stdout and "subgroups by site" in done.stdout
    test = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]["test"]
    assert set(test["operating_points"]["points"]) == {"youden", "sensitivity>=0.9"}
    assert list(test["operating_points"]["points"]["youden"]) == ["a"]  # --positive a: thresholds on class a's score
    assert test["calibration"]["method"] == "platt" and {g["group"] for g in test["subgroups"]["site"]["groups"]} == {"north", "south"}

    # predict: calibrated probabilities and the decision at the saved Youden threshold of class a.
    done = medprobe("predict", tmp_path / "model", tmp_path / "imgs", "--decision", "youden", "--out", tmp_path / "p.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    threshold = test["operating_points"]["points"]["youden"]["a"]["threshold"]
    assert all(r["decision"] == ("a" if float(r["p_a"]) >= threshold else "b") for r in rows)
    done = medprobe("predict", tmp_path / "model", tmp_path / "imgs", "--decision", "specificity=0.8", "--out", tmp_path / "q.csv")
    assert done.returncode == 2 and "no saved operating point 'specificity>=0.8'" in done.stderr

    # evaluate on the same folder (every row): the saved thresholds, not new ones; labels matched by name.
    done = medprobe("evaluate", tmp_path / "model", "--dataset", tmp_path / "imgs", "--out", tmp_path / "ev", "--n-boot", "50", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["external"]["rows"] == "all" and result["metrics"]["test"]["n"] == 80
    assert result["metrics"]["test"]["operating_points"]["points"]["youden"]["a"]["threshold"] == threshold

    # A dataset whose classes differ is refused by name, before any embedding.
    write_image_folder(tmp_path / "other", classes=("a", "c"), per_class=6)
    done = medprobe("evaluate", tmp_path / "model", "--dataset", tmp_path / "other", "--out", tmp_path / "ev2")
    assert done.returncode == 2 and "classes the model does not know: 'c'" in done.stderr and "'b' do not occur" in done.stderr
