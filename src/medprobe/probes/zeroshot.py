"""Zero-shot classification with CLIP text prompts: no training, the same evaluation and results files.

The prompt file (YAML or JSON) maps every class name of the dataset to one prompt or a list:

    normal: ["a chest X-ray of healthy lungs", "a normal chest radiograph"]
    pneumonia: ["a chest X-ray showing pneumonia"]

Each class's prompts go through the CLIP text tower, are L2-normalised, averaged and normalised
again (CLIP's prompt ensembling). An image's class probabilities are the softmax of its cosine
similarities to those class vectors times the model's learned logit scale, so the image
embeddings must be the ones after CLIP's projection (the default; not `@pre`).
"""

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_array, check_is_fitted

from medprobe.core.errors import ProbeError
from medprobe.encoders import TextEncoder
from medprobe.probes.fit import FittedProbe
from medprobe.probes.selection import Selection


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier from fixed class embeddings; `fit` learns nothing, it checks and records `classes_`.

    >>> clf = ZeroShotClassifier(class_embeddings=text_vectors, logit_scale=100.0).fit(image_vectors)
    >>> clf.predict_proba(image_vectors).shape
    (n_images, n_classes)
    """

    def __init__(self, class_embeddings=None, logit_scale=100.0, classes=None):
        self.class_embeddings = class_embeddings
        self.logit_scale = logit_scale
        self.classes = classes

    def fit(self, X, y=None):
        X = check_array(X, dtype=np.float64)
        if self.class_embeddings is None:
            raise ProbeError("ZeroShotClassifier needs class_embeddings: one row per class, from the CLIP text tower")
        classes = np.asarray(self.class_embeddings, dtype=np.float64)
        if classes.ndim != 2 or len(classes) < 2:
            raise ProbeError(f"class_embeddings must be a (n_classes >= 2, dim) array, got shape {classes.shape}")
        if X.shape[1] != classes.shape[1]:
            raise ProbeError(
                f"image embeddings are {X.shape[1]}-d but class embeddings {classes.shape[1]}-d; zero-shot needs "
                "the same CLIP model's image features after the projection (not an @pre encoder)"
            )
        self.classes_ = np.asarray(self.classes) if self.classes is not None else np.arange(len(classes))
        if len(self.classes_) != len(classes):
            raise ProbeError(f"{len(self.classes_)} classes named but {len(classes)} class embeddings given")
        if y is not None:
            unknown = sorted(set(np.asarray(y).ravel().tolist()) - set(self.classes_.tolist()))
            if unknown:
                raise ProbeError(f"labels {unknown} have no class embedding (classes are {self.classes_.tolist()})")
        self.class_embeddings_ = classes / np.linalg.norm(classes, axis=1, keepdims=True)
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X):
        """Scaled cosine similarity of each image to each class."""
        check_is_fitted(self, "class_embeddings_")
        X = check_array(X, dtype=np.float64)
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return self.logit_scale * X @ self.class_embeddings_.T

    def predict_proba(self, X):
        logits = self.decision_function(X)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


@dataclass
class ZeroShotProbe(FittedProbe):
    prompts: dict = field(default_factory=dict)  # class name -> prompts, recorded in results.json


def read_prompts(path):
    """The prompt file as {class name: [prompts]}; YAML or JSON.

    >>> read_prompts("prompts.yaml")
    {'normal': ['a normal chest X-ray'], 'pneumonia': ['a chest X-ray showing pneumonia']}
    """
    if not path:
        raise ProbeError("--probe zeroshot needs --prompts FILE: a YAML or JSON file mapping each class name to a list of prompts")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProbeError(f"{path}: cannot read the prompt file ({e.strerror})") from e
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)  # YAML is a superset of JSON, so this reads both
    except Exception as e:  # json.JSONDecodeError or yaml.YAMLError
        raise ProbeError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({e})") from e
    if not isinstance(data, dict) or not data:
        raise ProbeError(f"{path}: expected a mapping of class name -> list of prompts, got {type(data).__name__}")
    prompts = {}
    for name, value in data.items():
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(p, str) and p.strip() for p in value):
            raise ProbeError(f"{path}: class {name!r} needs a non-empty prompt or list of prompts, got {value!r}")
        prompts[str(name)] = [p.strip() for p in value]
    return prompts


def match_classes(prompts, label_names, where="the prompt file"):
    """The prompts in label order; every class needs prompts and every prompt key must be a class."""
    missing = [name for name in label_names if name not in prompts]
    unknown = [name for name in prompts if name not in label_names]
    if missing or unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(label_names), n=1, cutoff=0.5)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        problems = ([f"no prompts for class {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"{', '.join(hints)} {'is' if len(hints) == 1 else 'are'} not a class of this dataset"] if unknown else []
        )
        raise ProbeError(f"{where}: {'; '.join(problems)}. The dataset's classes are {list(label_names)}")
    return {name: prompts[name] for name in label_names}


def class_embeddings(encoder, prompts):
    """One unit vector per class: the normalised mean of its normalised prompt embeddings."""
    rows = []
    for texts in prompts.values():
        vectors = encoder.embed_text(texts).astype(np.float64)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        mean = vectors.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def fit_zeroshot(encoders, prompts_file, label_names, task, X_train, y_train):
    """A FittedProbe that classifies by prompts; `X_train` only checks the embedding width, nothing is learned.

    >>> fitted = fit_zeroshot([clip_encoder], "prompts.yaml", data.label_names, data.task, X[train], y[train])
    >>> fitted.predict_scores(X[test]).shape
    (n_test, n_classes)
    """
    if task == "multi-label":
        raise ProbeError("zero-shot with a softmax over prompts needs one class per image; this dataset is multi-label")
    if len(encoders) != 1:
        raise ProbeError("zero-shot needs a single CLIP-style encoder, not a fusion")
    encoder = encoders[0]
    if not isinstance(encoder, TextEncoder):
        raise ProbeError(f"{encoder.config.name} has no text tower; zero-shot needs a CLIP-style encoder (clip_*, openclip_*, biomedclip)")
    prompts = match_classes(read_prompts(prompts_file), list(label_names), str(prompts_file))
    scale = encoder.logit_scale
    classifier = ZeroShotClassifier(class_embeddings(encoder, prompts), scale, classes=np.arange(len(prompts)))
    classifier.fit(X_train, y_train)
    params = {"prompts_file": str(prompts_file), "logit_scale": round(scale, 4)}
    selection = Selection("none (zero-shot: no training, no hyper-parameters)")
    return ZeroShotProbe(classifier, "zeroshot", params, selection, prompts=prompts)
