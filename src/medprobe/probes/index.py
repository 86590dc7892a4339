"""The training images kept beside a saved probe: similar-case retrieval and an out-of-distribution score.

    MODEL_DIR/index.json          format, the ids (relative to `root`), their SHA-256 digests, the OOD reference
    MODEL_DIR/index.safetensors   `vectors` (N, D) unit rows, `labels`, `reference` (sorted OOD distances)

Both files' SHA-256 are recorded in model.json, which its own checksum covers, so the index is verified like the
probe. Nothing is pickled.

Similarity is the plain cosine between embeddings, as `medprobe.evaluation.near_duplicates` measures it. Retrieval
is brute force (one matrix product; 10,000 training images of 3,000 dimensions take a few ms), so it is exact.

Out of distribution: an image's score is the cosine distance to its K-th nearest training image, reported as the
percentile of the same statistic over the training images themselves (each measured against the others: leave
one out). It is flagged above the FLAG_PERCENTILE-th percentile, so about 1 % of images like the training set are
flagged, and an image unlike all of them scores 100. benchmarks/serve_ood.py measures both (docs/serving.md).

Why plain cosine: on the default encoder's embeddings of the three shared data sets (K=5), it flagged 100 % of every
other modality's test images and 0.3-1.7 % of each model's own, while cosine after standardising each dimension
flagged only 24.5 % of RetinaMNIST's fundus photographs sent to the HAM10000 model, and after centring only 0-53 %.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.core.errors import ModelError

INDEX_JSON = "index.json"
INDEX_ARRAYS = "index.safetensors"
FORMAT = "medprobe-index"
FORMAT_VERSION = 1
K_OOD = 5  # the K-th nearest neighbour's distance: one or two near-copies (images of one lesion) do not hide an outlier
FLAG_PERCENTILE = 99.0
# Above this many bytes of float32 vectors the index keeps float16 (cosines change by ~1e-3 at most; ranks rarely).
FLOAT16_ABOVE = 256 * 2**20
_CHUNK = 1024  # query rows per block when measuring the reference: a block against 100,000 rows is 400 MB of float32


@dataclass
class TrainingIndex:
    """Unit vectors of the training images, their ids, labels and digests, and the OOD reference."""

    ids: list
    digests: list
    labels: np.ndarray  # (N,) class index, or (N, L) 0/1
    vectors: np.ndarray  # (N, D) float32 unit rows
    reference: np.ndarray  # (N,) sorted leave-one-out K-th neighbour distances of the training images
    root: str | None = None  # folder the ids are relative to, when the images were files
    k: int = K_OOD
    stored_dtype: str = "float32"

    @classmethod
    def build(cls, vectors, labels, ids, digests, root=None, k=K_OOD):
        """Normalise, and measure every training image's K-th neighbour distance among the others.

        >>> index = TrainingIndex.build(X[train], y[train], data.ids[train], digests)
        """
        X = np.asarray(vectors, np.float64)
        if len(X) < 2:
            raise ModelError(f"a retrieval index needs two or more training images, got {len(X)}")
        index = cls([str(i) for i in ids], list(digests), np.asarray(labels), _unit(X), np.zeros(0), root, min(k, len(X) - 1))
        if index.vectors.nbytes > FLOAT16_ABOVE:  # what is saved is what is searched, so saving changes nothing
            index.vectors, index.stored_dtype = index.vectors.astype(np.float16).astype(np.float32), "float16"
        distances = np.empty(len(X))
        for start in range(0, len(X), _CHUNK):
            block = index.vectors[start : start + _CHUNK] @ index.vectors.T
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # leave itself out
            distances[start : start + len(block)] = 1.0 - _kth_largest(block, index.k)
        index.reference = np.sort(distances)
        return index

    @property
    def threshold(self):
        """The distance above which an image is flagged: the FLAG_PERCENTILE-th percentile of the training images'."""
        return float(np.percentile(self.reference, FLAG_PERCENTILE))

    def similarities(self, vectors):
        """(Q, N) cosine of each query embedding to every training image."""
        return _unit(vectors) @ self.vectors.T

    def neighbours(self, similarities, n=5):
        """(rows (Q, n), cosines (Q, n)) of the n most similar training images, most similar first (ties: lower row),
        from `similarities(vectors)`: a partial sort, not a full one, of each row."""
        sims = np.atleast_2d(similarities)
        n = min(n, sims.shape[1])
        nth = -np.partition(-sims, n - 1, axis=1)[:, n - 1]
        rows = []
        for row, floor in zip(sims, nth):
            candidates = np.flatnonzero(row >= floor)  # every tie at the n-th value, so that the lower rows win
            rows.append(candidates[np.argsort(-row[candidates], kind="stable")][:n])
        order = np.array(rows, dtype=np.int64).reshape(len(sims), n)
        return order, np.take_along_axis(sims, order, axis=1)

    def out_of_distribution(self, similarities):
        """Per query: {score, percentile, flagged} from its (N,) row of similarities."""
        distance = 1.0 - _kth_largest(np.atleast_2d(similarities), self.k)
        percentile = 100.0 * np.searchsorted(self.reference, distance, side="right") / len(self.reference)
        return [{"score": float(d), "percentile": float(p), "flagged": bool(d > self.threshold)} for d, p in zip(distance, percentile)]

    def reference_record(self):
        """What a score is measured against, in words and numbers (for answers and the model card)."""
        return {"statistic": f"cosine distance to the {_ordinal(self.k)} nearest training image's embedding",
                "reference": f"the same distance for each of the {len(self.reference)} training images to the others (leave one out)",
                "flag_above_percentile": FLAG_PERCENTILE, "threshold": round(self.threshold, 6), "k": self.k}

    def files(self):
        """{file name: bytes} of the two index files."""
        from safetensors.numpy import save

        vectors = self.vectors.astype(np.float16 if self.stored_dtype == "float16" else np.float32)
        arrays = {"vectors": vectors, "labels": np.ascontiguousarray(self.labels.astype(np.int64)), "reference": self.reference.astype(np.float64)}
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "n": len(self.ids), "k": self.k, "root": self.root,
                  "vectors": self.stored_dtype, "flag_percentile": FLAG_PERCENTILE, "ids": self.ids, "digests": self.digests}
        return {INDEX_JSON: (json.dumps(record) + "\n").encode(), INDEX_ARRAYS: save(arrays)}

    @classmethod
    def read(cls, folder, checksums):
        """Load and verify the index files of a model folder against `checksums` ({file: sha256}, from model.json)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        folder = Path(folder)
        blobs = {}
        for name in (INDEX_JSON, INDEX_ARRAYS):
            try:
                blobs[name] = (folder / name).read_bytes()
            except OSError as e:
                raise ModelError(f"{folder / name}: cannot read the retrieval index ({e.strerror}); refit the model with --save") from e
            if not isinstance(checksums, dict) or hashlib.sha256(blobs[name]).hexdigest() != checksums.get(name):
                raise ModelError(f"{folder / name} does not match its checksum in model.json: the index was modified or damaged; refit the model")
        try:
            record, arrays = json.loads(blobs[INDEX_JSON]), load(blobs[INDEX_ARRAYS])
            if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"not a {FORMAT} of version {FORMAT_VERSION}")
            n, vectors = int(record["n"]), arrays["vectors"].astype(np.float32)
            index = cls(list(map(str, record["ids"])), list(map(str, record["digests"])), arrays["labels"], vectors, arrays["reference"],
                        record.get("root"), int(record["k"]), str(record["vectors"]))
            shapes = [len(index.ids), len(index.digests), len(index.labels), len(vectors), len(index.reference)]
            if shapes != [n] * 5 or vectors.ndim != 2 or not 1 <= index.k < n:
                raise ValueError(f"inconsistent shapes {shapes} for {n} images, k={index.k}")
        except (ValueError, KeyError, TypeError, SafetensorError) as e:
            raise ModelError(f"{folder / INDEX_JSON}: the retrieval index is malformed ({e}); refit the model") from e
        return index

    def image_path(self, row):
        """The training image file of `row`, if the images were files and it is still there unchanged; else None."""
        if not self.root:
            return None
        root = Path(self.root).resolve()
        path = (root / self.ids[row]).resolve()
        if not path.is_relative_to(root) or not path.is_file():  # an id never leads outside the data folder
            return None
        try:
            same = hashlib.sha256(path.read_bytes()).hexdigest() == self.digests[row]
        except OSError:
            return None
        return path if same else None


def _unit(vectors):
    """Rows scaled to length 1, float32 (an all-zero row stays zero)."""
    X = np.asarray(vectors, np.float64)
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _kth_largest(block, k):
    """Each row's k-th largest value (k=1: the maximum)."""
    return -np.partition(-block, k - 1, axis=1)[:, k - 1]


def _ordinal(k):
    return f"{k}{'tsnrhtdd'[(k // 10 % 10 != 1) * (k % 10 < 4) * k % 10::4]}"


def training_index(data, vectors, rows):
    """The index of dataset `rows` (the images the probe was fitted on), from the embeddings `vectors` of every row.

    >>> index = training_index(data, X, data.indices("train"))
    """
    from medprobe.data.sources import FileImages

    rows = np.asarray(rows, dtype=np.int64)
    root = data.info.get("path") if isinstance(data.images, FileImages) else None  # thumbnails only where the images are files
    digests = data.content_digests()
    return TrainingIndex.build(vectors[rows], data.labels[rows], data.ids[rows], [digests[r] for r in rows],
                               root=str(Path(root).resolve()) if root else None)
