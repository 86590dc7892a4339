"""`medprobe bench CONFIG`: a grid of datasets x encoders x probes x seeds, one run folder per cell.

Each cell is an ordinary `medprobe run` output folder (results.json, predictions.csv,
embedding_2d.csv, summary.md) plus `cell.json`, the spec it was run with. A cell whose
`cell.json` matches its spec is done and is skipped, so an interrupted sweep resumes; a cell
whose spec changed is rerun. The table (Markdown and CSV) is then built from the saved files
only, next to the MedMNIST v2 reference rows and any conventionally trained baselines.

Layout of the output folder:

    bench.json                         the resolved config and every cell's status
    table.md, table.csv                the comparison table
    cells/<dataset>/<encoder>/<probe>/seed-<n>/   one run folder per cell
    curves/<dataset>/<encoder>/        data-efficiency curves (when the config asks for them)
    baselines/<anything>/              `medprobe baseline --out` folders found automatically
"""

import csv
import io
import json
import logging
import time
from importlib import resources
from pathlib import Path

from medprobe._names import unknown_name_message
from medprobe.cache import atomic_write_bytes
from medprobe.errors import MedprobeError
from medprobe.results import RESULTS

log = logging.getLogger(__name__)

CELL_SPEC = "cell.json"
MANIFEST = "bench.json"
TABLE_MD, TABLE_CSV = "table.md", "table.csv"
REFERENCE_FILE = "data/medmnist_v2_reference.csv"

_TOP_KEYS = {"name", "datasets", "encoders", "probes", "seeds", "data_dir", "size", "class_weight", "n_boot", "batch_size",
             "projection", "runtime", "curve", "baselines", "out"}
_DATASET_KEYS = {"dataset", "name", "data_dir", "size", "reference", "comparable", "note"}
_CURVE_KEYS = {"shots", "seeds", "probe", "encoders"}


class BenchConfigError(MedprobeError):
    """The bench config file is missing, unreadable, or names something unknown."""


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
    from medprobe.probes import GRIDS

    base = Path(base)
    _check_keys(raw, _TOP_KEYS, "bench config")
    for key in ("datasets", "encoders", "probes"):
        if not raw.get(key):
            raise BenchConfigError(f"bench config: '{key}' must list at least one entry")
    for probe in raw["probes"]:
        if probe not in GRIDS:
            raise BenchConfigError(unknown_name_message("probe", probe, GRIDS))
    data_dir = _resolve_path(raw.get("data_dir"), base)
    datasets = [_resolve_dataset(entry, base, data_dir, raw.get("size", 28)) for entry in raw["datasets"]]
    names = [d["name"] for d in datasets]
    if len(set(names)) != len(names):
        raise BenchConfigError(f"bench config: dataset names must be unique, got {names}; give each a 'name'")
    curve = raw.get("curve")
    if curve is not None:
        curve = dict(curve)
        _check_keys(curve, _CURVE_KEYS, "bench config 'curve'")
        from medprobe.curve import DEFAULT_SHOTS

        curve = {
            "shots": [str(s) for s in curve.get("shots", DEFAULT_SHOTS)],
            "seeds": [int(s) for s in curve.get("seeds", [0, 1, 2])],
            "probe": curve.get("probe", "logreg"),
            "encoders": list(curve.get("encoders", raw["encoders"])),
        }
    return {
        "name": str(raw.get("name", name)),
        "datasets": datasets,
        "encoders": [str(e) for e in raw["encoders"]],
        "probes": [str(p) for p in raw["probes"]],
        "seeds": [int(s) for s in raw.get("seeds", [0])],
        "class_weight": raw.get("class_weight"),
        "n_boot": int(raw.get("n_boot", 1000)),
        "batch_size": int(raw.get("batch_size", 64)),
        "projection": raw.get("projection", "pca"),
        "runtime": raw.get("runtime"),  # None: the encoder's default (see `medprobe run --runtime`)
        "curve": curve,
        "baselines": [_resolve_path(p, base) for p in raw.get("baselines", [])],
        "out": _resolve_path(raw.get("out"), base),
    }


def _check_keys(mapping, allowed, where):
    for key in mapping:
        if key not in allowed:
            raise BenchConfigError(f"{where}: {unknown_name_message('key', key, allowed).split(' (run')[0]}")


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
        raise BenchConfigError(unknown_name_message("reference dataset", reference, {r["dataset"] for r in references}).split(" (run")[0])
    return {
        "name": str(entry.get("name", default_name)),
        "dataset": spec,
        "data_dir": _resolve_path(entry["data_dir"], base) if "data_dir" in entry else data_dir,
        "size": int(entry.get("size", size)),
        "reference": reference,
        "comparable": bool(entry.get("comparable", reference is not None)),
        "note": entry.get("note", ""),
    }


# --- reference rows ----------------------------------------------------------------------------


def reference_rows():
    """The MedMNIST v2 benchmark rows shipped with medprobe: dataset, method, size, auc, acc, training."""
    text = resources.files("medprobe").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    return [{**r, "size": int(r["size"]), "auc": float(r["auc"]), "acc": float(r["acc"])} for r in rows]


def reference_citation():
    text = resources.files("medprobe").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    return " ".join(line.lstrip("# ").strip() for line in text.splitlines()[1:3])


# --- the grid ----------------------------------------------------------------------------------


def _slug(name):
    return str(name).replace("/", "_").replace("\\", "_").replace(" ", "_")


def cells(config):
    """Every (dataset, encoder, probe, seed) cell, ordered so each embedding is computed once and then reused."""
    for dataset in config["datasets"]:
        for encoder in config["encoders"]:
            for probe in config["probes"]:
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
                    folder = Path("cells") / _slug(dataset["name"]) / _slug(encoder) / _slug(probe) / f"seed-{seed}"
                    yield dataset["name"], folder, spec


def cell_done(folder, spec):
    """True when the folder holds results for exactly this spec."""
    try:
        return json.loads((folder / CELL_SPEC).read_text()) == spec and (folder / RESULTS).is_file()
    except (OSError, ValueError):
        return False


def run_bench(config, out, force=False, cache_dir=None, progress=True, extra_baselines=(), report=True):
    """Run every cell not yet done (all of them with `force`), then curves, table and report.

    >>> summary = run_bench(load_config("benchmarks/paper_grid.yaml"), "runs/paper_grid")
    >>> summary["counts"]
    {'ran': 18, 'skipped': 0, 'failed': 0}
    """
    from medprobe.pipeline import run

    out = Path(out)
    started = time.perf_counter()
    statuses, counts = [], {"ran": 0, "skipped": 0, "failed": 0}
    for dataset_name, folder, spec in cells(config):
        target = out / folder
        status = {"dataset": dataset_name, "path": str(folder), **{k: spec[k] for k in ("encoder", "probe", "seed")}}
        if not force and cell_done(target, spec):
            counts["skipped"] += 1
            statuses.append({**status, "status": "done"})
            continue
        log.info("bench cell %s", folder)
        tick = time.perf_counter()
        try:
            run(
                spec["dataset"], spec["encoder"], spec["probe"], out=target, data_dir=spec["data_dir"], size=spec["size"],
                class_weight=spec["class_weight"], cache_dir=cache_dir, batch_size=config["batch_size"], seed=spec["seed"],
                n_boot=spec["n_boot"], progress=progress, projection=spec["projection"],
                **({"runtime": spec["runtime"]} if "runtime" in spec else {}),
            )
        except (MedprobeError, ValueError, RuntimeError) as e:  # one broken cell must not lose the rest of the sweep
            log.error("bench cell %s failed: %s", folder, e)
            (target / CELL_SPEC).unlink(missing_ok=True)
            counts["failed"] += 1
            statuses.append({**status, "status": "failed", "error": f"{type(e).__name__}: {e}"})
            continue
        atomic_write_bytes(target / CELL_SPEC, json.dumps(spec, indent=1).encode())
        counts["ran"] += 1
        statuses.append({**status, "status": "ran", "seconds": round(time.perf_counter() - tick, 2)})

    curves = _run_curves(config, out, force, cache_dir, progress) if config["curve"] else []
    baselines = find_baselines(out, [*config["baselines"], *extra_baselines])
    manifest = {
        "config": config,
        "cells": statuses,
        "curves": curves,
        "baselines": [str(b) for b in baselines],
        "counts": counts,
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
    rows = build_table(out)
    atomic_write_bytes(out / TABLE_CSV, table_csv(rows).encode())
    atomic_write_bytes(out / TABLE_MD, table_markdown(rows, manifest).encode())
    if report:
        from medprobe.report import REPORT, write_report

        if _report_is_current(out / REPORT, out, baselines):
            manifest["report"] = str(out / REPORT)
        else:
            manifest["report"] = str(write_report(out))
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
    return manifest


def _run_curves(config, out, force, cache_dir, progress):
    from medprobe.curve import run_curve

    done = []
    for dataset in config["datasets"]:
        for encoder in config["curve"]["encoders"]:
            folder = Path("curves") / _slug(dataset["name"]) / _slug(encoder)
            try:
                run_curve(
                    dataset["dataset"], encoder, config["curve"]["probe"], shots=config["curve"]["shots"],
                    seeds=config["curve"]["seeds"], out=out / folder, data_dir=dataset["data_dir"], size=dataset["size"],
                    cache_dir=cache_dir, progress=progress, force=force,
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


# --- the table, from saved files only -----------------------------------------------------------


def load_bench(out):
    """The manifest plus every saved cell, curve and baseline result, as read from disk."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST).read_text())
    cells_read = []
    for cell in manifest["cells"]:
        path = out / cell["path"] / RESULTS
        results = json.loads(path.read_text()) if cell["status"] != "failed" and path.is_file() else None
        cells_read.append({**cell, "results": results})
    baselines = [json.loads((Path(b) / RESULTS).read_text()) | {"_path": b} for b in manifest.get("baselines", [])]
    return manifest, cells_read, baselines


def build_table(out):
    """One row per probe cell, measured baseline and reference, with deltas and compute ratios (dicts, CSV-ready)."""
    manifest, cells_read, baselines = load_bench(out)
    datasets = {d["name"]: d for d in manifest["config"]["datasets"]}
    references = reference_rows()
    rows = []
    for name, dataset in datasets.items():
        mine = [c for c in cells_read if c["dataset"] == name]
        data_names = {c["results"]["dataset"]["name"] for c in mine if c["results"]}
        here = [b for b in baselines if b["dataset"]["name"] in data_names]
        refs = [r for r in references if r["dataset"] == dataset["reference"]]
        context = {"dataset": name, "reference": dataset["reference"] or "", "reference_comparable": dataset["comparable"]}
        for cell in mine:
            rows.append({**context, **_probe_row(cell, here, refs)})
        for base in here:
            rows.append({**context, **_baseline_row(base)})
        for ref in refs:
            rows.append({**context, "kind": "reference", "method": f"MedMNIST v2 {ref['method']}", "auc": ref["auc"], "acc": ref["acc"]})
    return rows


def _probe_row(cell, baselines, refs):
    row = {"kind": "probe", "method": f"{cell['encoder']} + {cell['probe']}", "encoder": cell["encoder"], "probe": cell["probe"],
           "seed": cell["seed"], "status": cell["status"]}
    results = cell["results"]
    if results is None:
        return {**row, "error": cell.get("error", "no results")}
    test, timings = results["metrics"]["test"], results["timings"]
    embed_cpu = timings.get("embed_cost_cpu_s")
    cpu = embed_cpu + timings["fit_cpu_s"] if embed_cpu is not None and "fit_cpu_s" in timings else None
    row.update(
        auc=test["auc"], auc_lo=test["auc_ci"][0], auc_hi=test["auc_ci"][1],
        acc=test["acc"], acc_lo=test["acc_ci"][0], acc_hi=test["acc_ci"][1],
        embed_cpu_s=embed_cpu, fit_cpu_s=timings.get("fit_cpu_s"), cpu_s=cpu,
        embed_cost_source=timings.get("embed_cost_source", ""), n_test=test["n"], path=cell["path"],
    )
    if baselines:
        base = baselines[0]
        row.update(
            baseline=baseline_label(base),
            delta_auc_baseline=test["auc"] - base["metrics"]["test"]["auc"],
            delta_acc_baseline=test["acc"] - base["metrics"]["test"]["acc"],
            compute_ratio=base["timings"]["train_cpu_s"] / cpu if cpu else None,
        )
    for ref in refs:
        key = _ref_key(ref["method"])
        row[f"delta_auc_{key}"] = test["auc"] - ref["auc"]
        row[f"delta_acc_{key}"] = test["acc"] - ref["acc"]
    return row


def _baseline_row(base):
    test, timings, training = base["metrics"]["test"], base["timings"], base["training"]
    return {
        "kind": "baseline", "method": baseline_label(base), "seed": base.get("seed"), "status": "capped" if training["capped"] else "done",
        "auc": test["auc"], "auc_lo": test["auc_ci"][0], "auc_hi": test["auc_ci"][1],
        "acc": test["acc"], "acc_lo": test["acc_ci"][0], "acc_hi": test["acc_ci"][1],
        "cpu_s": timings["train_cpu_s"], "wall_s": timings["train_s"], "n_test": test["n"], "path": base["_path"],
        "epochs_done": training["epochs_done"], "protocol_epochs": training.get("protocol_epochs", 100),
    }


def baseline_label(base):
    """'ResNet-18 (28 px) trained here, 100 epochs', with 'CAPPED' when it stopped before the protocol's epochs."""
    training = base["training"]
    label = f"ResNet-18 ({training['size']} px) trained here, {training['epochs_done']} epochs"
    if training["capped"]:
        label += f" (CAPPED: {training['capped_reason']})"
    return label


def _ref_key(method):
    return "".join(ch if ch.isalnum() else "_" for ch in method.lower()).strip("_").replace("__", "_")


_CSV_COLUMNS = ["dataset", "kind", "method", "encoder", "probe", "seed", "status", "auc", "auc_lo", "auc_hi", "acc", "acc_lo",
                "acc_hi", "embed_cpu_s", "fit_cpu_s", "cpu_s", "wall_s", "epochs_done", "protocol_epochs", "embed_cost_source",
                "baseline", "delta_auc_baseline", "delta_acc_baseline", "compute_ratio", "reference", "reference_comparable",
                "n_test", "path", "error"]


def table_csv(rows):
    extra = sorted({k for r in rows for k in r if k.startswith("delta_") and k not in _CSV_COLUMNS})
    out = io.StringIO()
    writer = csv.DictWriter(out, [*_CSV_COLUMNS, *extra], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def _num(value, digits=3, signed=False):
    if value is None or value == "":
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(row, metric):
    if row.get(f"{metric}_lo") is None:
        return _num(row.get(metric))
    return f"{row[metric]:.3f} [{row[f'{metric}_lo']:.3f}, {row[f'{metric}_hi']:.3f}]"


def _ratio(value):
    return "–" if value is None else f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def _cpu(value):
    return "–" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table_markdown(rows, manifest):
    """One section per dataset: our cells, the measured baseline and the reference rows, with deltas."""
    lines = [f"# Bench: {manifest['config']['name']}", ""]
    lines += [
        "Test AUC and ACC exactly as MedMNIST defines them, with 95 % bootstrap CIs. "
        "CPU s = embedding (all images, measured when computed) + probe fit (incl. hyper-parameter search). "
        "Compute ratio = CPU seconds of the conventional training measured here / CPU s of the probe. "
        "Δ = probe − other (AUC / ACC).",
        "",
    ]
    for dataset in manifest["config"]["datasets"]:
        name = dataset["name"]
        mine = [r for r in rows if r["dataset"] == name]
        probes = [r for r in mine if r["kind"] == "probe"]
        bases = [r for r in mine if r["kind"] == "baseline"]
        refs = [r for r in mine if r["kind"] == "reference"]
        lines.append(f"## {name}")
        lines.append("")
        if dataset["note"]:
            lines += [dataset["note"], ""]
        if refs and not dataset["comparable"]:
            lines += [f"**Reference comparison NOT COMPARABLE**: the MedMNIST v2 {dataset['reference']} rows were measured on a "
                      "different test set; they are shown for orientation only.", ""]
        elif not refs:
            lines += ["No MedMNIST v2 reference exists for this dataset.", ""]
        ref_cols = [(r["method"].removeprefix("MedMNIST v2 "), _ref_key(r["method"].removeprefix("MedMNIST v2 "))) for r in refs]
        header = ["method", "seed", "AUC [95 % CI]", "ACC [95 % CI]", "CPU s"]
        if bases:
            header += ["ΔAUC vs trained here", "compute ratio"]
        header += [f"Δ {label}" + ("" if dataset["comparable"] else " (n/c)") for label, _ in ref_cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for r in probes:
            if r.get("auc") is None:
                lines.append(f"| {r['method']} | {r['seed']} | failed: {r.get('error', '')} |" + " |" * (len(header) - 3))
                continue
            cells_ = [r["method"], str(r["seed"]), _ci(r, "auc"), _ci(r, "acc"), _cpu(r.get("cpu_s"))]
            if bases:
                cells_ += [_num(r.get("delta_auc_baseline"), signed=True), _ratio(r.get("compute_ratio"))]
            cells_ += [f"{_num(r.get(f'delta_auc_{k}'), signed=True)} / {_num(r.get(f'delta_acc_{k}'), signed=True)}" for _, k in ref_cols]
            lines.append("| " + " | ".join(cells_) + " |")
        for r in bases:
            cells_ = [f"**{r['method']}**", str(r["seed"]), _ci(r, "auc"), _ci(r, "acc"), _cpu(r.get("cpu_s"))]
            cells_ += [""] * (len(header) - len(cells_))
            lines.append("| " + " | ".join(cells_) + " |")
        notes = []
        for r in bases:
            if r["status"] == "capped" and r.get("epochs_done"):
                # A projection, labelled as one: the measured ratio above uses the capped (smaller) cost.
                projected = r["cpu_s"] / r["epochs_done"] * r["protocol_epochs"]
                best = [p for p in probes if p.get("cpu_s")]
                ratios = ", ".join(f"{p['method']} {_ratio(projected / p['cpu_s'])}" for p in best)
                notes.append(f"The trained baseline is CAPPED at {r['epochs_done']} of {r['protocol_epochs']} epochs, so its CPU s "
                             f"and the compute ratios above understate the conventional cost. At its measured rate of "
                             f"{r['cpu_s'] / r['epochs_done']:.0f} CPU s per epoch, {r['protocol_epochs']} epochs would take "
                             f"≈ {projected:,.0f} CPU s (projection, not a measurement): compute ratio ≈ {ratios}.")
        for r in refs:
            cells_ = [f"_{r['method']}_" + ("" if dataset["comparable"] else " (not comparable)"), "", _num(r["auc"]), _num(r["acc"]), ""]
            cells_ += [""] * (len(header) - len(cells_))
            lines.append("| " + " | ".join(cells_) + " |")
        lines += ["", *notes] if notes else []
        lines.append("")
    counts = manifest["counts"]
    lines += [f"Cells: {counts['ran']} ran, {counts['skipped']} skipped (already done), {counts['failed']} failed.", ""]
    lines += [f"Reference: {reference_citation()}", ""]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def add_command(commands):
    parser = commands.add_parser("bench", help="run a datasets x encoders x probes x seeds grid from a YAML/TOML config")
    parser.set_defaults(func=cmd_bench)
    parser.add_argument("config", help="bench config (.yaml, .yml or .toml), e.g. benchmarks/paper_grid.yaml")
    parser.add_argument("--out", help="results folder (default: the config's 'out', else ./bench-<config name>)")
    parser.add_argument("--force", action="store_true", help="rerun cells that are already done")
    parser.add_argument("--baseline", action="append", default=[], metavar="DIR",
                        help="a `medprobe baseline` output folder to compare against (repeatable)")
    parser.add_argument("--cache-dir", help="embedding cache folder (default $MEDPROBE_CACHE, else the user cache)")
    parser.add_argument("--no-report", action="store_true", help="write the table but not report.html")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_bench(args):
    config = load_config(args.config)
    out = args.out or config["out"] or f"bench-{config['name']}"
    manifest = run_bench(config, out, force=args.force, cache_dir=args.cache_dir, progress=not args.quiet,
                         extra_baselines=args.baseline, report=not args.no_report)
    print((Path(out) / TABLE_MD).read_text())
    counts = manifest["counts"]
    print(f"{counts['ran']} cells ran, {counts['skipped']} skipped, {counts['failed']} failed in {manifest['seconds']:.2f} s; "
          f"table: {Path(out) / TABLE_MD}, {Path(out) / TABLE_CSV}" + (f"; report: {manifest['report']}" if "report" in manifest else ""))
    if counts["failed"]:
        raise MedprobeError(f"{counts['failed']} cell(s) failed; see {Path(out) / MANIFEST} for the errors, fix them and rerun")
