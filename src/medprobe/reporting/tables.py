"""Bench tables, built from saved files only: every probe cell, measured baseline and MedMNIST v2 reference row.

The bench writes them after its sweep and the HTML report draws its summary from the same rows.
"""

import csv
import io
import json
from importlib import resources
from pathlib import Path

from medprobe.core.errors import ComparisonError
from medprobe.evaluation.metrics import N_BOOTSTRAP
from medprobe.reporting.compare import compare_folders
from medprobe.reporting.repeats import summarize
from medprobe.reporting.results import RESULTS, read_result

MANIFEST = "bench.json"
TABLE_MD, TABLE_CSV = "table.md", "table.csv"
REFERENCE_FILE = "medmnist_v2_reference.csv"


def reference_rows():
    """The MedMNIST v2 benchmark rows shipped with medprobe: dataset, method, size, auc, acc, training."""
    text = resources.files("medprobe.reporting").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    return [{**r, "size": int(r["size"]), "auc": float(r["auc"]), "acc": float(r["acc"])} for r in rows]


def reference_citation():
    text = resources.files("medprobe.reporting").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    return " ".join(line.lstrip("# ").strip() for line in text.splitlines()[1:3])


def load_bench(out):
    """The manifest, every cell with its RunResult (None when it failed), and (folder, BaselineResult) pairs, read from disk."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST).read_text())
    cells_read = []
    for cell in manifest["cells"]:
        folder = out / cell["path"]
        result = read_result(folder) if cell["status"] != "failed" and (folder / RESULTS).is_file() else None
        cells_read.append({**cell, "result": result})
    baselines = [(Path(b), read_result(b)) for b in manifest.get("baselines", [])]
    return manifest, cells_read, baselines


def build_table(out):
    """One row per probe cell, measured baseline and reference, with deltas and compute ratios (dicts, CSV-ready)."""
    manifest, cells_read, baselines = load_bench(out)
    datasets = {d["name"]: d for d in manifest["config"]["datasets"]}
    references = reference_rows()
    rows = []
    for name, dataset in datasets.items():
        mine = [c for c in cells_read if c["dataset"] == name]
        data_names = {c["result"].dataset["name"] for c in mine if c["result"]}
        here = [(folder, b) for folder, b in baselines if b.dataset["name"] in data_names]
        refs = [r for r in references if r["dataset"] == dataset["reference"]]
        context = {"dataset": name, "reference": dataset["reference"] or "", "reference_comparable": dataset["comparable"]}
        probe_rows = [{**context, **_probe_row(cell, here, refs)} for cell in mine]
        add_paired_columns(probe_rows, Path(out), here, manifest["config"].get("n_boot", N_BOOTSTRAP))
        rows += probe_rows
        rows += seed_spread_rows(mine, context)
        for folder, base in here:
            rows.append({**context, **_baseline_row(folder, base)})
        for ref in refs:
            rows.append({**context, "kind": "reference", "method": f"MedMNIST v2 {ref['method']}", "auc": ref["auc"], "acc": ref["acc"]})
    return rows


def _probe_row(cell, baselines, refs):
    selection = cell.get("selection", "val")
    shown = "" if selection == "val" else f" ({selection} selection)"
    row = {"kind": "probe", "method": f"{cell['encoder']} + {cell['probe']}{shown}", "encoder": cell["encoder"], "probe": cell["probe"],
           "selection": selection, "seed": cell["seed"], "status": cell["status"]}
    result = cell["result"]
    if result is None:
        return {**row, "error": cell.get("error", "no results")}
    test, timings = result.metrics["test"], result.timings
    embed_cpu, fit_cpu = result.cpu_seconds
    cpu = embed_cpu + fit_cpu if embed_cpu is not None and fit_cpu is not None else None
    row.update(
        auc=test["auc"], auc_lo=(test["auc_ci"] or [None])[0], auc_hi=(test["auc_ci"] or [None, None])[1],
        acc=test["acc"], acc_lo=test["acc_ci"][0], acc_hi=test["acc_ci"][1],
        embed_cpu_s=embed_cpu, fit_cpu_s=timings.get("fit_cpu_s"), cpu_s=cpu,
        embed_cost_source=timings.get("embed_cost_source", ""), n_test=test["n"], path=cell["path"],
    )
    if baselines:
        _, base = baselines[0]
        row.update(
            baseline=base.label,
            delta_auc_baseline=test["auc"] - base.metrics["test"]["auc"],
            delta_acc_baseline=test["acc"] - base.metrics["test"]["acc"],
            compute_ratio=base.timings["train_cpu_s"] / cpu if cpu else None,
        )
    # Only MedMNIST's own rule (choose on val, fit on train) is compared with its rows; a cv-selected probe also trained on val.
    for ref in refs if selection == "val" else ():
        key = _ref_key(ref["method"])
        row[f"delta_auc_{key}"] = test["auc"] - ref["auc"]
        row[f"delta_acc_{key}"] = test["acc"] - ref["acc"]
    return row


def _baseline_row(folder, base):
    test, timings, training = base.metrics["test"], base.timings, base.training
    return {
        "kind": "baseline", "method": base.label, "seed": base.seed, "status": "capped" if training["capped"] else "done",
        "auc": test["auc"], "auc_lo": (test["auc_ci"] or [None])[0], "auc_hi": (test["auc_ci"] or [None, None])[1],
        "acc": test["acc"], "acc_lo": test["acc_ci"][0], "acc_hi": test["acc_ci"][1],
        "cpu_s": timings["train_cpu_s"], "wall_s": timings["train_s"], "n_test": test["n"], "path": str(folder),
        "epochs_done": training["epochs_done"], "protocol_epochs": training.get("protocol_epochs", 100),
    }


def add_paired_columns(probe_rows, out, baselines, n_boot=N_BOOTSTRAP):
    """Each probe cell against the best cell of its dataset and seed (by test AUC) and against the first baseline, paired.

    Adds `best_method`, `delta_auc_best` with its paired bootstrap CI (`_lo`, `_hi`) and DeLong `p_best`, and
    `delta_auc_baseline_lo`/`_hi` and `p_baseline`; a pair that cannot be compared gets a `paired_note` instead.
    """
    done = [r for r in probe_rows if r.get("auc") is not None]
    for seed in {r["seed"] for r in done}:
        same_seed = [r for r in done if r["seed"] == seed]
        best = max(same_seed, key=lambda r: r["auc"])
        for row in same_seed:
            row["best_method"] = best["method"]
            if row is best:
                row.update(delta_auc_best=0.0)
                continue
            _paired(row, out / row["path"], out / best["path"], "best", n_boot)
    if baselines:
        folder, _ = baselines[0]
        for row in done:
            _paired(row, out / row["path"], folder, "baseline", n_boot)


def _paired(row, folder, other, name, n_boot):
    try:
        c = compare_folders(folder, other, n_boot)
    except ComparisonError as e:
        row["paired_note"] = (row.get("paired_note", "") + f"; vs {name}: {e}").lstrip("; ")
        return
    lo, hi = c["difference_ci"] or [None, None]
    row.update({f"delta_auc_{name}": c["difference"], f"delta_auc_{name}_lo": lo, f"delta_auc_{name}_hi": hi,
                f"p_{name}": c["delong"]["p"]})


def seed_spread_rows(cells, context):
    """One row per (encoder, probe, selection) run with more than one seed: test AUC and ACC mean, SD and min-max across
    seeds, and what that spread measures (the same summary as `medprobe run --seeds`). A cell selected by val and the same
    cell selected by CV are two methods, not two seeds."""
    rows = []
    for encoder, probe, selection in dict.fromkeys((c["encoder"], c["probe"], c.get("selection", "val")) for c in cells):
        done = [c for c in cells if (c["encoder"], c["probe"], c.get("selection", "val")) == (encoder, probe, selection) and c["result"] is not None]
        if len(done) < 2:
            continue
        summary = summarize([c["seed"] for c in done], [c["result"] for c in done])
        auc, acc = summary["test"]["auc"], summary["test"]["acc"]
        shown = "" if selection == "val" else f" ({selection} selection)"
        rows.append({**context, "kind": "seeds", "method": f"{encoder} + {probe}{shown}", "encoder": encoder, "probe": probe,
                     "selection": selection, "seed": f"{summary['n']} seeds", "n_seeds": summary["n"], "auc": auc["mean"], "auc_sd": auc["sd"],
                     "auc_min": auc["min"], "auc_max": auc["max"], "acc": acc["mean"], "acc_sd": acc["sd"],
                     "spread_is": summary["spread_is"]})
    return rows


def _ref_key(method):
    return "".join(ch if ch.isalnum() else "_" for ch in method.lower()).strip("_").replace("__", "_")


_CSV_COLUMNS = ["dataset", "kind", "method", "encoder", "probe", "selection", "seed", "status", "auc", "auc_lo", "auc_hi", "acc", "acc_lo",
                "acc_hi", "embed_cpu_s", "fit_cpu_s", "cpu_s", "wall_s", "epochs_done", "protocol_epochs", "embed_cost_source",
                "baseline", "delta_auc_baseline", "delta_acc_baseline", "compute_ratio", "reference", "reference_comparable",
                "n_test", "path", "error",
                # paired comparisons (DeLong p, paired bootstrap CI of the AUC difference) and the spread across seeds
                "best_method", "delta_auc_best", "delta_auc_best_lo", "delta_auc_best_hi", "p_best", "delta_auc_baseline_lo",
                "delta_auc_baseline_hi", "p_baseline", "paired_note", "n_seeds", "auc_sd", "auc_min", "auc_max", "acc_sd", "spread_is"]


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


def paired_text(row, name):
    """'+0.012 [-0.010, +0.035] p=0.31' for a paired delta, 'best' for the best cell itself, '–' when there is none."""
    delta = row.get(f"delta_auc_{name}")
    if delta is None:
        return "–"
    if name == "best" and row.get("best_method") == row.get("method") and delta == 0:
        return "best"
    lo, hi, p = row.get(f"delta_auc_{name}_lo"), row.get(f"delta_auc_{name}_hi"), row.get(f"p_{name}")
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
    return f"{delta:+.3f}{interval}" + (f" p={p:.2g}" if p is not None and p < 0.001 else f" p={p:.3f}" if p is not None else "")


UNKNOWN = "unknown"  # a cost that was not measured (images embedded on Ray): said so, never shown as a number


def _ratio(value, missing="–"):
    return missing if value is None else f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def _md(text):
    """Text for a Markdown table cell: an 'a|b' encoder choice must not split the cell."""
    return str(text).replace("|", "\\|")


def _cpu(value, missing="–"):
    return missing if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table_markdown(rows, manifest):
    """One section per dataset: our cells, the measured baseline and the reference rows, with deltas."""
    lines = [f"# Bench: {manifest['config']['name']}", ""]
    lines += [
        "Test AUC and ACC exactly as MedMNIST defines them, with 95 % bootstrap CIs. "
        "CPU s = embedding (all images, measured when computed) + probe fit (incl. hyper-parameter search). "
        "Compute ratio = CPU seconds of the conventional training measured here / CPU s of the probe. "
        "Δ = probe − other (AUC / ACC); Δ to the MedMNIST v2 rows only for probes selected by MedMNIST's rule (val). ΔAUC vs best: against the cell with the highest test AUC on the dataset (same seed), "
        "paired on the same test images, with a paired bootstrap 95 % CI and DeLong's two-sided p (not corrected for the "
        "number of comparisons; `medprobe compare` gives the details). The baseline delta is paired the same way.",
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
        header = ["method", "seed", "AUC [95 % CI]", "ACC [95 % CI]", "CPU s", "ΔAUC vs best [paired CI], DeLong p"]
        if bases:
            header += ["ΔAUC vs trained here", "compute ratio"]
        header += [f"Δ {label}" + ("" if dataset["comparable"] else " (n/c)") for label, _ in ref_cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for r in probes:
            if r.get("auc") is None:
                lines.append(f"| {_md(r['method'])} | {r['seed']} | failed: {r.get('error', '')} |" + " |" * (len(header) - 3))
                continue
            cells_ = [_md(r["method"]), str(r["seed"]), _ci(r, "auc"), _ci(r, "acc"), _cpu(r.get("cpu_s"), UNKNOWN), paired_text(r, "best")]
            if bases:
                cells_ += [paired_text(r, "baseline"), _ratio(r.get("compute_ratio"), UNKNOWN)]
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
                ratios = ", ".join(f"{p['method']} {_ratio(projected / p['cpu_s'] if p.get('cpu_s') else None, UNKNOWN)}"
                                   for p in probes if p.get("auc") is not None)
                notes.append(f"The trained baseline is CAPPED at {r['epochs_done']} of {r['protocol_epochs']} epochs, so its CPU s "
                             f"and the compute ratios above understate the conventional cost. At its measured rate of "
                             f"{r['cpu_s'] / r['epochs_done']:.0f} CPU s per epoch, {r['protocol_epochs']} epochs would take "
                             f"≈ {projected:,.0f} CPU s (projection, not a measurement): compute ratio ≈ {ratios}.")
        for r in refs:
            cells_ = [f"_{r['method']}_" + ("" if dataset["comparable"] else " (not comparable)"), "", _num(r["auc"]), _num(r["acc"]), ""]
            cells_ += [""] * (len(header) - len(cells_))
            lines.append("| " + " | ".join(cells_) + " |")
        lines += ["", *notes] if notes else []
        lines += [f"Not paired: {r['method']} (seed {r['seed']}): {r['paired_note']}" for r in probes if r.get("paired_note")]
        spread = [r for r in mine if r["kind"] == "seeds"]
        if spread:
            lines += ["", "Across seeds (test AUC / ACC: mean, SD, min–max; what the spread measures: see `medprobe run --seeds`):", "",
                      "| method | seeds | AUC mean ± SD | AUC min–max | ACC mean ± SD | spread is |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['method']} | {r['n_seeds']} | {r['auc']:.3f} ± {r['auc_sd']:.3f} | {r['auc_min']:.3f}–{r['auc_max']:.3f} | "
                      f"{r['acc']:.3f} ± {r['acc_sd']:.3f} | {r['spread_is']} |" for r in spread]
        lines.append("")
    counts = manifest["counts"]
    lines += [f"Cells: {counts['ran']} ran, {counts['skipped']} skipped (already done), {counts['failed']} failed.", ""]
    lines += [f"Reference: {reference_citation()}", ""]
    return "\n".join(lines)
