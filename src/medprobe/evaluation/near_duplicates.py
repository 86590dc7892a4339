"""Near-duplicates: test images whose embedding is almost identical to a train image's (a warning, not an error).

"Almost identical" depends on the data: 28 px RetinaMNIST fundus photographs upsampled to 224 px
have a median nearest-train cosine of 0.956 with EfficientNet-Lite0, HAM10000 dermoscopy 0.845 and
PneumoniaMNIST 0.873. So a test image is flagged when its nearest train image is closer than
(a) an absolute floor and (b) what 99 % of train images are to their own nearest other train image.
The floor, 0.95, was measured: on the 2,000 HAM10000 images of ../shared/data/ham10000_melnv the
largest cosine between images of two *different* lesions was 0.942 (over 2.0 million pairs), while
images of one lesion reached 0.95 and the one byte-identical pair 1.0. Measured flags on the shared
data: HAM10000 2 of 999 test images, RetinaMNIST 0 (its 99th percentile is 0.994), PneumoniaMNIST 0.
"""

import numpy as np

COSINE = 0.95  # the floor
PERCENTILE = 99.0
EXAMPLES = 10
_REFERENCE = 2000  # train images whose own nearest neighbour sets the data's typical closeness (seeded sample)
_CHUNK = 512  # rows per block: a block against 100,000 train rows is 200 MB of float32


def near_duplicates(test_vectors, train_vectors, test_ids, train_ids, floor=COSINE, seed=0):
    """{threshold, floor, train_nn_p99, count, of, examples: [{test, train, cosine}]} for test rows at or above the threshold."""
    train = _unit(train_vectors)
    best, where = _nearest(_unit(test_vectors), train)
    sample = np.random.default_rng(seed).permutation(len(train))[:_REFERENCE]
    own, _ = _nearest(train[sample], train, exclude=sample)
    typical = float(np.percentile(own, PERCENTILE)) if len(own) else 1.0
    threshold = max(floor, typical)
    flagged = np.flatnonzero(best >= threshold)
    order = flagged[np.argsort(-best[flagged], kind="stable")]
    return {
        "threshold": round(threshold, 5),
        "floor": floor,
        "train_nn_p99": round(typical, 5),
        "count": int(len(flagged)),
        "of": int(len(test_vectors)),
        "examples": [{"test": str(test_ids[i]), "train": str(train_ids[where[i]]), "cosine": round(float(best[i]), 5)} for i in order[:EXAMPLES]],
    }


def _nearest(queries, train, exclude=None):
    """Best cosine and its train row for each query row; `exclude[i]` is a train row query i may not match (itself)."""
    best, where = np.full(len(queries), -1.0), np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), _CHUNK):
        similarity = queries[start : start + _CHUNK] @ train.T
        if exclude is not None:
            similarity[np.arange(len(similarity)), exclude[start : start + _CHUNK]] = -np.inf
        if similarity.shape[1]:
            where[start : start + _CHUNK] = similarity.argmax(axis=1)
            best[start : start + _CHUNK] = similarity.max(axis=1)
    return best, where


def _unit(vectors):
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
