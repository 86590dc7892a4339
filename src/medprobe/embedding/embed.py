"""The embedding step: every image not yet in the store once through a frozen encoder, appended chunk by chunk."""

import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medprobe import __version__
from medprobe.core.costs import cpu_seconds
from medprobe.core.locations import cache_root
from medprobe.data.images import DECODING
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.store import Store, content_key

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D) float32, row i belongs to dataset record i
    key: str  # the content key of this matrix: the recipe and every image digest, in order
    path: str  # the store folder ("" when the store was not used)
    from_cache: bool  # True when no image had to be computed
    seconds: float
    description: dict
    cost: dict = field(default_factory=dict)  # what computing every image cost, wherever and whenever it was computed


def describe_job(encoder, transform):
    """Everything besides the pixels that changes the output; it keys the store."""
    return {
        "encoder": encoder.config.to_dict(),
        "preprocessing": transform.policy,
        "decoding": DECODING,  # how files become pixels (medprobe.data.images); a change must not reuse old embeddings
        "runtime": encoder.runtime,
        "weights": encoder.weights_id,  # a fingerprint when --weights was given
        "medprobe": __version__,
    }


def load_pixels(images, transform, index):
    """Decode and preprocess one image (a plain function, so it runs in threads or Ray tasks alike)."""
    return transform(images.load(index))


def embed(dataset, encoder, transform, options=None):
    """Embed every image of `dataset` with one encoder, reading what the store holds and appending the rest.

    Of `options` (an EmbedOptions) this uses the cache, batch size, shard size (rows per appended
    file: the most a kill can lose) and progress; the encoder was already built from the rest.

    >>> encoder, transform = create_encoder("efficientnet_lite0")
    >>> embed(load_dataset("retinamnist"), encoder, transform).vectors.shape
    (1600, 1280)
    """
    from tqdm.auto import tqdm

    options = options or EmbedOptions(encoder.config.name)
    started = time.perf_counter()
    job = plan_job(dataset, encoder, transform, options)
    bar = tqdm(total=len(job.digests), desc=f"embedding with {encoder.config.name}", unit="img", disable=not options.progress or None)
    bar.update(len(job.digests) - len(job.todo))
    if job.todo:
        encoder.prepare(n_images=len(job.todo), artifacts=job.artifacts)
    # Decoding runs one batch ahead in a thread while the encoder works; each chunk is appended the moment it completes.
    batches = [(c, chunk[b : b + options.batch_size]) for c, chunk in enumerate(job.chunks) for b in range(0, len(chunk), options.batch_size)]
    tick, tick_cpu, done = time.perf_counter(), cpu_seconds(), []
    for (c, rows), pixels in prefetch(dataset.images, transform, batches):
        vectors = encoder.embed_batch(pixels)
        job.put(rows, vectors)
        done.append(vectors)
        bar.update(len(rows))
        if sum(len(v) for v in done) == len(job.chunks[c]):
            now, now_cpu = time.perf_counter(), cpu_seconds()
            job.commit(c, np.concatenate(done), (now - tick) / len(job.chunks[c]), (now_cpu - tick_cpu) / len(job.chunks[c]))
            tick, tick_cpu, done = now, now_cpu, []
    bar.close()
    return job.result(encoder.config.embed_dim, started)


@dataclass
class Job:
    """One embedding job: what the store already holds, and the chunks of images still to compute.

    Planned the same way for the local and the Ray path, so both read, and append to, the same store.
    """

    digests: list  # per dataset row
    description: dict
    key: str
    store: Store
    use_cache: bool
    found: dict  # digest -> Stored
    todo: list  # dataset rows to compute: the first row of each missing digest, in dataset order
    chunks: list  # todo cut into appends of shard_size rows
    writable: bool  # computed chunks are appended (the cache is on and its folder writable)
    computed: dict = field(default_factory=dict)  # digest -> (vector, wall_s, cpu_s) computed by this job

    @property
    def artifacts(self):
        """Where a fast runtime may cache its exported graph: beside the stores, or a temporary folder."""
        return self.store.root if self.writable else Path(tempfile.gettempdir()) / "medprobe-artifacts"

    def put(self, rows, vectors):
        for row, vector in zip(rows, vectors):
            self.computed[self.digests[row]] = [vector, np.nan, np.nan]

    def commit(self, chunk, vectors, wall_per_image, cpu_per_image):
        """Record what the chunk cost per image, and append it to the store."""
        rows = self.chunks[chunk]
        for row in rows:
            self.computed[self.digests[row]][1:] = [wall_per_image, cpu_per_image]
        if self.writable:
            n = len(rows)
            self.store.append([self.digests[r] for r in rows], vectors, np.full(n, wall_per_image), np.full(n, cpu_per_image))

    def result(self, dim, started):
        """Every row's vector, from the store or this job, and the cost of all the dataset's distinct images."""
        vectors = np.empty((len(self.digests), dim), np.float32)
        walls, cpus = {}, {}
        for row, digest in enumerate(self.digests):
            if digest in self.computed:
                vectors[row], walls[digest], cpus[digest] = self.computed[digest]
            else:
                stored = self.found[digest]
                vectors[row], walls[digest], cpus[digest] = stored.vector, stored.wall_s, stored.cpu_s
        from_store = len(set(self.digests)) - len(self.computed)
        where = "this run" if not from_store else "the store (measured when computed)" if not self.computed else "this run and the store"
        unknown_wall = sum(1 for d in walls if not np.isfinite(walls[d]))
        unknown_cpu = sum(1 for d in cpus if not np.isfinite(cpus[d]))
        cost = {
            "wall_s": None if unknown_wall else float(sum(walls.values())),
            "cpu_s": None if unknown_cpu else float(sum(cpus.values())),
            "n_images": len(cpus), "computed_now": len(self.computed), "from_store": from_store,
            # CPU seconds are unknown for images embedded on Ray (workers' CPU is not visible to the driver) or by old versions
            "measured_in": where if not unknown_cpu else f"{where}; CPU seconds unknown for {unknown_cpu} images (embedded on Ray, "
                                                          "or before costs were recorded per image)",
        }
        return Embeddings(
            vectors=vectors,
            key=self.key,
            path=str(self.store.path) if self.use_cache and (self.writable or not self.computed) else "",
            from_cache=self.use_cache and not self.computed,
            seconds=time.perf_counter() - started,
            description=self.description,
            cost=cost,
        )


def plan_job(dataset, encoder, transform, options):
    """Hash the images, look every digest up in the store of this recipe, and cut the missing ones into chunks."""
    digests = dataset.content_digests()
    description = describe_job(encoder, transform)
    store = Store(cache_root(options.cache_dir), encoder.config.name, description)
    found = store.lookup(set(digests)) if options.use_cache else {}
    todo, seen = [], set(found)
    for row, digest in enumerate(digests):
        if digest not in seen:
            seen.add(digest)
            todo.append(row)
    chunks = [todo[i : i + options.shard_size] for i in range(0, len(todo), options.shard_size)]
    writable = options.use_cache and bool(todo) and store.writable()
    if options.use_cache and todo and not writable:
        log.warning("the embedding cache %s is not writable (or not a folder); embedding without saving the result there "
                    "(set --cache-dir or MEDPROBE_CACHE to a writable folder to keep it)", store.root)
    return Job(list(digests), description, content_key(digests, description), store, options.use_cache, found, todo, chunks, writable)


PREFETCH = 2  # batches decoded ahead: enough to hide decoding, and memory stays O(batch)


def prefetch(images, transform, batches):
    """Yield `(batch, pixels)` for each `(tag, rows)` in `batches`, decoded by one background thread.

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
                if not put((batch, _decode(images, transform, batch[1]))):
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


def _decode(images, transform, rows):
    first = load_pixels(images, transform, rows[0])
    pixels = np.empty((len(rows),) + first.shape, np.float32)
    pixels[0] = first
    for i, index in enumerate(rows[1:], 1):
        pixels[i] = load_pixels(images, transform, index)
    return pixels
