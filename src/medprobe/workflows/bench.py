"""`medprobe bench CONFIG`: a grid of datasets x encoders x probes x selections x seeds, one run folder per cell.

Each cell is an ordinary `medprobe run` output folder (results.json, predictions.csv,
embedding_2d.csv, summary.md) plus `cell.json`, the spec it was run with. A cell whose
`cell.json` matches its spec is done and is skipped, so an interrupted sweep resumes; a cell
whose spec changed is rerun. The table (Markdown and CSV) is then built from the saved files
only, next to the MedMNIST v2 reference rows and any conventionally trained baselines.

Layout of the output folder:

    bench.json                         the resolved config and every cell's status
    table.md, table.csv                the comparison table
    cells/<dataset>/<encoder>/<probe>[-cv]/seed-<n>/   one run folder per cell (-cv: selected by --selection cv)
    curves/<dataset>/<encoder>/        data-efficiency curves (when the config asks for them)
    baselines/<anything>/              `medprobe baseline --out` folders found automatically
"""

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from medprobe.core import defaults
from medprobe.core.errors import BenchConfigError, MedprobeError
from medprobe.core.files import atomic_write_text, check_writable_folder
from medprobe.core.names import did_you_mean, slug
from medprobe.data.datasets import DataSpec
from medprobe.embedding.options import EmbedOptions
from medprobe.probes.fit import GRIDS, SELECTIONS
from medprobe.probes.spec import ProbeSpec
from medprobe.reporting.html import REPORT, write_report
from medprobe.reporting.results import RESULTS, write_json
from medprobe.reporting.tables import MANIFEST, TABLE_CSV, TABLE_MD, build_table, reference_rows, table_csv, table_markdown
from medprobe.workflows.curve import DEFAULT_SEEDS, DEFAULT_SHOTS, run_curve
from medprobe.workflows.run import EvalOptions, run

log = logging.getLogger(__name__)

CELL_SPEC = "cell.json"

_TOP_KEYS = {"name", "datasets", "encoders", "probes", "seeds", "data_dir", "size", "class_weight", "n_boot", "batch_size",
             "projection", "runtime", "curve", "baselines", "out", "selections"}
# How a dataset's images are chosen and split (DataSpec's fields); set per dataset, recorded in each cell's spec.
_DATA_OPTIONS = ("metadata", "metadata_key", "group", "resplit", "duplicates")
_DATASET_KEYS = {"dataset", "name", "data_dir", "size", "reference", "comparable", "note", *_DATA_OPTIONS}
_CURVE_KEYS = {"shots", "seeds", "probe", "encoders", "selection"}


# --- config ------------------------------------------------------------------------------------


def load_config(path):
    """Read a YAML or TOML bench config and resolve it: relative paths are relative to the config file.

    >>> config = load_config("benchmarks/paper_grid.yaml")
    >>> [d["name"] for d in config["datasets"]]
    ['retinamnist', 'pneumoniamnist_balanced', 'ham10000_melnv']
    """
    path = Path(path)
    if not path.is_file():
        raise BenchConfigError(f"{path}: bench config not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as e:  # yaml and tomllib each raise their own error types
        raise BenchConfigError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'YAML'} ({e})") from e
    if not isinstance(raw, dict):
        raise BenchConfigError(f"{path}: expected a mapping with datasets, encoders and probes at the top level")
    return resolve_config(raw, base=path.parent, name=path.stem)


def resolve_config(raw, base=".", name="bench"):
    """Validate a config mapping and fill its defaults (see benchmarks/paper_grid.yaml for every key)."""
    base = Path(base)
    _check_keys(raw, _TOP_KEYS, "bench config")
    for key in ("datasets", "encoders", "probes"):
        if not raw.get(key):
            raise BenchConfigError(f"bench config: '{key}' must list at least one entry")
    selections = [str(s) for s in raw.get("selections", [defaults.SELECTION])]
    for selection in selections:
        if selection not in SELECTIONS:
            raise BenchConfigError(f"bench config: unknown selection {selection!r}; choose from {', '.join(SELECTIONS)}")
    for probe in raw["probes"]:
        if probe not in GRIDS:
            raise BenchConfigError(f"bench config: unknown probe {probe!r}{did_you_mean(probe, GRIDS)} (probes: {', '.join(GRIDS)})")
    data_dir = _resolve_path(raw.get("data_dir"), base)
    datasets = [_resolve_dataset(entry, base, data_dir, raw.get("size", 28)) for entry in raw["datasets"]]
    names = [d["name"] for d in datasets]
    if len(set(names)) != len(names):
        raise BenchConfigError(f"bench config: dataset names must be unique, got {names}; give each a 'name'")
    curve = raw.get("curve")
    if curve is not None:
        curve = dict(curve)
        _check_keys(curve, _CURVE_KEYS, "bench config 'curve'")
        curve = {
            "shots": [str(s) for s in curve.get("shots", DEFAULT_SHOTS)],
            "seeds": [int(s) for s in curve.get("seeds", DEFAULT_SEEDS)],
            "probe": curve.get("probe", "logreg"),
            "selection": str(curve.get("selection", defaults.SELECTION)),
            "encoders": list(curve.get("encoders", raw["encoders"])),
        }
        if curve["selection"] not in SELECTIONS:
            raise BenchConfigError(f"bench config 'curve': unknown selection {curve['selection']!r}; choose from {', '.join(SELECTIONS)}")
    return {
        "name": str(raw.get("name", name)),
        "datasets": datasets,
        "encoders": [str(e) for e in raw["encoders"]],
        "probes": [str(p) for p in raw["probes"]],
        "seeds": _seeds(raw.get("seeds", [defaults.SEED])),
        "selections": selections,
        "class_weight": raw.get("class_weight"),
        "n_boot": int(raw.get("n_boot", defaults.N_BOOTSTRAP)),
        "batch_size": int(raw.get("batch_size", 64)),
        "projection": raw.get("projection", "pca"),
        "runtime": raw.get("runtime"),  # None: the encoder's default (see `medprobe run --runtime`)
        "curve": curve,
        "baselines": [_resolve_path(p, base) for p in raw.get("baselines", [])],
        "out": _resolve_path(raw.get("out"), base),
    }


def _seeds(value):
    """`seeds: [0, 3]` lists them; `seeds: 5` means 0..4, the same seeds as `medprobe run --seeds 5`."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise BenchConfigError(f"bench config: 'seeds' must be a positive count or a list of seeds, got {value}")
        return list(range(value))
    try:
        return [int(s) for s in value]
    except (TypeError, ValueError) as e:
        raise BenchConfigError(f"bench config: 'seeds' must be a positive count or a list of integer seeds, got {value!r}") from e


def _check_keys(mapping, allowed, where):
    for key in mapping:
        if key not in allowed:
            raise BenchConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}")


def _resolve_path(value, base):
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _looks_like_path(spec):
    return "/" in spec or "\\" in spec or Path(spec).suffix.lower() in (".npz", ".csv")


def _resolve_dataset(entry, base, data_dir, size):
    if isinstance(entry, str):
        entry = {"dataset": entry}
    if not isinstance(entry, dict) or "dataset" not in entry:
        raise BenchConfigError(f"bench config: each dataset is a name/path or a mapping with a 'dataset' key, got {entry!r}")
    _check_keys(entry, _DATASET_KEYS, f"bench config dataset {entry.get('dataset')!r}")
    spec = str(entry["dataset"])
    is_path = _looks_like_path(spec) or (base / spec).exists()
    if is_path:
        spec = _resolve_path(spec, base)
    default_name = Path(spec).stem if is_path else spec.lower()
    references = reference_rows()
    medmnist_name = None if is_path else spec.lower()
    reference = entry.get("reference", medmnist_name if medmnist_name in {r["dataset"] for r in references} else None)
    if reference is not None and reference not in {r["dataset"] for r in references}:
        known = sorted({r["dataset"] for r in references})
        raise BenchConfigError(f"bench config: unknown reference dataset {reference!r}{did_you_mean(reference, known)} (references: {', '.join(known)})")
    return {
        "name": str(entry.get("name", default_name)),
        "dataset": spec,
        "data_dir": _resolve_path(entry["data_dir"], base) if "data_dir" in entry else data_dir,
        "size": int(entry.get("size", size)),
        "reference": reference,
        "comparable": bool(entry.get("comparable", reference is not None)),
        "note": entry.get("note", ""),
        "data_options": {
            key: _resolve_path(entry[key], base) if key == "metadata" else entry[key] for key in _DATA_OPTIONS if key in entry
        },
    }


# --- the grid ----------------------------------------------------------------------------------


def cells(config):
    """Every (dataset, encoder, probe, seed) cell, ordered so each embedding is computed once and then reused."""
    for dataset in config["datasets"]:
        for encoder in config["encoders"]:
            for probe, selection in ((p, s) for p in config["probes"] for s in config.get("selections", [defaults.SELECTION])):
                for seed in config["seeds"]:
                    spec = {
                        "dataset": dataset["dataset"],
                        "data_dir": dataset["data_dir"],
                        "size": dataset["size"],
                        "encoder": encoder,
                        "probe": probe,
                        "seed": seed,
                        "class_weight": config["class_weight"],
                        "n_boot": config["n_boot"],
                        "projection": config["projection"],
                    }
                    if config.get("runtime"):
                        spec["runtime"] = config["runtime"]
                    if seed:  # splits medprobe draws follow the seed; seed-0 cells keep the spec (and splits) they always had
                        spec["split_seed"] = seed
                    if selection != "val":  # MedMNIST's rule stays implicit, so cells run before --selection existed still match
                        spec["selection"] = selection
                    spec.update(dataset.get("data_options", {}))
                    method = probe if selection == "val" else f"{probe}-{selection}"
                    folder = Path("cells") / slug(dataset["name"]) / slug(encoder) / slug(method) / f"seed-{seed}"
                    yield dataset["name"], folder, spec


def data_spec(entry):
    """The DataSpec of a resolved dataset entry or a cell spec; a cell's seed also draws the splits medprobe makes."""
    options = entry.get("data_options", entry)
    return DataSpec(entry["dataset"], entry["data_dir"], entry["size"], **{k: options[k] for k in _DATA_OPTIONS if k in options},
                    split_seed=entry.get("split_seed", 0))


def _scan_once(scans, spec, options):
    """`spec.scan()`, taken once for all the cells of its dataset (the scan comes before any split, so every seed's cells
    share it); None on Ray, where each cell's workers read the images as they embed them with its encoder."""
    if options.ray is not None:
        return None
    key = replace(spec, split_seed=0)
    if key not in scans:
        scans.clear()  # cells come dataset by dataset: only the current one's decoded images are kept
        scans[key] = spec.scan()
    return scans[key]


def cell_done(folder, spec):
    """True when the folder holds results for exactly this spec."""
    try:
        return json.loads((folder / CELL_SPEC).read_text()) == spec and (folder / RESULTS).is_file()
    except (OSError, ValueError):
        return False


def run_bench(config, out, force=False, options=None, extra_baselines=(), report=True):
    """Run every cell not yet done (all of them with `force`), then curves, table and report.

    `options` (an EmbedOptions) carries the cache and progress settings; each cell replaces its
    encoder, and the config's batch size and runtime.

    >>> summary = run_bench(load_config("benchmarks/paper_grid.yaml"), "runs/paper_grid")
    >>> summary["counts"]
    {'ran': 18, 'skipped': 0, 'failed': 0}
    """
    out = Path(out)
    check_writable_folder(out)
    options = replace(options or EmbedOptions(), batch_size=config["batch_size"], runtime=config["runtime"] or "auto")
    started = time.perf_counter()
    statuses, counts = [], {"ran": 0, "skipped": 0, "failed": 0}
    scans = {}  # the current dataset's scan (every image decoded once), shared by its cells as `run --seeds` shares one
    for dataset_name, folder, spec in cells(config):
        target = out / folder
        status = {"dataset": dataset_name, "path": str(folder), **{k: spec[k] for k in ("encoder", "probe", "seed")},
                  "selection": spec.get("selection", "val")}
        if not force and cell_done(target, spec):
            counts["skipped"] += 1
            statuses.append({**status, "status": "done"})
            continue
        log.info("bench cell %s", folder)
        tick = time.perf_counter()
        try:
            dataset = data_spec(spec)
            run(
                dataset,
                replace(options, encoder=spec["encoder"]),
                ProbeSpec(spec["probe"], spec["class_weight"], seed=spec["seed"], selection=spec.get("selection", "val")),
                EvalOptions(spec["n_boot"], spec["projection"]),
                out=target,
                scanned=_scan_once(scans, dataset, options),
            )
        except (MedprobeError, ValueError, RuntimeError) as e:  # one broken cell must not lose the rest of the sweep
            log.error("bench cell %s failed: %s", folder, e)
            (target / CELL_SPEC).unlink(missing_ok=True)
            counts["failed"] += 1
            statuses.append({**status, "status": "failed", "error": f"{type(e).__name__}: {e}"})
            continue
        write_json(target / CELL_SPEC, spec, indent=1)
        counts["ran"] += 1
        statuses.append({**status, "status": "ran", "seconds": round(time.perf_counter() - tick, 2)})

    curves = _run_curves(config, out, force, options) if config["curve"] else []
    baselines = find_baselines(out, [*config["baselines"], *extra_baselines])
    manifest = {
        "config": config,
        "cells": statuses,
        "curves": curves,
        "baselines": [str(b) for b in baselines],
        "counts": counts,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out / MANIFEST, manifest, indent=1)
    rows = build_table(out)
    atomic_write_text(out / TABLE_CSV, table_csv(rows))
    atomic_write_text(out / TABLE_MD, table_markdown(rows, manifest))
    if report:
        if _report_is_current(out / REPORT, out, baselines):
            manifest["report"] = str(out / REPORT)
        else:
            manifest["report"] = str(write_report(out))
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / MANIFEST, manifest, indent=1)
    return manifest


def _run_curves(config, out, force, options):
    done = []
    for dataset in config["datasets"]:
        for encoder in config["curve"]["encoders"]:
            folder = Path("curves") / slug(dataset["name"]) / slug(encoder)
            try:
                run_curve(
                    data_spec(dataset), replace(options, encoder=encoder),
                    config["curve"]["probe"], shots=config["curve"]["shots"], seeds=config["curve"]["seeds"], out=out / folder, force=force,
                    selection=config["curve"].get("selection", defaults.SELECTION),
                )
            except (MedprobeError, ValueError, RuntimeError) as e:
                log.error("curve %s failed: %s", folder, e)
                continue
            done.append({"dataset": dataset["name"], "encoder": encoder, "path": str(folder)})
    return done


def _report_is_current(report, out, baselines):
    """True when report.html is newer than every saved result it is drawn from (so a no-op rerun stays fast)."""
    if not report.is_file():
        return False
    inputs = [*out.glob("cells/**/results.json"), *out.glob("curves/**/curve.json"), *(Path(b) / RESULTS for b in baselines)]
    return all(p.stat().st_mtime_ns < report.stat().st_mtime_ns for p in inputs)


def find_baselines(out, extra=()):
    """Baseline folders: those named in the config or on the command line, and any under OUT/baselines/."""
    found = [Path(p) for p in extra]
    found += sorted(p.parent for p in (Path(out) / "baselines").glob("*/" + RESULTS))
    missing = [str(p) for p in found if not (p / RESULTS).is_file()]
    if missing:
        log.warning("baseline folder(s) without %s, left out of the table: %s", RESULTS, ", ".join(missing))
    unique = []
    for p in found:
        if (p / RESULTS).is_file() and p.resolve() not in [u.resolve() for u in unique]:
            unique.append(p)
    return unique
