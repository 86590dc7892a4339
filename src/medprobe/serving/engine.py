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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe import __version__
from medprobe.core.errors import ImageError, MedprobeError, ServeError
from medprobe.core.locations import cache_root
from medprobe.data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_image
from medprobe.encoders import create_encoder
from medprobe.evaluation.operating_points import Rule, decide
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
        self.encoder.prepare(n_images=ENDLESS_JOB, artifacts=cache_root(options.cache_dir))
        self._uploads = tempfile.TemporaryDirectory(prefix="medprobe-serve-")
        # One blank image through the encoder now, so the first request does not pay for an export or a compile.
        blank = self._pixels(_blank())
        self.encoder.embed_batch(blank[None])
        self.batcher = MicroBatcher(self.encoder.embed_batch, options.max_batch, options.queue)
        self.started = time.time()

    def close(self):
        self.batcher.close()
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

    # --- one request ------------------------------------------------------------------------------------------------

    def answer(self, data, suffix=""):
        """The JSON answer for one uploaded file's bytes, or ServeError (with the HTTP status it deserves)."""
        return self.answer_many([(data, suffix)])[0]

    def answer_many(self, uploads):
        """One answer per (bytes, suffix) upload, in order; an upload that cannot be read gets {"error", "status"} instead.

        The readable ones go to the encoder as one request, so a batch is one encoder call (or a few).
        """
        started = time.perf_counter()
        prepared = []
        for data, suffix in uploads:
            try:
                prepared.append(self.prepare(data, suffix))
            except ServeError as e:
                if len(uploads) == 1:
                    raise
                prepared.append(e)
        good = [p for p in prepared if not isinstance(p, ServeError)]
        decoded = time.perf_counter()
        vectors = self.batcher.submit(np.stack([p["pixels"] for p in good])).result() if good else np.zeros((0, 1))
        embedded = time.perf_counter()
        answers = iter(self._answers(good, vectors, decoded - started, embedded - decoded)) if good else iter(())
        return [{"error": p.args[0], "status": p.status} if isinstance(p, ServeError) else next(answers) for p in prepared]

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

    def _answers(self, prepared, vectors, decode_s, embed_s):
        tick = time.perf_counter()
        model, names = self.model, self.model.label_names
        scores = model.predict_scores(vectors)
        labels = predicted_labels(scores, model.task, names)
        decided = decide(scores, model.task, names, self.thresholds) if self.thresholds is not None else [None] * len(scores)
        if self.index is not None:
            similarities = self.index.similarities(vectors)
            rows, cosines = self.index.neighbours(vectors, self.options.neighbours)
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
        probe_s = (time.perf_counter() - tick) / len(prepared)
        for a in answers:
            a["timings_ms"] = {"decode": round(1e3 * decode_s, 2), "queue_and_embed": round(1e3 * embed_s, 2), "probe": round(1e3 * probe_s, 2)}
        return [_finite(a) for a in answers]

    def _decision(self, scores, decided):
        if self.rule is None:
            return {"rule": None, "note": self.decision_note}
        saved, names = self.model.decisions.thresholds[self.rule], self.model.label_names
        selection = self.model.meta["probe"]["selection"]
        columns = {}
        for name, threshold in self.thresholds.items():
            choice = saved[name]
            columns[name] = {"threshold": threshold, "score": float(scores[names.index(name)]),
                             "positive": bool(scores[names.index(name)] >= threshold),
                             "sensitivity": (choice.get("val") or {}).get("sensitivity"),
                             "specificity": (choice.get("val") or {}).get("specificity"),
                             "reached": choice.get("reached"), **({"note": choice["note"]} if choice.get("note") else {})}
        return {"rule": self.rule, "label": decided, "positive_when": "score >= threshold",
                "chosen_on": _chosen_on(selection), "on": self.model.decisions.scores_label, "columns": columns}

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
            "probe": {"name": meta["probe"]["name"], "params": meta["probe"]["params"], "selection": _selection_summary(meta["probe"]["selection"])},
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


def _chosen_on(selection):
    if selection.get("protocol") == "cv":
        return f"out-of-fold predictions ({selection.get('fit_on', 'train')}, selection cv)"
    return "val"


def _selection_summary(selection):
    return {k: selection.get(k) for k in ("protocol", "criterion", "fit_on", "chosen") if k in selection}


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
