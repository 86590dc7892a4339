"""The embedding step: every image once through a frozen encoder, streamed shard by shard into the cache."""

import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe import __version__
from medprobe.core.files import is_writable_folder
from medprobe.core.locations import cache_root
from medprobe.data.images import DECODING
from medprobe.embedding.cache import CacheEntry, cache_key
from medprobe.embedding.costs import CostMeter
from medprobe.embedding.options import EmbedOptions


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, row i belongs to dataset record i
    key: str
    path: str
    from_cache: bool
    seconds: float
    description: dict


def describe_job(encoder, transform):
    """Everything besides the pixels that changes the output; hashed into the cache key."""
    return {
        "encoder": encoder.config.to_dict(),
        "preprocessing": transform.policy,
        "decoding": DECODING,  # how files become pixels (medprobe.images); a change must not reuse old embeddings
        "runtime": encoder.runtime,
        "weights": encoder.weights_id,  # a fingerprint when --weights was given
        "medprobe": __version__,
    }


def load_pixels(images, transform, index):
    """Decode and preprocess one image (a plain function, so it runs in threads or Ray tasks alike)."""
    return transform(images.load(index))


def embed(dataset, encoder, transform, options=None):
    """Embed every image of `dataset` with one encoder, reusing and filling the content-keyed cache.

    Of `options` (an EmbedOptions) this uses the cache, batch size, shard size and progress; the
    encoder was already built from the rest.

    >>> encoder, transform = create_encoder("efficientnet_lite0")
    >>> embed(load_dataset("retinamnist"), encoder, transform).vectors.shape
    (1600, 1280)
    """
    from tqdm.auto import tqdm

    options = options or EmbedOptions(encoder.config.name)
    started = time.perf_counter()
    job = plan_job(dataset, encoder, transform, options)
    out = _Rows(len(dataset))
    for shard, vectors in job.cached.items():
        out.put(job.shards[shard][0], vectors)
    bar = tqdm(total=len(dataset), desc=f"embedding with {encoder.config.name}", unit="img", disable=not options.progress or None)
    bar.update(len(dataset) - job.computed)
    if job.computed:
        encoder.prepare(n_images=job.computed, artifacts=job.artifacts)
    meter = CostMeter(job.entry.path if job.store else None, resuming=bool(job.cached))

    # Decoding runs one batch ahead in a thread while the encoder works; each shard is written the moment it completes.
    shards, batch_size = job.shards, options.batch_size
    batches = [(shard, b, min(shards[shard][1], b + batch_size)) for shard in job.todo for b in range(shards[shard][0], shards[shard][1], batch_size)]
    computed = 0
    for (shard, b, e), pixels in prefetch(dataset.images, transform, batches):
        out.put(b, encoder.embed_batch(pixels))
        bar.update(e - b)
        computed += e - b
        if e == shards[shard][1]:
            job.write_shard(dataset, shard, out.rows[slice(*shards[shard])])
            meter.record(computed, complete=shard == job.todo[-1])
    bar.close()
    vectors = out.rows if out.rows is not None else np.empty((0, encoder.config.embed_dim), np.float32)
    return job.result(vectors, options.use_cache, started)


@dataclass
class Job:
    """One embedding job: its cache entry, its shards, those already cached and those still to compute.

    Planned the same way for the local and the Ray path, so both resume from, and write, the same shards.
    """

    digests: list
    description: dict
    key: str
    root: Path
    entry: CacheEntry
    shards: list  # (start, stop) of every shard, in order
    cached: dict  # shard -> vectors read back from the cache
    todo: list  # shards to compute
    store: bool  # write computed shards (the cache is on and its folder writable)

    @property
    def computed(self):
        return sum(self.shards[s][1] - self.shards[s][0] for s in self.todo)

    @property
    def artifacts(self):
        """Where a fast runtime may cache its exported graph: beside the embeddings, or a temporary folder."""
        return self.root if self.store else Path(tempfile.gettempdir()) / "medprobe-artifacts"

    def write_shard(self, dataset, shard, vectors):
        if not self.store:
            return
        start, stop = self.shards[shard]
        self.entry.write_shard(shard, start, dataset.ids[start:stop], self.digests[start:stop], vectors)

    def result(self, vectors, use_cache, started):
        # Also when every shard was cached but the manifest is missing (a kill just before it was written).
        if use_cache and (self.todo or not self.entry.is_complete()) and is_writable_folder(self.entry.path):
            self.entry.finish(len(self.shards), len(vectors), vectors.shape[1])
        from_cache = use_cache and not self.todo
        return Embeddings(
            vectors=vectors,
            key=self.key,
            path=str(self.entry.path) if from_cache or self.store else "",
            from_cache=from_cache,
            seconds=time.perf_counter() - started,
            description=self.description,
        )


def plan_job(dataset, encoder, transform, options):
    """Hash the images, derive the cache key, cut the job into shards and read back every one already cached and intact."""
    use_cache, size = options.use_cache, options.shard_size
    digests = dataset.content_digests()
    description = describe_job(encoder, transform)
    key = cache_key(digests, description)
    root = cache_root(options.cache_dir)
    entry = CacheEntry(root, encoder.config.name, key, description)
    n = len(dataset.images)
    shards = [(shard * size, min(n, (shard + 1) * size)) for shard in range(max(1, -(-n // size)))]
    trusted = entry.verified_shards() if use_cache and entry.is_complete() else set(range(len(shards)))
    cached, todo = {}, []
    for shard, (start, stop) in enumerate(shards):
        vectors = entry.read_shard(shard, stop - start) if use_cache and shard in trusted else None
        if vectors is None:
            todo.append(shard)
        else:
            cached[shard] = vectors
    store = use_cache and bool(todo) and is_writable_folder(entry.path)
    if use_cache and todo and not store:
        log.warning("the embedding cache %s is not writable (or not a folder); embedding without saving the result there "
                    "(set --cache-dir or MEDPROBE_CACHE to a writable folder to keep it)", root)
    return Job(digests, description, key, root, entry, shards, cached, todo, store)


class _Rows:
    """The (N, D) result, allocated once when D is first known, so nothing is concatenated or copied twice."""

    def __init__(self, n):
        self.n = n
        self.rows = None

    def put(self, start, block):
        if self.rows is None:
            self.rows = np.empty((self.n, block.shape[1]), np.float32)
        self.rows[start : start + len(block)] = block


log = logging.getLogger(__name__)

PREFETCH = 2  # batches decoded ahead: enough to hide decoding, and memory stays O(batch)


def prefetch(images, transform, batches):
    """Yield `(batch, pixels)` for each `(tag, start, stop)` in `batches`, decoded by one background thread.

    One thread is enough: decoding and resizing take ~2 ms an image against ~15 ms of inference on a
    CPU, and more threads would only compete with the encoder's own threads for the same cores.
    Errors raised while decoding are re-raised here, in the caller's thread.
    """
    results = queue.Queue(PREFETCH)
    stopping = threading.Event()

    def put(item):
        while not stopping.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for batch in batches:
                _, start, stop = batch
                if not put((batch, _decode(images, transform, start, stop))):
                    return
            put((None, None))
        except BaseException as e:  # handed to the consumer, which raises it
            put((None, e))

    thread = threading.Thread(target=work, name="medprobe-decode", daemon=True)
    thread.start()
    try:
        while True:
            batch, pixels = results.get()
            if batch is None:
                if pixels is not None:
                    raise pixels
                return
            yield batch, pixels
    finally:
        stopping.set()
        thread.join()


def _decode(images, transform, start, stop):
    first = load_pixels(images, transform, start)
    pixels = np.empty((stop - start,) + first.shape, np.float32)
    pixels[0] = first
    for row, index in enumerate(range(start + 1, stop), 1):
        pixels[row] = load_pixels(images, transform, index)
    return pixels
