"""Saved probes: exact round trips for every probe and task, and refusal of anything tampered with."""

import hashlib
import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from medprobe.data.datasets import Dataset
from medprobe.encoders import get_config
from medprobe.core.errors import ModelError
from medprobe.data.sources import FileImages
from medprobe.probes.fit import fit_probe
from medprobe.probes.saved import ARRAYS, CHECKSUM, MODEL_JSON, load_model, save_model
from medprobe.encoders.transforms import make_transform

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
    fitted = fit_probe(probe, X[:60], y[:60], X[60:75], y[60:75], task=task)
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


def test_a_missing_folder_says_how_models_are_made(tmp_path):
    with pytest.raises(ModelError, match="medprobe fit --save"):
        load_model(tmp_path / "nothing")
