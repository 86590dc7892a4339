"""The embedding step: every image not yet in the store once through a frozen encoder, appended chunk by chunk."""

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from medprobe import __version__
from medprobe.core.cores import usable_cores
from medprobe.core.costs import cpu_seconds
from medprobe.core.locations import cache_root, job_artifacts
from medprobe.data.images import DECODING
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.store import Store, content_key
from medprobe.encoders.base import StreamingEncoder

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
    # Each chunk is appended the moment it completes.
    batches = [(c, chunk[b : b + options.batch_size]) for c, chunk in enumerate(job.chunks) for b in range(0, len(chunk), options.batch_size)]
    tick, tick_cpu, done = time.perf_counter(), cpu_seconds(), []
    for (c, rows), vectors in embedded_batches(encoder, decoded_batches(dataset.images, transform, batches, overlap=options.device != "cpu")):
        job.put(rows, vectors)
        done.append(vectors)
        bar.update(len(rows))
        if sum(len(v) for v in done) == len(job.chunks[c]):
            now, now_cpu = time.perf_counter(), cpu_seconds()
            job.commit(c, np.concatenate(done), (now - tick) / len(job.chunks[c]), (now_cpu - tick_cpu) / len(job.chunks[c]))
            tick, tick_cpu, done = now, now_cpu, []
    bar.close()
    return job.result(encoder.config.embed_dim, started)


def embedded_batches(encoder, batches):
    """`(tag, vectors)` for each `(tag, pixels)`: streamed when the encoder can take a batch before the last is done.

    OpenVINO's streams are single-threaded, so decoding the next batch beside them stalls no barrier; with its
    requests kept in flight across batches, openvino-int8 ran 7-14 % faster end to end on 512 HAM10000 JPEGs in a
    side-by-side prototype (docs/speed.md). ONNX Runtime takes its batches in turn (see decoded_batches).
    """
    if isinstance(encoder, StreamingEncoder):
        return encoder.embed_batches(batches)
    return ((tag, encoder.embed_batch(pixels)) for tag, pixels in batches)


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
        return job_artifacts(str(self.store.root) if self.store.remote else self.store.root, self.writable)

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
    # int8 calibrates on a sample fixed by the whole data set's content, so it is known (and keyed) before any lookup
    encoder.calibrate_on(digests, lambda rows: resized_rows(dataset.images, transform, rows))
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


PREFETCH = 2  # batches decoded ahead while a GPU works: enough to hide decoding, and memory stays O(batch)


def decoded_batches(images, transform, batches, overlap=False, workers=None):
    """Yield `(batch, pixels)` for each `(tag, rows)` in `batches`, each batch decoded by a pool of threads.

    On a CPU (`overlap` False) decoding and inference take turns, each with every core. Measured on 2 cores
    (EfficientNet-Lite0, HAM10000 JPEGs, ONNX Runtime, best of 3, load ~4): end to end 0.94 of the
    pure-inference rate, against 0.78 when one thread decoded the next batch beside inference, because a
    decode thread that takes a core stalls every intra-op thread of the encoder at its next barrier.
    With a GPU doing the inference (`overlap` True) the cores are free, so decoding runs PREFETCH batches ahead.
    Errors raised while decoding are re-raised here, in the caller's thread.
    """
    with ThreadPoolExecutor(workers or usable_cores(), thread_name_prefix="medprobe-decode") as pool:
        if not overlap:
            for batch in batches:
                yield batch, _decode(images, transform, batch[1], pool)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="medprobe-decode-ahead") as ahead:
            pending = deque()
            for batch in batches:
                pending.append((batch, ahead.submit(_decode, images, transform, batch[1], pool)))
                if len(pending) > PREFETCH:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()


def _decode(images, transform, rows, pool):
    """One batch: each image decoded, resized and normalised straight into its row of the float32 batch."""
    first = transform.resized(images.load(rows[0]))
    pixels = np.empty((len(rows), first.shape[2]) + first.shape[:2], np.float32)
    transform.normalise(first, pixels[0])

    def one(i):
        transform.normalise(transform.resized(images.load(rows[i])), pixels[i])

    list(pool.map(one, range(1, len(rows))))
    return pixels


def resized_rows(images, transform, rows):
    """The resized uint8 (N, H, W, C) pixels of dataset `rows`, decoded with every core (e.g. an int8 calibration sample)."""
    with ThreadPoolExecutor(usable_cores(), thread_name_prefix="medprobe-decode") as pool:
        return np.stack(list(pool.map(lambda row: transform.resized(images.load(row)), rows)))


def decode_rows(images, transform, rows):
    """The float32 pixels of dataset `rows`, decoded with every core (e.g. an int8 calibration sample)."""
    with ThreadPoolExecutor(usable_cores(), thread_name_prefix="medprobe-decode") as pool:
        return _decode(images, transform, rows, pool)
