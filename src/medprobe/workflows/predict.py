"""`medprobe predict MODEL_DIR INPUT`: a saved probe (from `medprobe fit --save`) applied to new images.

INPUT is a folder (searched recursively), a CSV manifest with a `path` column (relative to the
CSV's folder; other columns are ignored), or one image or DICOM file.
"""

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medprobe.core.errors import DatasetError, ModelError
from medprobe.core.files import atomic_write_text
from medprobe.data.datasets import Dataset
from medprobe.data.images import is_image_file
from medprobe.data.scan import scan_images
from medprobe.data.sources import FileImages
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import create_encoder
from medprobe.evaluation.metrics import predictions
from medprobe.evaluation.operating_points import Rule, decide
from medprobe.probes.saved import load_model


def list_inputs(spec):
    """The image files named by a folder, a CSV manifest or a single file, in a stable order."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise DatasetError(f"{path}: no image or DICOM files found")
        return files
    if path.suffix.lower() == ".csv" and path.is_file():
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise DatasetError(f"{path}: the header must have a path column; got {reader.fieldnames}")
                files = [path.parent / row["path"].strip() for row in reader if (row.get("path") or "").strip()]
        except (UnicodeDecodeError, csv.Error) as e:
            raise DatasetError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
        if not files:
            raise DatasetError(f"{path}: the manifest has no rows")
        return files
    if path.exists():
        return [path]
    raise DatasetError(f"{path}: not found (give a folder, a CSV manifest with a path column, or an image file)")


@dataclass
class Predictions:
    paths: list
    scores: np.ndarray  # (N, K) probabilities; columns follow label_names
    labels: list  # predicted label per image
    label_names: list
    report: object  # medprobe.data.scan.ScanReport: skipped files and notes
    decisions: list | None = None  # per image, the decision at the saved threshold of the rule asked for


def predict(model_dir, inputs, options=None, on_error="fail", decision=None):
    """Per-image class probabilities from a saved probe (calibrated when the model carries a calibrator).

    Of `options` (an EmbedOptions) the encoder name is ignored: the model names its own. Its
    weights default to those recorded in the model. `decision` names a saved operating point
    ('youden', 'sensitivity>=0.9'): each image then also gets the decision at its threshold.

    >>> predict("models/derma", "new_images/").labels[:2]
    ['nv', 'mel']
    """
    model = load_model(model_dir)
    thresholds = saved_thresholds(model, decision) if decision is not None else None
    files = list_inputs(inputs)
    n = len(files)
    labels = np.zeros((n, len(model.label_names)) if model.task == "multi-label" else n, np.int64)  # unknown; unused
    data = Dataset(Path(inputs).name, model.task, model.label_names, np.array([str(p) for p in files]), np.array([""] * n), labels, FileImages(files))
    data, report = scan_images(data, on_error, check=False)
    if len(data) == 0:
        return Predictions([], np.zeros((0, len(model.label_names))), [], model.label_names, report)
    options = options or EmbedOptions()
    options = replace(options, encoder=model.encoder_name, weights=options.weights or model.meta["encoder"]["weights"])
    encoder, transform = create_encoder(options.encoder, weights=options.weights, device=options.device, runtime=options.runtime)
    model.check_encoder(encoder, transform)  # the probe's own encoder and preprocessing; int8: the calibration saved with it
    vectors = embed(data, encoder, transform, options).vectors
    scores = model.predict_scores(vectors)
    decided = decide(scores, model.task, model.label_names, thresholds) if thresholds is not None else None
    return Predictions(list(data.ids), scores, predicted_labels(scores, model.task, model.label_names), model.label_names, report, decided)


def saved_thresholds(model, rule):
    """{column: threshold} of the model's saved operating point `rule`; refused when it was not saved or not chosen."""
    name = Rule.parse(rule).name
    saved = model.decisions.thresholds
    if name not in saved:
        raise ModelError(f"{model.path} has no saved operating point {name!r}; it has {sorted(saved) or 'none'} "
                         "(choose them when fitting, with --operating-point)")
    unchosen = {column: choice.get("note") for column, choice in saved[name].items() if choice.get("threshold") is None}
    if unchosen:
        raise ModelError(f"{model.path}: operating point {name!r} has no threshold for {', '.join(map(repr, unchosen))} "
                         f"({'; '.join(filter(None, unchosen.values())) or 'not chosen'})")
    return {column: choice["threshold"] for column, choice in saved[name].items()}


def predicted_labels(scores, task, label_names):
    """The label names `predictions` picks: argmax; binary: positive score > 0.5; multi-label: ';'-joined labels > 0.5."""
    chosen = predictions(scores, task)
    if task == "multi-label":
        return [";".join(name for name, on in zip(label_names, row) if on) for row in chosen]
    return [label_names[i] for i in chosen]


def write_predictions_csv(path, paths, scores, labels, label_names, skipped=(), decisions=None):
    """path, predicted, p_<label>... at full precision (repr), [decision,] then one row per skipped file with its error."""
    out = io.StringIO()
    writer = csv.writer(out)
    extra = ["decision"] if decisions is not None else []
    writer.writerow(["path", "predicted", *(f"p_{name}" for name in label_names), *extra, "error"])
    for i, (row_path, score, label) in enumerate(zip(paths, scores, labels)):
        writer.writerow([row_path, label, *(repr(float(s)) for s in score), *([decisions[i]] if extra else []), ""])
    for item in skipped:
        writer.writerow([item["path"], "", *([""] * (len(label_names) + len(extra))), item["reason"]])
    atomic_write_text(path, out.getvalue())
