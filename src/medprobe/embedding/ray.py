"""The embedding step on Ray: the same store, the same rows, from the same `embed_batch`, with the workers reading.

A thin adapter over `medprobe.embedding.embed`, in Ray Data's batch-inference pattern:

    blocks of dataset rows (index) --ShardEmbedder--> read each file once, hash it, skip what the store holds,
                                                      decode + embed the rest, append it to the store

The driver lists the dataset and never reads an image: it cuts the rows into blocks laid out like the local
path's batches, and reads back only what the workers computed (and, at the end, the store's rows of the rest).
`ShardEmbedder` loads the encoders once per actor and calls `encoder.embed_batch`, exactly as the local path
does; it is unit-testable on a plain dict without Ray. A fusion ('a+b') is embedded in one pass: each file is
read and decoded once, and every part embeds what its own store lacks.
"""

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from medprobe.core.cores import THREADS_VARIABLE
from medprobe.core.errors import ClusterError, ImageError, MedprobeError
from medprobe.core.locations import cache_root, job_artifacts
from medprobe.data.scan import drop_unreadable
from medprobe.embedding.embed import Job, describe_job
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.store import Store, content_key
from medprobe.encoders import create_encoder
from medprobe.encoders.runtimes import INT8

log = logging.getLogger(__name__)

LOCAL = "local"  # start a private Ray instance for the job; anything else is an address to attach to
INSTALL_HINT = "--ray needs Ray Data, which is not installed: pip install 'medprobe[ray]'"
# Cores per actor at most: one ONNX Runtime session gains little beyond 8 intra-op threads on batches of 64,
# while every further actor on a big node adds a full model's worth of throughput.
MAX_CPUS_PER_ACTOR = 8


@dataclass(frozen=True)
class Part:
    """One encoder of the job as a worker needs it: how to build it, and the store of its recipe."""

    name: str
    options: EmbedOptions  # this part's encoder alone
    description: dict  # describe_job(...) on the driver: the store key every worker must use


def embed_on_ray(dataset, options=None, address=LOCAL, concurrency=None):
    """`medprobe.embedding.embed.embed` on a Ray cluster, for one encoder: the same store, the same vectors.

    `address` is "local" (a Ray started for this job), "auto" or "ray://head:10001"; when Ray is already
    initialised in this process that session is used. `concurrency` is the number of encoder actors (default:
    from the cluster's CPUs, see `actor_layout`). A fusion goes through `embed_spec` with EmbedOptions(ray=...).

    >>> embed_on_ray(load_dataset("ham.csv"), EmbedOptions("efficientnet_lite0"), address="auto").vectors.shape
    (2000, 1280)
    """
    options = replace(options or EmbedOptions(), ray=address, ray_actors=concurrency)
    model, transform = create_encoder(options.encoder, weights=options.weights, device=options.device, runtime=options.runtime)
    return embed_parts_on_ray(dataset, [(model, transform)], options)[0]


def embed_parts_on_ray(dataset, models, options):
    """One Embeddings per `(encoder, transform)` of `models` (the parts of a fusion), all computed in one pass on Ray.

    The encoders here are only configured (lazy): the driver takes their recipes for the store keys; the
    workers build and run their own. Costs: each computed image's wall time is measured on its worker
    (Ray's start-up is not in it; `cost["ray"]` reports it apart); the workers' CPU seconds are not
    visible to the driver and are recorded as unknown. A file the workers cannot read or decode stops the command
    after the job, with every such file listed (what was embedded is in the store). When the dataset's digests are
    known (`read_on_cluster` read it) and every store holds them all, no job is started: the one look-up a run makes
    anyway reads them here.
    """
    started = time.perf_counter()
    job = _RayJob(models, options)
    wanted = set(dataset.digests or ())
    found = [store.lookup(wanted) for store in job.stores] if wanted and options.use_cache else None
    if found and all(len(f) == len(wanted) for f in found):
        digests, computed, cluster = dataset.digests, [{} for _ in job.parts], {}
    else:
        digests, computed, found, bad, cluster = job.run(dataset)
        drop_unreadable(dataset, bad, "fail")
    results = []
    for p, (part, store) in enumerate(zip(job.parts, job.stores)):
        dim = models[p][0].config.embed_dim
        embedding_job = Job(list(digests), part.description, content_key(digests, part.description), store, options.use_cache,
                            found[p], todo=[], chunks=[], writable=job.writable[p], computed=computed[p])
        result = embedding_job.result(dim, started)
        # One pass embedded every part: its wall time is shared out, so a fusion's (the parts' sum) is the pass's.
        result.seconds = (result.seconds - cluster.get("start_s", 0.0)) / len(job.parts)
        result.cost["ray"] = dict(cluster) if cluster else None
        if computed[p]:
            result.cost["measured_in"] = result.cost["measured_in"].replace("this run", "this run (wall time on the Ray workers)", 1)
        results.append(result)
    return results


def read_on_cluster(options, encoders):
    """The pre-scan of `DataSpec.scan(read=...)` done by the Ray job that embeds the images with every encoder named in
    `encoders`: the workers read each file once, hash it, decode and embed what the stores lack, and append it. This
    process lists the dataset and never reads an image. Unreadable files are listed (on_error "fail", after the job:
    what was embedded stays in the store) or their rows left out and recorded ("skip"), as the local pre-scan does.
    A file the store already holds is not decoded again: the same bytes decoded when they were stored.

    >>> data, scanned = DataSpec("s3://bucket/ham/manifest.csv").scan(read=read_on_cluster(options, ["efficientnet_lite0"]))
    """
    def read(dataset, on_error):
        started = time.perf_counter()
        models = [create_encoder(name, weights=options.weights, device=options.device, runtime=options.runtime) for name in encoders]
        dataset.digests, computed, _, bad, cluster = _RayJob(models, options).run(dataset)
        dataset, report = drop_unreadable(dataset, bad, on_error, check=False)
        report.seconds = time.perf_counter() - started - cluster.get("start_s", 0.0)
        report.on_ray = {**cluster, "embedded_now": sum(digest in done for done in computed for digest in dataset.digests)}
        return dataset, report

    return read


class _RayJob:
    """The parts' stores as the driver sees them (what each holds, whether it takes writes), and the pass over a
    dataset's rows on the cluster that fills them."""

    def __init__(self, models, options):
        for model, _ in models:
            if model.mode in INT8:
                # the actors would each calibrate on their own first batch, not on the job's sample that keys the store
                raise ClusterError(f"--runtime {options.runtime} is not available on Ray yet (its int8 calibration is chosen per "
                                   "job); embed without Ray, or use --runtime auto or openvino-bf16 on Ray")
        self.options, self.root = options, cache_root(options.cache_dir)
        self.parts = [Part(model.config.name, replace(options, encoder=model.config.name, ray=None), describe_job(model, transform))
                      for model, transform in models]
        self.stores = [Store(self.root, part.name, part.description) for part in self.parts]
        self.writable = [options.use_cache and store.writable() for store in self.stores]
        for store, ok in zip(self.stores, self.writable):
            if options.use_cache and not ok:
                log.warning("the embedding cache %s is not writable (or not a folder); embedding on Ray without saving the result "
                            "there (set --cache-dir or MEDPROBE_CACHE to a writable folder to keep it)", store.root)

    def run(self, dataset):
        """(digests, computed, found, bad, cluster): every row's digest as the workers computed it, what they embedded
        ({digest: [vector, wall_s, nan]} per part), what the stores held of the rest, {row: ImageError} of the files
        they could not read or decode, and the cluster's layout and start-up seconds."""
        from tqdm.auto import tqdm

        options, parts, stores = self.options, self.parts, self.stores
        # What the stores hold is read from their files' digest columns (store metadata, not images): the workers skip those.
        held = [_held_digests(store) if options.use_cache else (frozenset(), frozenset()) for store in stores]
        ray = _import_ray()
        n = len(dataset)
        digests, computed, bad = [None] * n, [{} for _ in parts], {}
        bar = tqdm(total=n, desc=f"embedding with {'+'.join(p.name for p in parts)} on Ray", unit="img",
                   disable=not options.progress or None)
        cluster = {}
        rows = list(range(n))
        with _session(ray, options.ray or LOCAL, cluster):
            layout = actor_layout(ray, options.ray_actors)
            cluster.update(layout)
            found = [{} for _ in parts]
            for attempt in range(2):  # a second pass only when a store file went bad between the workers' look-up and ours
                worker_args = {"images": dataset.images, "parts": parts, "root": str(self.root), "writable": self.writable,
                               "held": held, "use_cache": options.use_cache, "n_images": n, "threads": layout["cpus_per_actor"]}
                blocks = job_blocks(rows, options.shard_size, options.batch_size, layout["actors"])
                for out in _raising_user_errors(_pipeline(ray, blocks, worker_args, layout)):
                    for i, (row, digest, error) in enumerate(zip(out["index"].tolist(), out["sha256"].tolist(), out["error"].tolist())):
                        digests[row] = digest
                        if error:
                            bad[row] = ImageError(dataset.images.describe(row), error)
                        for p in range(len(parts)):
                            if out[f"computed_{p}"][i]:
                                computed[p][digest] = [out[f"embedding_{p}"][i], float(out["wall_s"][i]), float("nan")]
                    bar.update(len(out["index"]))
                if None in digests:
                    raise ClusterError(f"the Ray job ended without returning {digests.count(None)} of {n} images; run it again to finish them")
                # The rows the workers skipped are read from the stores here, checked as in a local run.
                found = [store.lookup({d for r, d in enumerate(digests) if r not in bad and d not in done}) if options.use_cache else {}
                         for store, done in zip(stores, computed)]
                rows = [r for r in range(n) if r not in bad
                        and any(digests[r] not in found[p] and digests[r] not in computed[p] for p in range(len(parts)))]
                if not rows:
                    break
                log.warning("%d images were not in the store after all (a damaged file was removed); embedding them again", len(rows))
                held = [(frozenset(f), frozenset(p.name for p in store.files())) for f, store in zip(found, stores)]  # intact just now
                bar.total += len(rows)
            else:
                raise ClusterError(f"{len(rows)} images are still missing from the store after a second pass; run the command again")
        bar.close()
        return digests, computed, found, bad, cluster


@contextmanager
def on_cluster(address):
    """Ray attached (or started, for "local") for a whole command, so embedding and the probe's selection share one
    session; yields {"start_s": seconds Ray took to start or attach} (0 when already running), nothing to do for None.

    >>> with on_cluster("auto") as cluster:
    ...     run(...)
    """
    cluster = {"start_s": 0.0}
    if address is None:
        yield cluster
        return
    ray = _import_ray()
    owned = not ray.is_initialized()
    tick = time.perf_counter()
    if owned:
        _init(ray, address)
    cluster["start_s"] = time.perf_counter() - tick
    try:
        yield cluster
    finally:
        if owned:
            ray.shutdown()


def actor_layout(ray, actors=None):
    """How many encoder actors, each with how many CPUs, from the cluster's resources (or `actors` given).

    Every node gets actors of `cpus_per_actor` CPUs (the smallest node's CPU count, at most MAX_CPUS_PER_ACTOR),
    as many as fit on it; each actor's runtime then uses exactly those cores, so none is oversubscribed.
    """
    nodes = [int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    nodes = [c for c in nodes if c > 0] or [1]
    per_actor = max(1, min(min(nodes), MAX_CPUS_PER_ACTOR))
    fit = sum(c // per_actor for c in nodes)
    if actors is None:
        actors = max(1, fit)
    elif actors > fit:  # more actors than fit at this size: smaller ones, so all of them are placed
        per_actor = max(1, sum(nodes) // actors)
    return {"actors": int(actors), "cpus_per_actor": int(per_actor), "nodes": len(nodes), "cluster_cpus": sum(nodes)}


def job_blocks(rows, shard_size, batch_size, actors):
    """`rows` cut as the local path cuts an empty store's job (chunks of shard_size, batches of batch_size in each),
    the batches grouped into blocks that never cross a chunk: one block is one actor call and one appended file.

    Blocks hold whole local batches, so with nothing stored every batch an encoder sees is the local path's: CPU
    kernels may round a row differently in a batch of another size, and the vectors must match bit for bit. Small
    jobs get blocks of one batch, so that every actor has work.
    """
    chunks = [rows[c : c + shard_size] for c in range(0, len(rows), shard_size)]
    batches = [[chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)] for chunk in chunks]
    per_block = max(1, sum(map(len, batches)) // (2 * actors))
    return [[row for batch in in_chunk[b : b + per_block] for row in batch] for in_chunk in batches for b in range(0, len(in_chunk), per_block)]


class ShardEmbedder:
    """The model as a Ray Data callable class: encoders load once per actor; each call takes one block of rows.

    For each row: read the file once and hash it; rows whose digest a part's store holds are skipped for that
    part; the rest are decoded once, embedded by every part that lacks them, in the local path's batches, and
    appended to that part's store as one file.

    >>> embedder = ShardEmbedder(data.images, [Part("efficientnet_lite0", EmbedOptions("efficientnet_lite0"), description)], ...)
    >>> embedder({"index": np.arange(64)})["embedding_0"].shape
    (64, 1280)
    """

    def __init__(self, images, parts, root, writable, held, use_cache=True, n_images=None, threads=1):
        os.environ[THREADS_VARIABLE] = str(threads)  # before any runtime session is made: it sizes its pool from this
        self.torch_sized = False  # PyTorch is imported and sized to these CPUs when the actor first embeds (_load_torch)
        self.images, self.parts, self.writable, self.use_cache, self.threads = images, parts, writable, use_cache, threads
        self.held = [set(digests) for digests, _ in held]  # what each part's store holds, as far as this actor knows
        self.files = [set(names) for _, names in held]
        self.models, self.stores = [], []
        for part, ok in zip(parts, writable):
            o = part.options
            model, transform = create_encoder(o.encoder, weights=o.weights, device=o.device, runtime=o.runtime)
            # as embed() does: the job's size picks the runtime, and an exported graph is kept beside the stores
            model.prepare(n_images=n_images, artifacts=job_artifacts(root, ok))
            self.models.append((model, transform))
            self.stores.append(Store(root, part.name, part.description))
        self.batch_size = parts[0].options.batch_size
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="medprobe-read")

    def __call__(self, batch):
        tick = time.perf_counter()
        rows = [int(i) for i in np.concatenate([np.atleast_1d(r) for r in batch["index"]])]  # one block's rows (or a plain list)
        contents = list(self.pool.map(lambda row: _returned(self.images.content, row), rows))  # each file read once, here
        errors = [c.reason if isinstance(c, ImageError) else "" for c in contents]  # why a file cannot be read or decoded
        digests = ["" if error else hashlib.sha256(c).hexdigest() for c, error in zip(contents, errors)]
        out = {"index": np.asarray(rows, np.int64), "sha256": np.asarray(digests, dtype=object)}
        for p, store in enumerate(self.stores if self.use_cache else ()):
            # Files added since this actor last looked (other actors; a lost one whose block this is, rerun): skipped too.
            digests_added, names = _held_digests(store, skip=self.files[p])
            self.held[p] |= digests_added
            self.files[p] |= names
        todo = []  # per part: positions in the block to compute (the first of each digest it lacks)
        for held in self.held:
            seen, mine = set(), []
            for i, digest in enumerate(digests):
                if not errors[i] and digest not in held and digest not in seen:
                    seen.add(digest)
                    mine.append(i)
            todo.append(mine)
        vectors = [np.zeros((len(rows), model.config.embed_dim), np.float32) for model, _ in self.models]
        for positions, group in _same_rows(todo):
            for first in range(0, len(positions), self.batch_size):
                at = positions[first : first + self.batch_size]
                decoded = list(self.pool.map(lambda i: _returned(self.images.load_content, rows[i], contents[i]), at))
                for i, image in zip(at, decoded):
                    if isinstance(image, ImageError):
                        errors[i] = image.reason
                at = [i for i in at if not errors[i]]
                images = [image for image in decoded if not isinstance(image, ImageError)]
                for p in group if at else ():
                    self._load_torch()
                    model, transform = self.models[p]
                    pixels = np.stack(list(self.pool.map(transform, images)))
                    vectors[p][at] = model.embed_batch(pixels)
        failed = {digest: error for digest, error in zip(digests, errors) if error and digest}  # its copies in the block too
        errors = [error or failed.get(digest, "") for digest, error in zip(digests, errors)]
        todo = [[i for i in mine if not errors[i]] for mine in todo]
        n_computed = len(set().union(*map(set, todo)))
        wall = (time.perf_counter() - tick) / max(1, n_computed)
        for p, store in enumerate(self.stores):
            out[f"computed_{p}"] = np.isin(np.arange(len(rows)), todo[p])
            out[f"embedding_{p}"] = vectors[p]
            if todo[p] and self.writable[p]:
                n = len(todo[p])
                path = store.append([digests[i] for i in todo[p]], vectors[p][todo[p]], np.full(n, wall), np.full(n, np.nan))
                self.files[p].add(path.name)
                self.held[p].update(digests[i] for i in todo[p])
        out["wall_s"] = np.full(len(rows), wall)
        out["error"] = np.asarray(errors, dtype=object)
        return out

    def _load_torch(self):
        """PyTorch sized to this actor's CPUs before its first embedding, and imported only then: an actor whose rows
        are all in the stores (a rerun over a filled store) never loads it (about 2 CPU-s and its memory per actor)."""
        if not self.torch_sized:
            import torch

            torch.set_num_threads(self.threads)
            self.torch_sized = True


def _returned(function, *args):
    """function(*args), or the ImageError it raised: returned, so that one bad file does not stop its block."""
    try:
        return function(*args)
    except ImageError as e:
        return e


def _same_rows(todo):
    """[(positions, [parts])]: parts lacking the same rows share one decode of each image."""
    groups = {}
    for p, positions in enumerate(todo):
        if positions:
            groups.setdefault(tuple(positions), []).append(p)
    return [(list(positions), parts) for positions, parts in groups.items()]


def _held_digests(store, skip=()):
    """(digests, file names): every digest in the store's files but `skip` (their digest columns only).

    A file that cannot be read is left to `lookup`, which drops it; its images are computed again.
    """
    import pyarrow.parquet as pq

    held, names = set(), set()
    for path in store.files():
        if path.name in skip:
            continue
        names.add(path.name)
        try:
            # A local file or an object (s3://): only its footer and digest column are read. One thread, as the store
            # reads: pyarrow's pool torn down at exit aborts the process ("terminate called without an active exception").
            with path.open("rb") as file:
                held.update(pq.read_table(file, columns=["image_sha256"], page_checksum_verification=True, use_threads=False).column(0).to_pylist())
        except Exception:  # noqa: BLE001 -- torn or foreign: pyarrow raises many types
            continue
    return frozenset(held), frozenset(names)


def _pipeline(ray, blocks, worker_args, layout):
    """The Ray Data plan: one block of row indices per actor call, read -> hash -> look up -> decode -> embed -> append."""
    # One row per block, holding the block's row indices: from_items builds its blocks here, with none of the metadata
    # tasks from_arrow runs on the workers (which Ray 2.60 was seen to abort on a loaded machine, losing their objects).
    # File datasets ship only their paths to the workers; in-memory (npz) arrays go once into the object store.
    # Failures use Ray Data's defaults: a task on a lost worker reruns (max_retries=3), a dead actor restarts
    # and its in-flight blocks rerun (max_restarts=-1, max_task_retries=-1). A rerun block finds what the lost
    # worker appended already in no look-up, so it may append those rows again: the store keeps the first.
    records = ray.data.from_items([{"index": np.asarray(block, np.int64)} for block in blocks], override_num_blocks=len(blocks))
    embedded = records.map_batches(
        ShardEmbedder,
        fn_constructor_kwargs=worker_args,
        compute=ray.data.ActorPoolStrategy(size=layout["actors"]),
        num_cpus=layout["cpus_per_actor"],
        batch_size=1,
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
def _session(ray, address, cluster):
    """Use the process's Ray session if there is one; else start (LOCAL) or attach to one for this job only.

    `cluster["start_s"]` gets the seconds Ray took to start or attach: reported apart from the embedding.
    """
    context = ray.data.DataContext.get_current()
    # medprobe's own progress bar instead of Ray's; a worker's ImageError reaches the driver as itself.
    settings = {"enable_progress_bars": False, "raise_original_map_exception": True}
    saved = {name: getattr(context, name, None) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    # Ray Data logs each step, and a failed block with its traceback, before raising it: the error reaches the user
    # once, from here (a worker's ImageError as its one line, anything else with its traceback).
    ray_data_log = logging.getLogger("ray.data")
    saved_level = ray_data_log.level
    ray_data_log.setLevel(logging.CRITICAL)
    owned = not ray.is_initialized()
    tick = time.perf_counter()
    try:
        if owned:
            _init(ray, address)
        cluster["start_s"] = time.perf_counter() - tick
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        ray_data_log.setLevel(saved_level)
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
