"""The embedding step: every image once through a frozen encoder, streamed shard by shard into the cache."""

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from medprobe import __version__
from medprobe.cache import SHARD_SIZE, CacheEntry, cache_key, cache_root
from medprobe.images import DECODING


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, row i belongs to dataset record i
    key: str
    path: str
    from_cache: bool
    seconds: float
    description: dict


def image_digests(images, workers=4):
    """SHA-256 of every image's content, in order (hashing releases the GIL, so threads help)."""

    def digest(index):
        return hashlib.sha256(images.content(index)).hexdigest()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(digest, range(len(images))))


def describe_job(encoder, transform):
    """Everything besides the pixels that changes the output; hashed into the cache key."""
    return {
        "encoder": encoder.config.to_dict(),
        "preprocessing": transform.policy,
        "decoding": DECODING,  # how files become pixels (medprobe.images); a change must not reuse old embeddings
        "runtime": getattr(encoder, "runtime", {}),
        "medprobe": __version__,
    }


def load_pixels(images, transform, index):
    """Decode and preprocess one image (a plain function, so it runs in threads or Ray tasks alike)."""
    return transform(images.load(index))


def embed(dataset, encoder, transform, cache_dir=None, use_cache=True, batch_size=64, progress=True):
    """Embed every image of `dataset`, reusing and filling the content-keyed cache.

    >>> encoder, transform = create_encoder("efficientnet_lite0")
    >>> embed(load_dataset("retinamnist"), encoder, transform).vectors.shape
    (1600, 1280)
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    images = dataset.images
    digests = image_digests(images)
    description = describe_job(encoder, transform)
    key = cache_key(digests, description)
    entry = CacheEntry(cache_root(cache_dir), encoder.config.name, key, description)
    n = len(images)
    n_shards = max(1, -(-n // SHARD_SIZE))
    trusted = entry.verified_shards() if use_cache and entry.is_complete() else set(range(n_shards))

    parts, computed = [], 0
    bar = tqdm(total=n, desc=f"embedding with {encoder.config.name}", unit="img", disable=not progress or None)
    with ThreadPoolExecutor(4) as decoders:
        for shard in range(n_shards):
            start, stop = shard * SHARD_SIZE, min(n, (shard + 1) * SHARD_SIZE)
            cached = entry.read_shard(shard, stop - start) if use_cache and shard in trusted else None
            if cached is None:
                cached = _embed_range(encoder, transform, images, start, stop, batch_size, decoders, bar)
                computed += stop - start
                if use_cache:
                    entry.write_shard(shard, start, dataset.ids[start:stop], digests[start:stop], cached)
            else:
                bar.update(stop - start)
            parts.append(cached)
    bar.close()
    vectors = np.concatenate(parts)
    if use_cache and computed:
        entry.finish(n_shards, n, vectors.shape[1])
    return Embeddings(
        vectors=vectors,
        key=key,
        path=str(entry.path) if use_cache else "",
        from_cache=use_cache and computed == 0,
        seconds=time.perf_counter() - started,
        description=description,
    )


def _embed_range(encoder, transform, images, start, stop, batch_size, decoders, bar):
    out = []
    for batch_start in range(start, stop, batch_size):
        indices = range(batch_start, min(stop, batch_start + batch_size))
        pixels = np.stack(list(decoders.map(lambda i: load_pixels(images, transform, i), indices)))
        out.append(encoder.embed_batch(pixels))
        bar.update(len(indices))
    return np.concatenate(out)
