"""Near-duplicates: test images whose embedding is almost identical to a train image's (a warning, not an error).

The threshold was measured, not guessed: with EfficientNet-Lite0 on the 2,000 HAM10000 images of
../shared/data/ham10000_melnv, the largest cosine between images of two *different* lesions was
0.942 (over 2.0 million pairs); images of the same lesion reached 0.95 in 3 of 520 pairs, and the
one byte-identical pair scored 1.0. At 0.95 no pair of different lesions is flagged.
"""

import numpy as np

COSINE = 0.95
EXAMPLES = 10
_CHUNK = 512  # test rows per block: a block against 100,000 train rows is 200 MB of float32


def near_duplicates(test_vectors, train_vectors, test_ids, train_ids, threshold=COSINE):
    """{threshold, count, examples: [{test, train, cosine}]} for test rows whose nearest train row has cosine >= threshold."""
    train = _unit(train_vectors)
    best, where = np.empty(len(test_vectors)), np.empty(len(test_vectors), dtype=np.int64)
    for start in range(0, len(test_vectors), _CHUNK):
        similarity = _unit(test_vectors[start : start + _CHUNK]) @ train.T
        where[start : start + _CHUNK] = similarity.argmax(axis=1)
        best[start : start + _CHUNK] = similarity.max(axis=1)
    flagged = np.flatnonzero(best >= threshold)
    order = flagged[np.argsort(-best[flagged], kind="stable")]
    return {
        "threshold": threshold,
        "count": int(len(flagged)),
        "of": int(len(test_vectors)),
        "examples": [{"test": str(test_ids[i]), "train": str(train_ids[where[i]]), "cosine": round(float(best[i]), 5)} for i in order[:EXAMPLES]],
    }


def _unit(vectors):
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
