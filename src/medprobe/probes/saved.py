"""Saved probes without pickle: JSON for what the model is, safetensors for its learned numbers.

    MODEL_DIR/model.json          format, medprobe version, encoder name + full config, preprocessing,
                                  decoding, task, label names, probe, the estimator tree, SHA-256 of the arrays
    MODEL_DIR/arrays.safetensors  every learned array (scaler mean/scale, coefficients, calibrators, kNN vectors)
    MODEL_DIR/model.json.sha256   SHA-256 of model.json

Loading rebuilds each scikit-learn estimator from a fixed list of trusted classes and sets its
public fitted attributes; a kNN is refitted on its stored vectors. Nothing from the files is executed
or imported by name. The checksums catch corruption and casual edits; they are not a signature
against someone who rewrites all three files.

Why not skops.io: it restores each object's whole __dict__, private attributes included, and checks
types, not contents; a crafted kNN (a default-trusted type) crashed predict. See docs/saved_probes.md.
"""

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medprobe import __version__
from medprobe.core.errors import MedprobeError, ModelError
from medprobe.core.files import atomic_folder, atomic_write_bytes, check_replaceable_folder
from medprobe.data.datasets import TASKS
from medprobe.data.images import DECODING
from medprobe.encoders import get_config
from medprobe.encoders.base import CalibratedEncoder
from medprobe.encoders.transforms import make_transform
from medprobe.evaluation.study import Decisions
from medprobe.probes import saved_calibration
from medprobe.probes.fit import FittedProbe
from medprobe.probes.index import INDEX_ARRAYS, INDEX_JSON
from medprobe.probes.selection import Selection

log = logging.getLogger(__name__)

FORMAT = "medprobe-probe"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
ARRAYS = "arrays.safetensors"
CHECKSUM = "model.json.sha256"
# Every file a saved model folder may hold: `fit --save` replaces a folder only when it holds nothing else, so a file
# that save_model writes must be named here (or re-saving over the model is refused).
MODEL_FILES = {MODEL_JSON, ARRAYS, CHECKSUM, saved_calibration.FILE, INDEX_JSON, INDEX_ARRAYS}


def _trusted_types():
    """The only classes a saved model may name; loading looks names up here and nowhere else."""
    from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier, _ConstantPredictor
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelBinarizer, Normalizer, StandardScaler
    from sklearn.svm import LinearSVC

    types = (
        Pipeline, StandardScaler, Normalizer, LogisticRegression, LinearSVC, CalibratedClassifierCV,
        _CalibratedClassifier, _SigmoidCalibration, KNeighborsClassifier, OneVsRestClassifier,
        LabelBinarizer, _ConstantPredictor,
    )
    return {cls.__name__: cls for cls in types}


@dataclass
class SavedModel:
    """A loaded probe and the metadata that says which embeddings it expects."""

    probe: object  # medprobe.probes.FittedProbe
    meta: dict
    path: Path
    decisions: Decisions = field(default_factory=Decisions)  # calibrator and operating-point thresholds, and where they were fitted (empty for older models)
    calibration: object = None  # the int8 runtimes' runtimes.Calibration, saved when the probe was fitted under one (else None)

    def predict_scores(self, vectors):
        """The probe's probabilities, calibrated when the model carries a calibrator."""
        return self.decisions.apply(self.raw_scores(vectors))

    def raw_scores(self, vectors):
        """The probe's own probabilities, refused when not finite (never written out as NaN with exit 0)."""
        scores = np.asarray(self.probe.predict_scores(vectors))
        bad = ~np.isfinite(scores).all(axis=-1) if scores.ndim == 2 else np.zeros(0, bool)
        if bad.any():
            raise ModelError(f"{self.path}: the probe gives NaN or infinite scores for {int(bad.sum())} of {len(scores)} image(s): its "
                             "numbers overflow on these embeddings (an edited or broken model); refit the model")
        return scores

    @property
    def encoder_name(self):
        return self.meta["encoder"]["name"]

    @property
    def task(self):
        return self.meta["task"]

    @property
    def label_names(self):
        return list(self.meta["label_names"])

    def check_encoder(self, encoder, transform):
        """Refuse to embed with an encoder or preprocessing other than the one the probe was fitted on; call before embedding.

        An int8 encoder is also handed the calibration saved with the probe: quantised on each job's images instead,
        an image's probability would depend on which other images came with it (issue 27).
        """
        _refuse_differences(self.path, "encoder config", self.meta["encoder"]["config"], encoder.config.to_dict())
        _refuse_differences(self.path, "preprocessing", self.meta["preprocessing"], transform.policy)
        if not isinstance(encoder, CalibratedEncoder) or "calibration" not in encoder.runtime:  # only int8 is calibrated on images
            return
        if self.calibration is None:
            raise ModelError(f"{self.path} was saved without an int8 calibration (fitted under an fp32 or bf16 runtime), so an int8 "
                             "runtime would calibrate on each job's images and answer differently for the same image; use "
                             "--runtime auto (or onnx, openvino, openvino-bf16, bf16), or refit with the int8 runtime and --save")
        encoder.calibrate_with(self.calibration)


def save_model(folder, fitted, dataset, encoder, transform, encoder_name, weights=None, metrics=None, seed=0, decisions=None, index=None,
               calibration=None):
    """Write a fitted probe and everything needed to use it on new images (with `calibration`, the int8 runtimes'
    runtimes.Calibration the embeddings were quantised with); return the folder.

    >>> save_model("models/derma", fitted, data, encoder, transform, "efficientnet_lite0")
    """
    from safetensors.numpy import save

    folder = Path(folder)
    arrays = {}
    tree = _encode(fitted.estimator, arrays)
    decided, decision_arrays = (decisions or Decisions()).to_saved()
    arrays.update(decision_arrays)
    blob = save(arrays) if arrays else save({"_empty": np.zeros(0, np.float32)})
    extra = index.files() if index is not None else {}
    calibrated, calibration_blob = saved_calibration.to_saved(calibration) if calibration is not None else (None, None)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medprobe": __version__,
        "sklearn": _sklearn_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": dataset.task,
        "label_names": list(dataset.label_names),
        "encoder": {"name": encoder_name, "config": _plain(encoder.config.to_dict()), "weights": str(weights) if weights else None},
        # the int8 calibration images (their own file, covered by this file's checksum); predict quantises on them alone
        "int8_calibration": _plain(calibrated),
        "preprocessing": _plain(transform.policy),
        "decoding": DECODING,
        "probe": {"name": fitted.name, "params": _plain(fitted.params), "selection": fitted.selection.to_json()},
        "trained_on": {"dataset": _plain(dataset.describe()), "seed": seed, "test_metrics": _plain((metrics or {}).get("test"))},
        "estimator": tree,
        # the calibrator (isotonic breakpoints in the arrays file) and each operating point's threshold, chosen on held-out scores
        "decisions": _plain(decided),
        "arrays": {"file": ARRAYS, "sha256": hashlib.sha256(blob).hexdigest()},
        # the retrieval index of the training images (medprobe.probes.index), verified through this file's checksum
        "index": {name: hashlib.sha256(data).hexdigest() for name, data in extra.items()} or None,
    }
    text = (json.dumps(meta, indent=1, allow_nan=True) + "\n").encode()
    # The three files are written beside the folder and swapped in together: a kill or a full disk while saving
    # over a working model leaves that model intact.
    with atomic_folder(folder, MODEL_FILES, "model folder") as building:
        atomic_write_bytes(building / ARRAYS, blob)
        atomic_write_bytes(building / MODEL_JSON, text)
        atomic_write_bytes(building / CHECKSUM, f"{hashlib.sha256(text).hexdigest()}  {MODEL_JSON}\n".encode())
        for name, data in extra.items():
            atomic_write_bytes(building / name, data)
        if calibration_blob is not None:
            atomic_write_bytes(building / saved_calibration.FILE, calibration_blob)
    return folder


def check_save_folder(folder, keep=()):
    """Refuse now, before any work, a folder that saving into would lose anything but a saved model (see check_replaceable_folder).

    >>> check_save_folder("models/derma", keep=[("the dataset folder", "data/derma", True)])
    """
    check_replaceable_folder(folder, MODEL_FILES, "--save", keep)


def load_model(folder, check_encoder=True):
    """Verify the checksums, check the encoder against the registry, and rebuild the probe.

    >>> model = load_model("models/derma")
    >>> model.probe.predict_scores(vectors)
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    folder = Path(folder)
    text = _read(folder / MODEL_JSON)
    recorded = _read(folder / CHECKSUM).decode(errors="replace").split()
    if not recorded or recorded[0] != hashlib.sha256(text).hexdigest():
        raise ModelError(f"{folder / MODEL_JSON} does not match its checksum in {CHECKSUM}: the model was modified or damaged after saving; refit it")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ModelError(f"{folder / MODEL_JSON}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{folder}: not a medprobe saved probe of format version {FORMAT_VERSION}")
    blob = _read(folder / ARRAYS)
    if hashlib.sha256(blob).hexdigest() != meta["arrays"]["sha256"]:
        raise ModelError(f"{folder / ARRAYS} does not match the checksum in {MODEL_JSON}: the model was modified or damaged after saving; refit it")
    try:
        arrays = load(blob)
    except SafetensorError as e:
        raise ModelError(f"{folder / ARRAYS}: not a readable safetensors file ({e})") from e
    if meta.get("sklearn") != _sklearn_version():
        log.warning("%s was saved with scikit-learn %s and is loaded with %s", folder, meta.get("sklearn"), _sklearn_version())
    if check_encoder:
        _check_registered(folder, meta)
    try:
        estimator = _Decoder(arrays).value(meta["estimator"])
        probe = FittedProbe(estimator, meta["probe"]["name"], meta["probe"]["params"], Selection.from_json(meta["probe"]["selection"]))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        versions = f"; it was saved with scikit-learn {meta.get('sklearn')} and this is {_sklearn_version()}, so refit it" if meta.get("sklearn") != _sklearn_version() else ""
        raise ModelError(f"{folder / MODEL_JSON}: the estimator description is malformed ({type(e).__name__}: {e}){versions}") from e
    _check_content(folder, meta, probe, arrays)
    try:
        decisions = Decisions.from_saved(meta.get("decisions"), arrays, meta["task"], meta["label_names"])
    except MedprobeError as e:
        raise ModelError(f"{folder / MODEL_JSON}: {e}; refit the model") from e
    calibration = saved_calibration.from_saved(folder, meta.get("int8_calibration"), meta["encoder"]["config"])
    return SavedModel(probe, meta, folder, decisions, calibration)


def _check_content(folder, meta, probe, arrays=None):
    """What the checksums cannot catch, a deliberate edit: a task, labels or arrays the probe cannot honestly serve."""
    where = folder / MODEL_JSON
    task, names = meta.get("task"), meta.get("label_names")
    if task not in TASKS:
        raise ModelError(f"{where}: task {task!r} is not one medprobe fits ({', '.join(TASKS)}); refit the model")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ModelError(f"{where}: label_names must be a list of distinct names, got {names!r}; refit the model")
    if len(names) < (1 if task == "multi-label" else 2):
        raise ModelError(f"{where}: a {task} probe needs {'a label' if task == 'multi-label' else 'two or more classes'}, got {names!r}")
    # Every learned number finite: a NaN coefficient loaded, and predict wrote NaN probabilities with exit 0.
    uses = {key: "the calibrator" for key in arrays or {} if key.startswith("calibrator.")} | _array_uses(meta.get("estimator"))
    for key, array in sorted((arrays or {}).items()):
        if array.dtype.kind not in "biuf":
            raise ModelError(f"{folder / ARRAYS}: array {key} ({uses.get(key, 'unused')}) has dtype {array.dtype}, not numbers; refit the model")
        bad = int(array.size - np.isfinite(array).sum()) if array.dtype.kind == "f" else 0
        if bad:
            raise ModelError(f"{folder / ARRAYS}: array {key} ({uses.get(key, 'unused')}) holds {bad} NaN or infinite value(s); "
                             "refit the model")
    _check_linear_shapes(where, probe.estimator)
    dim = getattr(probe.estimator, "n_features_in_", "?")
    try:
        dim = int(dim)  # the width its first step was fitted on
        # zeros, and ones of both signs: a NaN or inf anywhere on the way (a scaler's scale, an intercept) shows in the scores
        probes = np.stack([np.zeros(dim), np.ones(dim), -np.ones(dim)]).astype(np.float32)
        scores = np.asarray(probe.predict_scores(probes))
    except Exception as e:  # a wrong array shape surfaces as whatever scikit-learn raises for it (its first line names it)
        reason = " ".join(str(e).strip().splitlines()[:1]) if str(e).strip() else ""
        raise ModelError(f"{where}: the probe cannot score a {dim}-d embedding ({type(e).__name__}: {reason}); the arrays do not fit the "
                         "model description, refit the model") from e
    if scores.shape != (3, len(names)):
        columns = scores.shape[-1] if scores.ndim == 2 else scores.shape
        raise ModelError(f"{where}: the probe gives {columns} scores per image for {len(names)} labels {names}; refit the model")
    if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
        raise ModelError(f"{where}: the probe's scores are not probabilities (got {scores[~np.isfinite(scores) | (scores < 0) | (scores > 1)][0]!r}"
                         " for a plain input); the estimator's numbers were edited, refit the model")


def _array_uses(node, owner="model"):
    """{array key: 'LogisticRegression.coef_'}: where each array of the arrays file is used, for messages."""
    uses = {}
    if isinstance(node, dict):
        if isinstance(node.get("$array"), str):
            uses[node["$array"]] = owner
        owner = node.get("$object", owner) if isinstance(node.get("$object"), str) else owner
        for key, value in node.items():
            if key == "$dict" and isinstance(value, list):
                for pair in value:
                    if isinstance(pair, list) and len(pair) == 2:
                        name = f"{owner}.{pair[0]}" if isinstance(pair[0], str) else owner
                        uses.update(_array_uses(pair[1], name))
            elif key != "$array":
                uses.update(_array_uses(value, owner))
    elif isinstance(node, list):
        for value in node:
            uses.update(_array_uses(value, owner))
    return uses


def _check_linear_shapes(where, estimator):
    """A linear model's coefficients must have the shape its classes give: (1, D) for two classes, (K, D) for K.

    A binary logistic regression given a (2, D) coefficient loaded and answered 0.5 for every image.
    """
    for part in _parts(estimator):
        coef, classes = getattr(part, "coef_", None), getattr(part, "classes_", None)
        if coef is None or classes is None:
            continue
        classes, coef = np.asarray(classes), np.asarray(coef)
        rows = 1 if len(classes) == 2 else len(classes)
        intercept = np.shape(getattr(part, "intercept_", np.zeros(rows)))
        width = getattr(part, "n_features_in_", coef.shape[-1])
        if coef.shape != (rows, width) or intercept not in ((rows,), ()):
            raise ModelError(f"{where}: {type(part).__name__} has {len(classes)} classes, so its coefficients must be ({rows}, {width}) and its "
                             f"intercept ({rows},), got {coef.shape} and {intercept}; refit the model")


def _parts(estimator):
    """The estimator and every estimator inside it (pipeline steps, one-vs-rest members, calibrated folds)."""
    yield estimator
    for value in vars(estimator).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            item = item[1] if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) else item  # (name, step)
            if type(item).__name__ in _trusted_types():
                yield from _parts(item)


def _read(path):
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        interrupted = sorted(Path(path).parent.parent.glob(f".{Path(path).parent.name}.old-*"))
        if interrupted:
            raise ModelError(f"{Path(path).parent} is missing, but a save over it was interrupted and the previous model is at "
                             f"{interrupted[-1]}; rename it back to use it") from e
        raise ModelError(f"{path} not found; a saved probe folder holds {MODEL_JSON}, {ARRAYS} and {CHECKSUM}",
                         command=f"medprobe fit --save {Path(path).parent}") from e
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror})") from e


def _check_registered(folder, meta):
    """The probe only means something on embeddings from the very encoder and preprocessing it was fitted on."""
    name = meta["encoder"]["name"]
    try:
        config = get_config(name)
    except MedprobeError as e:
        raise ModelError(f"{folder} was fitted on encoder {name!r}, which this installation does not provide ({e})") from e
    _refuse_differences(folder, f"encoder {name!r} config", meta["encoder"]["config"], config.to_dict())
    # a probe fitted with --runtime fast records OpenCV's resize; predicting then needs --runtime fast (check_encoder)
    library = "opencv" if "resize_library" in (meta["preprocessing"] or {}) else "pillow"
    _refuse_differences(folder, "preprocessing", meta["preprocessing"], make_transform(config, library).policy)
    _refuse_differences(folder, "image decoding", meta.get("decoding"), DECODING)


def _refuse_differences(folder, what, saved, current):
    saved, current = _plain(saved), _plain(current)
    if isinstance(saved, dict) and isinstance(current, dict):
        saved, current = ({k: v for k, v in d.items() if k != "extra"} for d in (saved, current))  # extra: free-form notes
        differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    else:
        differing = [] if saved == current else ["(all)"]
    if differing:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in differing[:5]) if isinstance(saved, dict) else ""
        raise ModelError(
            f"{folder}: the {what} differs from the one the probe was fitted with ({details or 'changed'}); "
            "embeddings would not mean the same thing, so refit the probe with this installation"
        )


def _plain(value):
    """JSON's view of a value (tuples become lists), so saved and current configs compare equal."""
    return json.loads(json.dumps(value, default=str))


def _sklearn_version():
    import sklearn

    return sklearn.__version__


# --- the estimator tree: JSON nodes, arrays by reference ---------------------------------------------


def _encode(value, arrays):
    """JSON for one value; arrays go into `arrays` and are referenced by key."""
    from sklearn.base import BaseEstimator
    from sklearn.neighbors import KNeighborsClassifier

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"$scalar": value.dtype.str, "value": value.item()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ModelError(f"cannot save an array of dtype {value.dtype} (only numbers are saved)")
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {"$array": key}
    if isinstance(value, (list, tuple)):
        return {"$list" if isinstance(value, list) else "$tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        return {"$dict": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    name = type(value).__name__
    if _trusted_types().get(name) is not type(value):
        raise ModelError(f"cannot save a {type(value).__module__}.{name}: only medprobe's own probe types are saved")
    if isinstance(value, KNeighborsClassifier):
        # kNN keeps its neighbours in private structures; store the vectors and labels and refit on load.
        # (Only these private attributes are read, and only here; loading refits, so sklearn validates the vectors
        # and builds its own search structures: a crafted file cannot hand its Cython code bad indices or shapes.)
        fitted = "_fit_X" in vars(value)  # False: an unfitted template, e.g. OneVsRestClassifier's `estimator` parameter
        fit = {"X": value._fit_X, "y": value.classes_[value._y]} if fitted else None
        return {"$object": name, "params": _encode(value.get_params(deep=False), arrays), "fit": _encode(fit, arrays)}
    if isinstance(value, BaseEstimator):
        params = value.get_params(deep=False)
        state = {k: v for k, v in vars(value).items() if _is_fitted_name(k)}
    else:  # _CalibratedClassifier: a plain object whose attributes are its constructor arguments
        params, state = dict(vars(value)), {}
    return {"$object": name, "params": _encode(params, arrays), "state": _encode(state, arrays)}


def _is_fitted_name(name):
    return isinstance(name, str) and name.isidentifier() and name.endswith("_") and not name.startswith("_")


class _Decoder:
    def __init__(self, arrays):
        self.arrays = arrays
        self.types = _trusted_types()

    def value(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict) or len(node) == 0:
            raise ValueError(f"unexpected entry {str(node)[:80]!r}")
        if "$array" in node:
            return self.arrays[node["$array"]]
        if "$scalar" in node:
            dtype = np.dtype(node["$scalar"])
            if dtype.kind not in "biuf":
                raise ValueError(f"scalar of dtype {dtype} is not allowed")
            return dtype.type(node["value"])
        if "$list" in node:
            return [self.value(v) for v in node["$list"]]
        if "$tuple" in node:
            return tuple(self.value(v) for v in node["$tuple"])
        if "$dict" in node:
            return {self.value(k): self.value(v) for k, v in node["$dict"]}
        if "$object" in node:
            return self.estimator(node)
        raise ValueError(f"unexpected entry {str(node)[:80]!r}")

    def estimator(self, node):
        from sklearn.base import BaseEstimator
        from sklearn.neighbors import KNeighborsClassifier

        cls = self.types.get(node["$object"])
        if cls is None:
            raise ModelError(f"refusing to load type {node['$object']!r}: not one of the trusted probe types {sorted(self.types)}")
        params = self.value(node["params"])
        if cls is KNeighborsClassifier:
            fit = self.value(node["fit"])
            return cls(**params).fit(fit["X"], fit["y"]) if fit is not None else cls(**params)
        estimator = cls(**params)
        if issubclass(cls, BaseEstimator):
            for name, value in self.value(node["state"]).items():
                if not _is_fitted_name(name):
                    raise ValueError(f"refusing attribute {name!r}: fitted attributes end in '_' and are public")
                setattr(estimator, name, value)
        return estimator
