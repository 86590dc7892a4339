"""The embedding step on Ray: the same store, the same rows, from the same `embed_batch`.

A thin adapter over `medprobe.embedding.embed`, in Ray Data's batch-inference pattern:

    records (index, path, sha256) --decode_batch--> pixels --Embedder--> embeddings

`decode_batch` is a plain function over `medprobe.embedding.embed.load_pixels`; `Embedder` loads the encoder
once per actor and calls `encoder.embed_batch`, exactly as the local path does. The driver hashes
the images, looks every digest up in the store (so a stopped job resumes), and appends each chunk of
missing images to the store as soon as all its rows are back.
"""

import time
from contextlib import contextmanager

import numpy as np

from medprobe.core.errors import ClusterError, MedprobeError
from medprobe.embedding.embed import load_pixels, plan_job
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import create_encoder
from medprobe.encoders.runtimes import INT8

LOCAL = "local"  # start a private Ray instance for the job; anything else is an address to attach to
INSTALL_HINT = "--ray needs Ray Data, which is not installed: pip install 'medprobe[ray]'"


def decode_batch(batch, images, transform):
    """Preprocessing as a plain function: record indices in, the local path's float32 (B, C, H, W) pixels out."""
    pixels = np.stack([load_pixels(images, transform, int(i)) for i in batch["index"]])
    return {"index": batch["index"], "pixels": pixels}


class Embedder:
    """The model as a Ray Data callable class: the encoder loads once per actor, each call embeds one batch.

    >>> embedder = Embedder(EmbedOptions("efficientnet_lite0"))
    >>> embedder({"index": np.arange(2), "pixels": pixels})["embedding"].shape
    (2, 1280)
    """

    def __init__(self, options, n_images=None, artifacts=None):
        self.encoder, _ = create_encoder(options.encoder, weights=options.weights, device=options.device, runtime=options.runtime)
        self.encoder.prepare(n_images=n_images, artifacts=artifacts)  # as embed() does: the job's size picks the runtime

    def __call__(self, batch):
        pixels = np.require(batch["pixels"], np.float32, "CW")  # Ray hands out read-only views; torch warns on those
        return {"index": batch["index"], "embedding": self.encoder.embed_batch(pixels)}


def embed_on_ray(dataset, options=None, address=LOCAL, concurrency=None):
    """`medprobe.embedding.embed.embed` on a Ray cluster: the same store, the same vectors, the same resume behaviour.

    `options` is the same EmbedOptions the local path takes (one encoder, not a fusion).
    `address` is "local" (a Ray started for this job), "auto" or "ray://head:10001"; when Ray is
    already initialised in this process that session is used. `concurrency` is the number of
    encoder actors (default: one per CPU of the cluster; each also decodes its own batches).
    The cost recorded per image is the driver's wall time; the workers' CPU seconds are not
    visible to it and are recorded as unknown.

    >>> embed_on_ray(load_dataset("ham.csv"), EmbedOptions("efficientnet_lite0"), address="auto").vectors.shape
    (2000, 1280)
    """
    from tqdm.auto import tqdm

    options = options or EmbedOptions()
    started = time.perf_counter()
    if options.runtime in INT8:
        # the actors would each calibrate on their own first batch, not on the job's sample that keys the store
        raise ClusterError(f"--runtime {options.runtime} is not available on Ray yet (its int8 calibration is chosen per job); "
                           "embed without Ray, or use --runtime auto or openvino-bf16 on Ray")
    ray = _import_ray()  # before hashing a million files, say that Ray is missing
    # lazy: the driver builds the encoder for its config and the store's key, but never runs it
    model, transform = create_encoder(options.encoder, weights=options.weights, device=options.device, runtime=options.runtime)
    job = plan_job(dataset, model, transform, options)
    bar = tqdm(total=len(job.digests), desc=f"embedding with {model.config.name} on Ray", unit="img", disable=not options.progress or None)
    bar.update(len(job.digests) - len(job.todo))
    if job.todo:
        chunk_of = {row: c for c, chunk in enumerate(job.chunks) for row in chunk}
        waiting = [set(chunk) for chunk in job.chunks]
        embedder = {"options": options, "n_images": len(job.todo), "artifacts": job.artifacts}
        tick = time.perf_counter()
        with _session(ray, address):
            batches = _pipeline(ray, dataset, job.digests, job.chunks, embedder, transform, concurrency, options.batch_size)
            for batch in _raising_user_errors(batches):
                rows, vectors = batch["index"].tolist(), batch["embedding"]
                job.put(rows, vectors)
                for row in rows:
                    waiting[chunk_of[row]].discard(row)
                for c in sorted({chunk_of[row] for row in rows}):
                    if not waiting[c]:  # every row of the chunk is back: append it, in the chunk's own order
                        now = time.perf_counter()
                        chunk = job.chunks[c]
                        job.commit(c, np.stack([job.computed[job.digests[r]][0] for r in chunk]), (now - tick) / len(chunk), float("nan"))
                        waiting[c] = None
                        tick = now
                bar.update(len(rows))
        missing = [c for c, rest in enumerate(waiting) if rest]
        if missing:
            raise ClusterError(f"the Ray job ended without returning every image of chunks {missing}; run it again to finish them")
    bar.close()
    return job.result(model.config.embed_dim, started)


def _pipeline(ray, dataset, digests, chunks, embedder, transform, concurrency, batch_size):
    """The Ray Data plan: one block of records per local batch, then decode -> embed in a pool of actors."""
    import pyarrow as pa

    blocks = []
    for chunk in chunks:
        # Blocks are cut like the local path's batches and each is embedded whole (batch_size=None below):
        # CPU kernels may round differently for another batch size, and the output must match bit for bit.
        for first in range(0, len(chunk), batch_size):
            rows = chunk[first : first + batch_size]
            blocks.append(
                pa.table(
                    {
                        "index": pa.array(rows, pa.int64()),
                        "path": [dataset.images.describe(i) for i in rows],  # for people reading the plan
                        "sha256": [digests[i] for i in rows],
                    }
                )
            )
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Ray Data fuses the two steps into one actor per CPU, so pixels never cross the object store.
    # File datasets ship only their paths to the workers; in-memory (npz) arrays go once into the object store.
    # Failures use Ray Data's defaults: a task on a lost worker reruns (max_retries=3), a dead actor restarts
    # and its in-flight batches rerun (max_restarts=-1, max_task_retries=-1). Ray 2.60 deprecates setting
    # them per call, so they are left at those defaults; tests/test_ray.py kills an actor to hold them to it.
    records = ray.data.from_arrow(blocks)
    pixels = records.map_batches(
        decode_batch,
        fn_kwargs={"images": dataset.images, "transform": transform},
        batch_size=None,
    )
    embedded = pixels.map_batches(
        Embedder,
        fn_constructor_kwargs=embedder,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        batch_size=None,
    )
    return embedded.iter_batches(batch_size=None, batch_format="numpy")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ClusterError(INSTALL_HINT) from e
    return ray


@contextmanager
def _session(ray, address):
    """Use the process's Ray session if there is one; else start (LOCAL) or attach to one for this job only."""
    context = ray.data.DataContext.get_current()
    # medprobe's own progress bar instead of Ray's; a worker's ImageError reaches the driver as itself.
    settings = {"enable_progress_bars": False, "raise_original_map_exception": True}
    saved = {name: getattr(context, name, None) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    owned = not ray.is_initialized()
    try:
        if owned:
            _init(ray, address)
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        if owned:
            ray.shutdown()


def _init(ray, address):
    try:
        if address == LOCAL:
            ray.init(address=LOCAL, include_dashboard=False, logging_level="WARNING")
        else:
            ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ClusterError(
            f"cannot attach to the Ray cluster at {address!r} ({e}); check the address "
            "(e.g. auto, or ray://head:10001), or use --ray alone for a local Ray"
        ) from e


def _raising_user_errors(batches):
    """Re-raise a medprobe error from a worker (an unreadable image) as itself, without Ray's traceback around it."""
    try:
        yield from batches
    except Exception as e:
        cause = getattr(e, "cause", None)  # a RayTaskError carries the worker's exception here
        if isinstance(cause, MedprobeError):
            raise cause from None
        raise
