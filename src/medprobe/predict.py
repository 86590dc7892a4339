"""`medprobe fit --save MODEL_DIR` and `medprobe predict MODEL_DIR INPUT`: a saved probe applied to new images.

INPUT is a folder (searched recursively), a CSV manifest with a `path` column (relative to the
CSV's folder; other columns are ignored), or one image or DICOM file.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.cache import atomic_write_bytes
from medprobe.datasets import Dataset
from medprobe.errors import DatasetError
from medprobe.images import FileImages, is_image_file
from medprobe.scan import add_on_error_argument, scan_images


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
    report: object  # medprobe.scan.ScanReport: skipped files and notes


def predict(model_dir, inputs, weights=None, on_error="fail", cache_dir=None, use_cache=True, batch_size=64, progress=True):
    """Per-image class probabilities from a saved probe.

    >>> predict("models/derma", "new_images/").labels[:2]
    ['nv', 'mel']
    """
    from medprobe.embed import embed
    from medprobe.encoders import create_encoder
    from medprobe.saved_model import load_model

    model = load_model(model_dir)
    files = list_inputs(inputs)
    n = len(files)
    labels = np.zeros((n, len(model.label_names)) if model.task == "multi-label" else n, np.int64)  # unknown; unused
    data = Dataset(Path(inputs).name, model.task, model.label_names, np.array([str(p) for p in files]), np.array([""] * n), labels, FileImages(files))
    data, report = scan_images(data, on_error, check=False)
    if len(data) == 0:
        return Predictions([], np.zeros((0, len(model.label_names))), [], model.label_names, report)
    encoder, transform = create_encoder(model.encoder_name, weights=weights or model.meta["encoder"]["weights"])
    model.check_encoder(encoder, transform)
    vectors = embed(data, encoder, transform, cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size, progress=progress).vectors
    scores = model.probe.predict_scores(vectors)
    return Predictions(list(data.ids), scores, predicted_labels(scores, model.task, model.label_names), model.label_names, report)


def predicted_labels(scores, task, label_names):
    """MedMNIST's decision rules: argmax; positive score >= 0.5 for binary; each label >= 0.5 for multi-label."""
    if task == "multi-label":
        return [";".join(name for name, s in zip(label_names, row) if s >= 0.5) for row in scores]
    if task == "binary":
        return [label_names[int(s >= 0.5)] for s in scores[:, 1]]
    return [label_names[i] for i in np.argmax(scores, axis=1)]


def write_predictions_csv(path, paths, scores, labels, label_names, skipped=()):
    """path, predicted, p_<label>... at full precision (repr), then one row per skipped file with its error."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "predicted", *(f"p_{name}" for name in label_names), "error"])
    for row_path, score, label in zip(paths, scores, labels):
        writer.writerow([row_path, label, *(repr(float(s)) for s in score), ""])
    for item in skipped:
        writer.writerow([item["path"], "", *([""] * len(label_names)), item["reason"]])
    atomic_write_bytes(path, out.getvalue().encode())


# --- command line ------------------------------------------------------------------------------------


def add_command(commands):
    from medprobe.cli import _add_data_args, _add_encoder_args

    fit = commands.add_parser("fit", help="embed, fit a probe and save it without pickle (--save MODEL_DIR)")
    fit.set_defaults(func=cmd_fit)
    _add_data_args(fit)
    _add_encoder_args(fit)
    fit.add_argument("--probe", default="logreg", help="logreg, svm or knn")
    fit.add_argument("--class-weight", choices=("balanced",), help="reweight classes inversely to their frequency")
    fit.add_argument("--save", required=True, metavar="MODEL_DIR", help="folder for model.json + arrays.safetensors")
    fit.add_argument("--out", help="also write a results folder (results.json, predictions.csv, summary.md)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    add_on_error_argument(fit)

    predict_parser = commands.add_parser("predict", help="class probabilities for new images from a saved probe")
    predict_parser.set_defaults(func=cmd_predict)
    predict_parser.add_argument("model", metavar="MODEL_DIR", help="folder written by `medprobe fit --save`")
    predict_parser.add_argument("input", metavar="INPUT", help="image folder, CSV manifest with a path column, or one image/DICOM file")
    predict_parser.add_argument("--out", default="predictions.csv", help="CSV to write (default ./predictions.csv)")
    predict_parser.add_argument("--weights", help="encoder weights, if not the ones recorded in the model")
    predict_parser.add_argument("--cache-dir", help="embedding cache folder (default $MEDPROBE_CACHE, else the user cache)")
    predict_parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    predict_parser.add_argument("--batch-size", type=int, default=64)
    predict_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_on_error_argument(predict_parser)


def cmd_fit(args):
    from medprobe.pipeline import run
    from medprobe.results import format_table

    results = run(
        args.dataset, args.encoder, args.probe, out=args.out, data_dir=args.data_dir, size=args.size, weights=args.weights,
        class_weight=args.class_weight, cache_dir=args.cache_dir, use_cache=not args.no_cache, batch_size=args.batch_size,
        seed=args.seed, n_boot=args.n_boot, progress=not args.quiet, on_error=args.on_error, save=args.save,
    )
    print(f"{results['dataset']['name']} · {args.encoder} · {args.probe} {results['probe']['params']} (fitted on train)")
    print(format_table(results["metrics"]["test"]))
    print(f"saved probe to {args.save}/ (use: medprobe predict {args.save} IMAGES)")


def cmd_predict(args):
    result = predict(
        args.model, args.input, weights=args.weights, on_error=args.on_error, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, batch_size=args.batch_size, progress=not args.quiet,
    )
    write_predictions_csv(args.out, result.paths, result.scores, result.labels, result.label_names, result.report.skipped)
    skipped = f"; {len(result.report.skipped)} unreadable files listed with their reason" if result.report.skipped else ""
    print(f"{len(result.paths)} images -> {args.out}{skipped}")
