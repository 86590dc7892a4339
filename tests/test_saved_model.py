"""Saved probes: exact round trips for every probe and task, and refusal of anything tampered with."""

import hashlib
import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from medprobe.core.errors import ModelError
from medprobe.data.datasets import Dataset
from medprobe.data.sources import FileImages
from medprobe.encoders import get_config
from medprobe.encoders.transforms import make_transform
from medprobe.probes.fit import fit_probe
from medprobe.probes.saved import ARRAYS, CHECKSUM, MODEL_JSON, load_model, save_model

ENCODER = "efficientnet_lite0"


def toy_data(task, n=90, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, dim)) + y[:, None] * 0.8
    if task == "binary":
        y = (y > 0).astype(np.int64)
    if task == "multi-label":
        y = np.stack([y == 0, y >= 1, (np.arange(n) % 2) == 0], axis=1).astype(np.int64)
    return X, y


def saved(tmp_path, probe="logreg", task="multi-class"):
    X, y = toy_data(task)
    fitted = fit_probe(probe, X[:60], y[:60], X[60:75], y[60:75], task=task, selection="val")
    names = ["a", "b"] if task == "binary" else ["a", "b", "c"]
    data = Dataset("toy", task, names, np.arange(60).astype(str), np.array(["train"] * 60), y[:60], FileImages([]))
    config = get_config(ENCODER)
    folder = save_model(tmp_path / "model", fitted, data, SimpleNamespace(config=config), make_transform(config), ENCODER)
    return folder, fitted, X[75:]


@pytest.mark.parametrize("task", ["binary", "multi-class", "multi-label"])
@pytest.mark.parametrize("probe", ["logreg", "svm", "knn"])
def test_round_trip_gives_identical_probabilities(tmp_path, probe, task):
    folder, fitted, X_new = saved(tmp_path, probe, task)
    model = load_model(folder)
    assert isinstance(model.probe.estimator, Pipeline)
    np.testing.assert_array_equal(model.probe.predict_scores(X_new), fitted.predict_scores(X_new))
    assert model.probe.params == fitted.params and model.task == task and model.encoder_name == ENCODER


def test_the_saved_folder_says_what_it_is(tmp_path):
    folder, _, _ = saved(tmp_path)
    meta = json.loads((folder / MODEL_JSON).read_text())
    assert meta["encoder"]["config"]["name"] == ENCODER and meta["preprocessing"]["input_size"] == 224
    assert meta["label_names"] == ["a", "b", "c"] and meta["task"] == "multi-class" and meta["medprobe"]
    assert meta["arrays"]["sha256"] == hashlib.sha256((folder / ARRAYS).read_bytes()).hexdigest()
    assert (folder / CHECKSUM).read_text().split()[0] == hashlib.sha256((folder / MODEL_JSON).read_bytes()).hexdigest()


def test_loading_never_unpickles(tmp_path, monkeypatch):
    folder, fitted, X_new = saved(tmp_path, "svm")

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle or np.load used while loading a model")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    np.testing.assert_array_equal(load_model(folder).probe.predict_scores(X_new), fitted.predict_scores(X_new))


def test_a_tampered_arrays_file_is_refused(tmp_path):
    folder, _, _ = saved(tmp_path)
    blob = bytearray((folder / ARRAYS).read_bytes())
    blob[-5] ^= 0x01  # one bit of one coefficient
    (folder / ARRAYS).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="arrays.safetensors does not match the checksum"):
        load_model(folder)


def test_a_tampered_model_json_is_refused(tmp_path):
    folder, _, _ = saved(tmp_path)
    text = (folder / MODEL_JSON).read_text().replace('"a"', '"benign"', 1)
    (folder / MODEL_JSON).write_text(text)
    with pytest.raises(ModelError, match="model.json does not match its checksum"):
        load_model(folder)


def rewrite(folder, edit):
    """Edit model.json and re-sign it, as someone who knows the format would."""
    meta = json.loads((folder / MODEL_JSON).read_text())
    edit(meta)
    text = json.dumps(meta).encode()
    (folder / MODEL_JSON).write_bytes(text)
    (folder / CHECKSUM).write_text(hashlib.sha256(text).hexdigest())


def test_an_encoder_config_that_differs_from_the_registry_is_refused(tmp_path):
    folder, _, _ = saved(tmp_path)
    rewrite(folder, lambda meta: meta["encoder"]["config"].update(input_size=256))
    with pytest.raises(ModelError, match=r"config differs.*input_size: saved 256, now 224"):
        load_model(folder)


def test_an_encoder_this_installation_lacks_is_refused(tmp_path):
    folder, _, _ = saved(tmp_path)
    rewrite(folder, lambda meta: meta["encoder"].update(name="openai/clip-vit-l14"))
    with pytest.raises(ModelError, match="which this installation does not provide"):
        load_model(folder)


def test_preprocessing_that_differs_is_refused(tmp_path):
    folder, _, _ = saved(tmp_path)
    rewrite(folder, lambda meta: meta["preprocessing"].update(interpolation="nearest"))
    with pytest.raises(ModelError, match="preprocessing differs"):
        load_model(folder)


def test_untrusted_types_and_private_attributes_are_refused(tmp_path):
    folder, _, _ = saved(tmp_path)
    rewrite(folder, lambda meta: meta["estimator"].update({"$object": "Popen"}))
    with pytest.raises(ModelError, match="refusing to load type 'Popen'"):
        load_model(folder)
    folder, _, _ = saved(tmp_path / "again")

    def add_dunder(meta):
        steps = dict((k, v) for k, v in meta["estimator"]["params"]["$dict"])["steps"]
        step = steps["$list"][0]["$tuple"][1]
        step["state"]["$dict"].append(["__class__", "x"])

    rewrite(folder, add_dunder)
    with pytest.raises(ModelError, match="refusing attribute '__class__'"):
        load_model(folder)


def test_a_missing_folder_says_how_models_are_made(tmp_path, medprobe):
    # The library says what is missing; the command that makes it is added by the CLI.
    with pytest.raises(ModelError, match="nothing/model.json not found") as raised:
        load_model(tmp_path / "nothing")
    assert "medprobe" not in str(raised.value) and raised.value.command == f"medprobe fit --save {tmp_path / 'nothing'}"
    done = medprobe("predict", tmp_path / "nothing", tmp_path, "--out", tmp_path / "p.csv")
    assert done.returncode == 2 and f"make it with `medprobe fit --save {tmp_path / 'nothing'}`" in done.stderr


def replace_array(folder, find, new):
    """Swap one array in arrays.safetensors and re-sign both checksums, as someone crafting a file would."""
    from safetensors.numpy import load, save

    meta = json.loads((folder / MODEL_JSON).read_text())
    arrays = load((folder / ARRAYS).read_bytes())
    arrays[find(meta["estimator"])] = new
    blob = save(arrays)
    (folder / ARRAYS).write_bytes(blob)
    rewrite(folder, lambda m: m["arrays"].update(sha256=hashlib.sha256(blob).hexdigest()))


def knn_vectors_key(tree):
    steps = dict((k, v) for k, v in tree["params"]["$dict"])["steps"]
    knn = steps["$list"][-1]["$tuple"][1]
    return dict((k, v) for k, v in knn["fit"]["$dict"])["X"]["$array"]


def test_a_crafted_knn_goes_through_sklearns_own_validation(tmp_path):
    # skops.io restores KNeighborsClassifier._fit_X as it finds it: an empty one crashed predict (SIGFPE) and a
    # narrow one read past its end (segfault). Here the vectors are refitted, so sklearn checks them first.
    folder, _, X_new = saved(tmp_path, "knn")
    replace_array(folder, knn_vectors_key, np.zeros((0, X_new.shape[1])))
    with pytest.raises(ModelError, match=r"model.json: the estimator description is malformed \(ValueError: Found array with 0 sample"):
        load_model(folder)
    folder, _, X_new = saved(tmp_path / "again", "knn")
    replace_array(folder, knn_vectors_key, np.ones((60, 1)))
    with pytest.raises(ModelError, match="cannot score a 12-d embedding .*expecting 1 features"):
        load_model(folder)


def test_malformed_descriptions_are_one_line_model_errors(tmp_path):
    folder, _, _ = saved(tmp_path)
    text = b"[" * 100_000 + b"]" * 100_000  # deeper than the JSON parser recurses
    (folder / MODEL_JSON).write_bytes(text)
    (folder / CHECKSUM).write_text(hashlib.sha256(text).hexdigest())
    with pytest.raises(ModelError, match="model.json: not valid JSON"):
        load_model(folder)
    folder, _, _ = saved(tmp_path / "other")
    rewrite(folder, lambda meta: meta.update(format_version=99))
    with pytest.raises(ModelError, match="not a medprobe saved probe of format version 1"):
        load_model(folder)


def test_another_sklearn_version_warns_and_a_changed_estimator_says_to_refit(tmp_path, caplog):
    folder, fitted, X_new = saved(tmp_path)
    rewrite(folder, lambda meta: meta.update(sklearn="0.0"))
    with caplog.at_level("WARNING", logger="medprobe.probes.saved"):
        model = load_model(folder)
    assert "saved with scikit-learn 0.0" in caplog.text
    np.testing.assert_array_equal(model.probe.predict_scores(X_new), fitted.predict_scores(X_new))

    def renamed_parameter(meta):  # what a newer scikit-learn that renamed a parameter would look like
        meta["estimator"]["params"]["$dict"].append(["steps_renamed", None])

    rewrite(folder, renamed_parameter)
    with pytest.raises(ModelError, match=r"unexpected keyword argument 'steps_renamed'.*saved with scikit-learn 0.0 and this is .*, so refit it"):
        load_model(folder)


# --- a deliberate edit (checksums rewritten to match) is caught by what the content means -------------------


def _rewrite(folder, edit_meta=None, edit_arrays=None):
    """Edit a saved model as someone who also fixes up the checksums would."""
    import hashlib

    from safetensors.numpy import load, save

    meta = json.loads((folder / MODEL_JSON).read_text())
    if edit_arrays:
        arrays = dict(load((folder / ARRAYS).read_bytes()))
        edit_arrays(arrays)
        blob = save(arrays)
        (folder / ARRAYS).write_bytes(blob)
        meta["arrays"]["sha256"] = hashlib.sha256(blob).hexdigest()
    if edit_meta:
        edit_meta(meta)
    text = (json.dumps(meta, indent=1) + "\n").encode()
    (folder / MODEL_JSON).write_bytes(text)
    (folder / CHECKSUM).write_text(f"{hashlib.sha256(text).hexdigest()}  {MODEL_JSON}\n")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(task="regression"), "task 'regression' is not one medprobe fits"),
        (lambda m: m.update(label_names=["only"]), "needs two or more classes"),
        (lambda m: m.update(label_names=["a", "b", "c", "d"]), "gives 3 scores per image for 4 labels"),
    ],
)
def test_a_hand_edited_model_is_refused_by_what_it_says(tmp_path, edit, message):
    folder, _, _ = saved(tmp_path)
    _rewrite(folder, edit_meta=edit)
    with pytest.raises(ModelError, match=message):
        load_model(folder, check_encoder=False)


def test_arrays_of_the_wrong_shape_are_refused(tmp_path):
    folder, _, _ = saved(tmp_path)

    def shrink(arrays):
        key = max(arrays, key=lambda k: arrays[k].size)  # the coefficients
        arrays[key] = np.ascontiguousarray(arrays[key][..., :7])

    _rewrite(folder, edit_arrays=shrink)
    with pytest.raises(ModelError, match=r"LogisticRegression has 3 classes, so its coefficients must be \(3, 12\).*got \(3, 7\)"):
        load_model(folder, check_encoder=False)


def test_saving_over_a_model_keeps_it_until_the_new_one_is_complete(tmp_path, monkeypatch):
    from medprobe.probes import saved as saved_module

    folder, _, _ = saved(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    calls = []
    real_write = saved_module.atomic_write_bytes

    def disk_full_on_the_second_file(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(saved_module, "atomic_write_bytes", disk_full_on_the_second_file)
    with pytest.raises(OSError):
        saved(tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert load_model(folder, check_encoder=False).label_names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-built folder left behind


# --- numbers no probe fits: refused at load, never NaN with exit 0 (issue 27) -----------------------------------------


def array_used_as(folder, use):
    """The arrays-file key of e.g. 'LogisticRegression.coef_', found in the estimator tree of model.json."""
    def walk(node, owner):
        if isinstance(node, dict):
            owner = node.get("$object", owner)
            for name, value in node.get("$dict", []):
                if isinstance(value, dict) and "$array" in value and f"{owner}.{name}" == use:
                    yield value["$array"]
            for value in node.values():
                yield from walk(value, owner)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value, owner)

    return next(walk(json.loads((folder / MODEL_JSON).read_text())["estimator"], None))


@pytest.mark.parametrize("use", ["LogisticRegression.coef_", "LogisticRegression.intercept_", "StandardScaler.scale_"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_learned_number_is_refused_by_name(tmp_path, use, bad):
    folder, _, _ = saved(tmp_path, task="binary")
    key = array_used_as(folder, use)

    def poison(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key].reshape(-1)[0] = bad

    _rewrite(folder, edit_arrays=poison)
    with pytest.raises(ModelError, match=rf"arrays.safetensors: array {key} \({use}\) holds 1 NaN or infinite value\(s\); refit the model"):
        load_model(folder)


def test_a_binary_logistic_regression_with_two_coefficient_rows_is_refused(tmp_path):
    # It loaded and answered 0.5 for every image: scikit-learn reads a binary model's (2, D) coefficients its own way.
    folder, _, _ = saved(tmp_path, task="binary")
    coef, intercept = array_used_as(folder, "LogisticRegression.coef_"), array_used_as(folder, "LogisticRegression.intercept_")

    def two_rows(arrays):
        arrays[coef] = np.concatenate([arrays[coef], arrays[coef]])
        arrays[intercept] = np.concatenate([arrays[intercept], arrays[intercept]])

    _rewrite(folder, edit_arrays=two_rows)
    with pytest.raises(ModelError, match=r"LogisticRegression has 2 classes, so its coefficients must be \(1, 12\) and its intercept \(1,\), "
                                         r"got \(2, 12\) and \(2,\); refit the model"):
        load_model(folder)


def test_a_nan_calibrator_is_refused(tmp_path):
    from medprobe.evaluation.study import StudyOptions, fit_decisions

    X, y = toy_data("binary")
    fitted = fit_probe("logreg", X[:60], y[:60], X[60:75], y[60:75], task="binary", selection="val")
    decisions = fit_decisions(y[60:90], fitted.predict_scores(X[60:90]), "binary", ["a", "b"], StudyOptions(calibrate="isotonic"))
    data = Dataset("toy", "binary", ["a", "b"], np.arange(60).astype(str), np.array(["train"] * 60), y[:60], FileImages([]))
    config = get_config(ENCODER)
    folder = save_model(tmp_path / "model", fitted, data, SimpleNamespace(config=config), make_transform(config), ENCODER, decisions=decisions)
    from safetensors.numpy import load

    key = next(k for k in load((folder / ARRAYS).read_bytes()) if k.startswith("calibrator."))

    def poison(arrays):
        arrays[key] = np.full_like(arrays[key], np.nan)

    _rewrite(folder, edit_arrays=poison)
    with pytest.raises(ModelError, match=rf"array {key} \(the calibrator\) holds \d+ NaN"):
        load_model(folder)


@pytest.fixture(scope="module")
def ham_images(shared_data, tmp_path_factory):
    """Four real HAM10000 images, two of each class, in class folders (a dataset for evaluate, a folder for predict)."""
    import shutil

    root = tmp_path_factory.mktemp("ham") / "ham4"
    for label in ("mel", "nv"):
        (root / label).mkdir(parents=True)
        for path in sorted((shared_data / "ham10000_melnv" / "test" / label).glob("*.jpg"))[:2]:
            shutil.copy(path, root / label / path.name)
    return root


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_a_nan_model_in_one_line(tmp_path, medprobe, ham_images, command):
    folder, _, _ = saved(tmp_path, task="binary")
    key = array_used_as(folder, "LogisticRegression.coef_")
    _rewrite(folder, edit_arrays=lambda arrays: arrays.update({key: np.full_like(arrays[key], np.nan)}))
    where = ("--dataset", ham_images) if command == "evaluate" else (ham_images,)
    done = medprobe(command, folder, *where, "--out", tmp_path / "out", "--quiet")
    assert done.returncode == 2 and done.stderr.strip() == (
        f"medprobe: error: {folder / ARRAYS}: array {key} (LogisticRegression.coef_) holds 12 NaN or infinite value(s); refit the model")
    assert not (tmp_path / "out").exists()
