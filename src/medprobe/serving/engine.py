"""One saved model, loaded once, answering images: decode, embed (micro-batched), probe, decision, neighbours, OOD.

No HTTP here: `medprobe.serving.app` maps `ServeError.status` to the response. An upload is decoded exactly as
`medprobe predict` decodes a file (`medprobe.data.images.read_image`, with the pre-scan's pixel limits), so the
server and `predict` give the same probabilities for the same bytes.
"""

import hashlib
import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe import __version__
from medprobe.core.cores import usable_cores
from medprobe.core.errors import ImageError, MedprobeError, ServeError
from medprobe.core.locations import artifacts_root
from medprobe.data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_image
from medprobe.encoders import create_encoder
from medprobe.evaluation.operating_points import Rule, decide
from medprobe.evaluation.study import NOT_RECORDED, decisions_fitted_on
from medprobe.probes.index import TrainingIndex
from medprobe.probes.saved import MODEL_JSON, load_model
from medprobe.serving.batcher import MicroBatcher
from medprobe.workflows.predict import predicted_labels, saved_thresholds

log = logging.getLogger(__name__)

# A server's job has no end, so any one-off export or compile (ONNX Runtime under --runtime auto) is worth it.
ENDLESS_JOB = 1_000_000
# What an upload's decode error is answered with: too many pixels is a size limit (413), a format or DICOM variant
# medprobe cannot read is an unsupported type (415), anything else an unreadable file (422).
_STATUS_BY_REASON = (
    ("decompression-bomb limit", 413), ("aspect ratio over", 413),
    ("not a recognised image format", 415), ("is not supported", 415), ("cannot be decoded", 415), ("no installed package decodes", 415),
)


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs one model; built once from the command line and passed whole.

    >>> Engine("models/derma", ServeOptions(max_batch=16, queue=64))
    """

    runtime: str = "auto"
    weights: str | None = None
    cache_dir: str | None = None
    max_batch: int = 32  # images per encoder call
    queue: int = 64  # images waiting for the encoder; beyond it, 503
    neighbours: int = 5
    decision: str | None = None  # the saved operating point answers use (default: the first one saved)
    max_bytes: int = 64 * 2**20  # one request's body; beyond it, 413
    max_files: int = 32  # images in one batch request


class Engine:
    """The model, its index, its encoder and the micro-batcher: everything one server process loads once."""

    def __init__(self, model_dir, options=None):
        self.options = options = options or ServeOptions()
        if options.max_files > options.queue:
            raise ServeError(f"a batch of --max-files {options.max_files} images could never fit the queue of {options.queue}; "
                             "raise --queue or lower --max-files")
        self.model = load_model(model_dir)
        self.path = Path(model_dir)
        self.sha256 = hashlib.sha256((self.path / MODEL_JSON).read_bytes()).hexdigest()
        self.model_id = f"{self.path.resolve().name}@{self.sha256[:12]}"
        recorded = self.model.meta.get("index")
        self.index = TrainingIndex.read(self.path, recorded) if recorded else None
        self.rule, self.thresholds, self.decision_note = self._decision_rule(options.decision)
        weights = options.weights or self.model.meta["encoder"]["weights"]
        self.encoder, self.transform = create_encoder(self.model.encoder_name, weights=weights, runtime=options.runtime)
        self.model.check_encoder(self.encoder, self.transform)
        self.encoder.prepare(n_images=ENDLESS_JOB, artifacts=artifacts_root(options.cache_dir))
        self._uploads = tempfile.TemporaryDirectory(prefix="medprobe-serve-")
        # A full batch of blank images through the encoder now: the first request does not pay for an export or a compile,
        # and the runtime's memory arena grows to its size under load before the server takes requests.
        blank = self._pixels(_blank())
        self.encoder.embed_batch(np.repeat(blank[None], options.max_batch, axis=0))
        self._decoders = ThreadPoolExecutor(usable_cores(), thread_name_prefix="medprobe-decode")
        self.batcher = MicroBatcher(self.work, options.max_batch, options.queue)
        self.started = time.time()

    def close(self):
        self.batcher.close()
        self._decoders.shutdown()
        self._uploads.cleanup()

    def _decision_rule(self, asked):
        """(rule name, {column: threshold}, note): the saved operating point answers are decided at."""
        saved = self.model.decisions.thresholds
        if asked is not None:
            return Rule.parse(asked).name, saved_thresholds(self.model, asked), None  # refused by name when missing or unchosen
        for name in saved:
            try:
                return name, saved_thresholds(self.model, name), None
            except MedprobeError as e:
                note = str(e)
        return None, None, note if saved else "the model has no saved operating point (fit it with --operating-point)"

    # --- one request ---------------------------------------------------------------------------------------------

    def submit(self, uploads):
        """Queue (bytes, suffix) uploads for the encoder thread: one Future per upload, of its answer or its ServeError.
        Raises Busy when the queue cannot take them all."""
        return self.batcher.submit(list(uploads))

    def answer(self, data, suffix=""):
        """The JSON answer for one uploaded file's bytes, or ServeError (with the HTTP status it deserves)."""
        started = time.perf_counter()
        return with_total(self.submit([(data, suffix)])[0].result(), started)

    def answer_many(self, uploads):
        """One answer per (bytes, suffix) upload, in order; an upload that cannot be read gets {"error", "status"} instead."""
        started = time.perf_counter()
        futures = self.submit(uploads)
        return [error_entry(f.exception()) if f.exception() else with_total(f.result(), started) for f in futures]

    def work(self, uploads):
        """The encoder thread's batch: decode every upload on every core, embed the readable ones in one call, answer them.
        Returns, per upload, its answer or its ServeError."""
        started = time.perf_counter()
        prepared = list(self._decoders.map(lambda upload: _or_error(self.prepare, *upload), uploads))
        good = [p for p in prepared if not isinstance(p, ServeError)]
        if not good:
            return prepared
        decoded = time.perf_counter()
        vectors = self.encoder.embed_batch(np.stack([p["pixels"] for p in good]))
        timings = {"batch_size": len(uploads), "decode_ms": 1e3 * (decoded - started), "embed_ms": 1e3 * (time.perf_counter() - decoded)}
        answers = iter(self._answers(good, vectors, timings))
        return [p if isinstance(p, ServeError) else next(answers) for p in prepared]

    def prepare(self, data, suffix=""):
        """Decode and preprocess one upload: {"sha256", "image" (what was read), "pixels" (C, H, W) float32}."""
        if not data:
            raise ServeError("empty upload: send one image file (PNG, JPEG, TIFF, DICOM) as the body or a multipart field", 400)
        suffix = suffix.lower() if suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES else ""
        with tempfile.NamedTemporaryFile(dir=self._uploads.name, suffix=suffix) as file:
            file.write(data)
            file.flush()
            try:
                decoded = read_image(file.name)
            except ImageError as e:
                status = next((code for phrase, code in _STATUS_BY_REASON if phrase in e.reason), 422)
                kind = {413: "image too large", 415: "unsupported file type"}.get(status, "unreadable image")
                raise ServeError(f"{kind}: {e.reason}", status) from e
            except MedprobeError as e:  # a bad MEDPROBE_MAX_PIXELS setting: the server's fault, not the upload's
                raise ServeError(str(e), 500) from e
        image = decoded.image
        return {"sha256": hashlib.sha256(data).hexdigest(), "pixels": self._pixels(image),
                "image": {"bytes": len(data), "width": image.width, "height": image.height, "mode": image.mode, "notes": decoded.notes}}

    def _pixels(self, image):
        resized = self.transform.resized(image)
        pixels = np.empty((resized.shape[2],) + resized.shape[:2], np.float32)
        self.transform.normalise(resized, pixels)
        return pixels

    def _answers(self, prepared, vectors, timings):
        tick = time.perf_counter()
        model, names = self.model, self.model.label_names
        scores = model.predict_scores(vectors)
        labels = predicted_labels(scores, model.task, names)
        decided = decide(scores, model.task, names, self.thresholds) if self.thresholds is not None else [None] * len(scores)
        if self.index is not None:
            similarities = self.index.similarities(vectors)
            rows, cosines = self.index.neighbours(similarities, self.options.neighbours)
            ood = self.index.out_of_distribution(similarities)
        answers = []
        for i, p in enumerate(prepared):
            answers.append({
                "model": {"id": self.model_id, "sha256": self.sha256},
                "image": {"sha256": p["sha256"], **p["image"]},
                "label": labels[i],
                "probabilities": {name: float(s) for name, s in zip(names, scores[i])},
                "calibrated": model.decisions.calibrator is not None,
                "probabilities_are": model.decisions.scores_label,
                "decision": self._decision(scores[i], decided[i]),
                "neighbours": [self._neighbour(int(r), float(c)) for r, c in zip(rows[i], cosines[i])] if self.index else None,
                "out_of_distribution": {**ood[i], "reference": self.index.reference_record()} if self.index else None,
            })
        timings["probe_ms"] = 1e3 * (time.perf_counter() - tick)
        for a in answers:  # the batch's times: each image was decoded, embedded and scored with the others of its batch
            a["timings_ms"] = {k: v if k == "batch_size" else round(v, 2) for k, v in timings.items()}
        return [_finite(a) for a in answers]

    def _decision(self, scores, decided):
        if self.rule is None:
            return {"rule": None, "note": self.decision_note}
        saved, names = self.model.decisions.thresholds[self.rule], self.model.label_names
        columns = {}
        for name, threshold in self.thresholds.items():
            choice = saved[name]
            columns[name] = {"threshold": threshold, "score": float(scores[names.index(name)]),
                             "positive": bool(scores[names.index(name)] >= threshold),
                             "sensitivity": (choice.get("val") or {}).get("sensitivity"),
                             "specificity": (choice.get("val") or {}).get("specificity"),
                             "reached": choice.get("reached"), **({"note": choice["note"]} if choice.get("note") else {})}
        return {"rule": self.rule, "label": decided, "positive_when": "score >= threshold",
                "chosen_on": _chosen_on(self.model), "on": self.model.decisions.scores_label, "columns": columns}

    def _neighbour(self, row, cosine):
        label = self.index.labels[row]
        names = self.model.label_names
        name = ";".join(n for n, on in zip(names, label) if on) if np.ndim(label) else names[int(label)]
        return {"row": row, "id": self.index.ids[row], "label": name, "similarity": cosine,
                "thumbnail": f"/v1/training-images/{row}/thumbnail" if self.index.root else None}

    # --- the model card -------------------------------------------------------------------------------------------

    def card(self):
        """What the model is, how it was chosen and how well it did on its test split (GET /v1/model)."""
        meta = self.model.meta
        trained = meta.get("trained_on", {})
        test = trained.get("test_metrics") or {}
        summary = {k: test.get(k) for k in ("auc", "acc", "auc_ci", "acc_ci", "n", "balanced_accuracy", "macro_f1", "per_class_auc")
                   if k in test}
        return _finite({
            "id": self.model_id, "sha256": self.sha256, "created": meta.get("created"), "medprobe": meta.get("medprobe"),
            "served_by": __version__, "research_use_only": True,
            "task": meta["task"], "labels": meta["label_names"],
            "encoder": {"name": meta["encoder"]["name"], "recipe": meta["encoder"]["name"].partition("@")[2] or None,
                        "weights": meta["encoder"]["weights"] or "default", "runtime": self.encoder.runtime_info(),
                        "input_size": meta["encoder"]["config"].get("input_size"), "licence": meta["encoder"]["config"].get("license")},
            "probe": {"name": meta["probe"]["name"], "params": meta["probe"]["params"], "selection": _selection_summary(self.model.probe.selection)},
            "training_set": {"dataset": trained.get("dataset", {}).get("name"), "images": trained.get("dataset", {}).get("n"),
                             "indexed": len(self.index.ids) if self.index else None},
            "test_metrics": summary,
            "test_operating_points": test.get("operating_points"),
            "calibration": {"calibrator": self.model.decisions.calibrator.method if self.model.decisions.calibrator else None,
                            "probabilities_are": self.model.decisions.scores_label},
            "operating_points": self.model.decisions.thresholds, "decision_rule": self.rule,
            "out_of_distribution": self.index.reference_record() if self.index else None,
        })

    def thumbnail(self, row, size=128):
        """PNG bytes of training image `row`, at most `size` px, or None when it cannot be read (or changed since fitting)."""
        import io

        if self.index is None or not 0 <= row < len(self.index.ids):
            return None
        path = self.index.image_path(row)
        if path is None:
            return None
        try:
            image = read_image(path).image
        except ImageError:
            return None
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    def health(self):
        return {"status": "ok", "model": self.model_id, "uptime_s": round(time.time() - self.started, 1), "queued": self.batcher.queued,
                "queue_capacity": self.options.queue, "batches": dict(self.batcher.stats)}


def with_total(answer, started):
    """The answer with its request's whole time (queue included) added to its timings."""
    answer["timings_ms"]["total_ms"] = round(1e3 * (time.perf_counter() - started), 2)
    return answer


def error_entry(error):
    """A batch's entry for an upload that could not be answered."""
    if isinstance(error, ServeError):
        return {"error": str(error), "status": error.status}
    raise error


def _or_error(prepare, data, suffix):
    try:
        return prepare(data, suffix)
    except ServeError as e:
        return e


def _chosen_on(model):
    """Where the thresholds were chosen: as the model records it, or, for a model saved before that, as its selection implies."""
    if model.decisions.fitted_on != NOT_RECORDED:
        return model.decisions.fitted_on
    selection = model.probe.selection  # under selection cv they came from out-of-fold scores, which a saved model does not keep
    return decisions_fitted_on(selection.fit_on, selection.protocol == "cv")


def _selection_summary(selection):
    return {"protocol": selection.protocol, "criterion": selection.criterion, "fit_on": selection.fit_on}


def _blank():
    from PIL import Image

    return Image.new("RGB", (64, 64))


def _finite(value):
    """JSON's view with NaN and infinities as null (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
