"""Repeated runs (`medprobe run --seeds N`): the random parts redone with seeds s..s+N-1, and their spread.

What a seed moves: the splits medprobe draws (missing val/test splits, or all three with
`--resplit`), the probe's seed (CV folds when there is no usable val split, LinearSVC's
random_state), and the bootstrap's draws. The dataset's own splits never move, and logreg and knn are
deterministic given their data. So which variance the spread measures depends on the run, and
the record says which: sampling variance (the test set itself was drawn anew), method variance
on a fixed test set, or none at all.

The dataset is scanned (every image decoded and checked) once, and embeddings are computed once: every seed after
the first draws its splits on a copy of the scanned dataset and reads the embedding store.
"""

import logging
from dataclasses import replace
from pathlib import Path

from medprobe.core.errors import MedprobeError
from medprobe.core.files import atomic_write_text
from medprobe.embedding.fusion import scan_for
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.ray import on_cluster
from medprobe.probes.spec import ProbeSpec
from medprobe.reporting.repeats import summarize
from medprobe.reporting.results import RESULTS, SUMMARY, write_json
from medprobe.workflows.run import check_before_images, run

log = logging.getLogger(__name__)


def run_seeds(data_spec, options=None, probe_spec=None, evaluation=None, out=None, n_seeds=5):
    """Run the experiment with seeds probe_spec.seed + 0..n_seeds-1; the first seed's run is the result (and the folder),
    with `repeats` added.

    >>> spec = DataSpec("ham10000_melnv", metadata="metadata.csv", group="lesion_id", resplit=True)
    >>> result = run_seeds(spec, EmbedOptions(), ProbeSpec("logreg"), out="runs/ham_seeds", n_seeds=5)
    >>> result.repeats["test"]["auc"]          # {'mean': ..., 'sd': ..., 'min': ..., 'max': ..., 'n': 5}
    >>> result.repeats["spread_is"]            # 'sampling and method variance': every seed drew its own test set
    """
    if n_seeds < 2:
        raise MedprobeError(f"--seeds must be at least 2 to measure a spread, got {n_seeds}")
    probe_spec = probe_spec or ProbeSpec()
    first = probe_spec.seed
    seeds = list(range(first, first + n_seeds))
    if options is not None and not options.use_cache:
        log.warning("--no-cache with --seeds: the embeddings are computed again for each of the %d seeds", n_seeds)
    results = []
    options = options or EmbedOptions()
    check_before_images(options, probe_spec, out)
    with on_cluster(options.ray):  # with --ray, one Ray session for the reading pass and every seed
        scanned = scan_for(data_spec, options)  # every image read once; each seed draws its splits on a copy
        for seed in seeds:
            # Only the first seed writes the folder: it is an ordinary run folder at every moment, even if the loop is interrupted.
            results.append(run(replace(data_spec, split_seed=seed), options, replace(probe_spec, seed=seed), evaluation,
                               out=out if seed == first else None, scanned=scanned))
            log.info("seed %d: test AUC %s", seed, results[-1].metrics["test"]["auc"])
    main = results[0]
    main.repeats = summarize(seeds, results)
    if out is not None:
        write_json(Path(out) / RESULTS, main.to_json())
        atomic_write_text(Path(out) / SUMMARY, main.summary_markdown())
    return main
