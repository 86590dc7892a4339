"""Zero-shot: the estimator's contract, prompt files, and `--probe zeroshot` end to end with a tiny CLIP."""

import json
import shutil

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest import write_npz
from medprobe.core.errors import ProbeError
from medprobe.encoders import get_config
from medprobe.probes.zeroshot import ZeroShotClassifier, class_embeddings, match_classes, read_prompts
from tiny_models import go_offline, write_tiny


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    go_offline(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot-models")
    for name in ("clip_vit_b32", "biomedclip"):
        write_tiny(get_config(name), root / name)
    return root


# --- the estimator ---------------------------------------------------------------------------


def test_classifier_is_a_softmax_over_scaled_cosines():
    classes = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    X = np.array([[3.0, 0.1], [0.0, 5.0], [-2.0, -2.5]])
    clf = ZeroShotClassifier(classes, logit_scale=10.0).fit(X)
    assert clf.fit(X) is clf and list(clf.classes_) == [0, 1, 2] and clf.n_features_in_ == 2
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(clf.predict(X)) == [0, 1, 2] and list(proba.argmax(axis=1)) == [0, 1, 2]
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected = 10.0 * unit @ (classes / np.linalg.norm(classes, axis=1, keepdims=True)).T
    np.testing.assert_allclose(clf.decision_function(X), expected)
    # scale-invariant in the image vectors: cosine similarity
    np.testing.assert_allclose(clf.predict_proba(7 * X), proba)


def test_classifier_follows_the_sklearn_contract():
    classes = np.eye(3)
    clf = ZeroShotClassifier(classes, logit_scale=50.0, classes=["a", "b", "c"])
    assert clone(clf).get_params()["logit_scale"] == 50.0
    X = np.eye(3) + 0.01
    pipeline = make_pipeline(FunctionTransformer(), clf).fit(X, ["a", "b", "c"])
    assert list(pipeline.predict(X)) == ["a", "b", "c"]
    assert clf.score(X, ["a", "b", "c"]) == 1.0
    with pytest.raises(ProbeError, match="3-d but class embeddings 2-d"):
        ZeroShotClassifier(np.eye(2)).fit(X)
    with pytest.raises(ProbeError, match="no class embedding"):
        ZeroShotClassifier(classes).fit(X, [0, 1, 5])


# --- prompt files ----------------------------------------------------------------------------


def test_prompts_from_yaml_and_json(tmp_path):
    (tmp_path / "p.yaml").write_text("normal:\n  - a normal chest x ray\n  - healthy lungs\npneumonia: a chest x ray with pneumonia\n")
    (tmp_path / "p.json").write_text(json.dumps({"normal": ["a normal chest x ray", "healthy lungs"], "pneumonia": ["a chest x ray with pneumonia"]}))
    expected = {"normal": ["a normal chest x ray", "healthy lungs"], "pneumonia": ["a chest x ray with pneumonia"]}
    assert read_prompts(tmp_path / "p.yaml") == expected == read_prompts(tmp_path / "p.json")


@pytest.mark.parametrize(
    "text, message",
    [("[1, 2]", "mapping"), ("a: []", "non-empty"), ("a: [1]", "non-empty"), ("a: [unclosed", "not valid YAML")],
)
def test_bad_prompt_files(tmp_path, text, message):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ProbeError, match=message):
        read_prompts(tmp_path / "p.yaml")


def test_missing_prompt_file():
    with pytest.raises(ProbeError, match="needs --prompts"):
        read_prompts(None)
    with pytest.raises(ProbeError, match="cannot read"):
        read_prompts("/nonexistent/prompts.yaml")


def test_prompt_classes_must_match_the_dataset():
    prompts = {"normal": ["x"], "pneumonai": ["y"]}
    with pytest.raises(ProbeError, match=r"no prompts for class 'pneumonia'.*'pneumonai' \(did you mean 'pneumonia'\?\)"):
        match_classes(prompts, ["normal", "pneumonia"])
    assert list(match_classes({"b": ["y"], "a": ["x"]}, ["a", "b"])) == ["a", "b"]  # label order, not file order


# --- with a tiny CLIP ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip_vit_b32", "biomedclip"])
def test_text_tower_gives_unit_class_vectors(name, tiny_clips):
    from medprobe.encoders import create_encoder

    encoder, _ = create_encoder(name, weights=tiny_clips / name)
    texts = encoder.embed_text(["a chest x ray", "a normal retina"])
    assert texts.shape == (2, encoder.config.embed_dim) and texts.dtype == np.float32
    np.testing.assert_array_equal(texts, encoder.embed_text(["a chest x ray", "a normal retina"]))
    vectors = class_embeddings(encoder, {"a": ["a chest x ray", "a scan"], "b": ["a normal retina"]})
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert encoder.logit_scale > 1.0  # open_clip initialises it at 1 / 0.07


def test_zeroshot_run_end_to_end(tmp_path, tiny_clips, capsys):
    from medprobe.cli import main

    shutil.copytree(tiny_clips, tmp_path / "models")
    npz = write_npz(tmp_path / "tiny.npz", n_train=6, n_val=6, n_test=12, classes=3)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("'0': [a dark image, a black photo]\n'1': [a grey image]\n'2': [a bright image, a white photo]\n")
    out = tmp_path / "run"
    args = ["run", "--dataset", str(npz), "--encoder", "clip_vit_b32", "--probe", "zeroshot", "--prompts", str(prompts)]
    assert main([*args, "--out", str(out), "--quiet", "--n-boot", "50"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["probe"]["name"] == "zeroshot"
    assert results["probe"]["prompts"] == {"0": ["a dark image", "a black photo"], "1": ["a grey image"], "2": ["a bright image", "a white photo"]}
    assert results["probe"]["params"]["prompts_file"] == str(prompts)
    assert "no training" in results["probe"]["selection"]["criterion"]
    test = results["metrics"]["test"]
    assert 0.0 <= test["auc"] <= 1.0 and len(test["auc_ci"]) == 2 and test["n"] == 12
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("id,label,score_0,score_1,score_2") and len(rows) == 13
    # the same prompts against an @pre encoder cannot work: different space
    assert main([*args, "--encoder", "clip_vit_b32@pre", "--out", str(tmp_path / "pre"), "--quiet"]) == 2
    assert "after the projection" in capsys.readouterr().err


def test_zeroshot_needs_a_text_tower(tmp_path, capsys):
    from medprobe.cli import main

    npz = write_npz(tmp_path / "tiny.npz", n_train=6, n_val=4, n_test=6, classes=2)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"0": ["a"], "1": ["b"]}))
    lite = ["run", "--dataset", str(npz), "--encoder", "efficientnet_lite0", "--probe", "zeroshot", "--prompts", str(prompts), "--quiet"]
    assert main([*lite, "--out", str(tmp_path / "run")]) == 2
    assert "no text tower" in capsys.readouterr().err
    assert main(["run", "--dataset", str(npz), "--probe", "zeroshot", "--quiet", "--out", str(tmp_path / "r2")]) == 2
    assert "needs --prompts" in capsys.readouterr().err
