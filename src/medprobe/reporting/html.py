"""`medprobe report RESULTS_DIR`: one self-contained HTML page drawn from saved results only.

It reads results.json, predictions.csv, embedding_2d.csv, curve.json and baseline folders;
it never embeds an image or fits a probe. The figures are PNGs inlined as base64, so the page
opens offline in any browser. The confusion matrix and reliability diagram are also written
as 200 dpi PNG files under `figures/` for papers.

RESULTS_DIR may be one `medprobe run` folder, a `medprobe bench` folder, a `medprobe baseline`
folder, or any folder holding some of those.
"""

import base64
import html
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from medprobe import __version__
from medprobe.core.errors import ComparisonError, MedprobeError
from medprobe.core.files import atomic_write_bytes, atomic_write_text
from medprobe.core.names import slug
from medprobe.reporting.compare import compare_folders
from medprobe.reporting.figures import (
    calibration_figure,
    compute_figure,
    confusion_figure,
    curve_figure,
    embedding_figure,
    png,
    reliability_figure,
    roc_figure,
)
from medprobe.reporting.results import (
    CURVE_JSON,
    PREDICTIONS,
    PROJECTION,
    RESULTS,
    BaselineResult,
    check_run_folder,
    ci_text,
    read_curve,
    read_predictions,
    read_projection,
    read_result,
    split_lines,
)
from medprobe.reporting.study import calibration_html, operating_points_html, subgroups_html
from medprobe.reporting.tables import MANIFEST, build_table

log = logging.getLogger(__name__)

REPORT = "report.html"
FIGURES = "figures"


# --- reading saved results ----------------------------------------------------------------------


def discover(root):
    """What a folder holds: runs and baselines as (folder, result) pairs, curves, and a bench manifest."""
    root = Path(root)
    if not root.is_dir():
        raise MedprobeError(f"{root}: not a folder; give a run, bench or baseline results folder", command=f"medprobe run --out {root}")
    runs, baselines = [], []
    for path in sorted(root.rglob(RESULTS)):
        result = read_result(path.parent)
        check_run_folder(path.parent, result)
        (baselines if isinstance(result, BaselineResult) else runs).append((path.parent, result))
    curves = [read_curve(p.parent) for p in sorted(root.rglob(CURVE_JSON))]
    bench = json.loads((root / MANIFEST).read_text()) if (root / MANIFEST).is_file() else None
    if bench is not None:
        known = {folder.resolve() for folder, _ in baselines}
        for extra in bench.get("baselines", []):
            if Path(extra).resolve() not in known and (Path(extra) / RESULTS).is_file():
                baselines.append((Path(extra), read_result(extra)))
    if not (runs or baselines or curves):
        raise MedprobeError(f"{root}: no results.json or curve.json found", command=f"medprobe run --out {root}")
    return {"root": root, "runs": runs, "baselines": baselines, "curves": curves, "bench": bench}


# --- the page -----------------------------------------------------------------------------------


class _Page:
    def __init__(self, figures_dir):
        self.parts, self.figures_dir, self.n_images, self.files = [], figures_dir, 0, []

    def add(self, text):
        self.parts.append(text)

    def figure(self, fig, alt, save_as=None):
        if save_as is not None:
            path = self.figures_dir / save_as
            atomic_write_bytes(path, png(fig, dpi=200))
            self.files.append(path)
        data = base64.b64encode(png(fig)).decode()
        self.n_images += 1
        return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;color:#222;padding:0 12px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}h3{margin-bottom:.3em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.reference td{color:#666;font-style:italic}
tr.baseline td{background:#fff4e5}tr.flagged td{color:#888}.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0}
figure img{max-width:540px;width:100%;border:1px solid #eee}figcaption{font-size:.75em;color:#666}
.note{background:#fff8d6;border-left:4px solid #e0b400;padding:6px 10px;font-size:.9em}.muted{color:#777;font-size:.85em}
"""


def _esc(value):
    return html.escape(str(value))


def _fmt(value, digits=3, signed=False, missing="–"):
    if value is None or value == "":
        return missing
    if isinstance(value, str):
        return _esc(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ratio(value):
    return "–" if not value else f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def _run_metrics_table(runs):
    rows = ["<table><tr><th>run</th><th>AUC</th><th>95 % CI</th><th>ACC</th><th>95 % CI</th><th>balanced ACC</th>"
            "<th>macro F1</th><th>n test</th><th>probe params</th><th>CPU s (embed + fit)</th></tr>"]
    for _, r in runs:
        t = r.metrics["test"]
        embed_cpu, fit_cpu = r.cpu_seconds
        cpu = f"{_fmt(embed_cpu, 1, missing='unknown')} + {_fmt(fit_cpu, 1, missing='unknown')}"
        params = r.probe.get("params", {})
        rows.append(
            f"<tr><td>{_esc(r.title)}</td><td>{t['auc']:.3f}</td><td>{ci_text(t['auc_ci'], '–', False)}</td>"
            f"<td>{t['acc']:.3f}</td><td>{t['acc_ci'][0]:.3f}–{t['acc_ci'][1]:.3f}</td><td>{t['balanced_accuracy']:.3f}</td>"
            f"<td>{t['macro_f1']:.3f}</td><td>{_n_test(t)}</td><td>{_esc(params)}</td><td>{cpu}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _bench_table(bench_root, manifest, rows=None):
    rows = build_table(bench_root) if rows is None else rows
    parts = []
    for dataset in manifest["config"]["datasets"]:
        mine = [r for r in rows if r["dataset"] == dataset["name"]]
        has_base = any(r["kind"] == "baseline" for r in mine)
        parts.append(f"<h3>{_esc(dataset['name'])}</h3>")
        if dataset.get("note"):
            parts.append(f"<p class='muted'>{_esc(dataset['note'])}</p>")
        if dataset["reference"] and not dataset["comparable"]:
            parts.append(f"<p class='note'><b>Reference comparison NOT COMPARABLE</b>: the MedMNIST v2 {_esc(dataset['reference'])} "
                         "rows were measured on a different test set; shown for orientation only.</p>")
        elif not dataset["reference"]:
            parts.append("<p class='muted'>No MedMNIST v2 reference exists for this dataset.</p>")
        header = "<tr><th>method</th><th>seed</th><th>AUC [95 % CI]</th><th>ACC [95 % CI]</th><th>CPU s</th>"
        header += "<th>ΔAUC vs trained here</th><th>compute ratio</th>" if has_base else ""
        nc = "" if dataset["comparable"] else " (not comparable)"
        header += f"<th>ΔAUC vs ResNet-18 (28){nc}</th><th>ΔAUC vs best reference{nc}</th></tr>" if dataset["reference"] else "</tr>"
        refs = [r for r in mine if r["kind"] == "reference"]
        best_ref = max(refs, key=lambda r: r["auc"]) if refs else None
        r18 = next((r for r in refs if r["method"].endswith("ResNet-18 (28)")), None)
        body = []
        for r in mine:
            if r["kind"] == "probe" and r.get("auc") is None:
                body.append(f"<tr><td>{_esc(r['method'])}</td><td colspan='9'>failed: {_esc(r.get('error', ''))}</td></tr>")
                continue
            ci = lambda m: _fmt(r.get(m)) + (f" [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]" if r.get(m + "_lo") is not None else "")
            cells = [_esc(r["method"]) + (" (not comparable)" if r["kind"] == "reference" and not dataset["comparable"] else ""),
                     _esc(r.get("seed", "")), ci("auc"), ci("acc"),
                     _fmt(r.get("cpu_s"), 1, missing="unknown" if r["kind"] == "probe" else "–")]
            if has_base:
                ratio = r.get("compute_ratio")
                cells += [_fmt(r.get("delta_auc_baseline"), signed=True), "unknown" if ratio is None and r["kind"] == "probe" else _ratio(ratio)]
            if dataset["reference"]:
                if r["kind"] == "probe":
                    cells += [_fmt(r["auc"] - r18["auc"], signed=True) if r18 else "–", _fmt(r["auc"] - best_ref["auc"], signed=True)]
                else:
                    cells += ["", ""]
            body.append(f"<tr class='{r['kind']}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("<table>" + header + "\n".join(body) + "</table>")
    parts.append("<p class='muted'>Full table with the delta to every reference row: table.md and table.csv in this folder.</p>")
    return "\n".join(parts)


def _run_figures(page, folder, result, projection=True):
    """ROC, confusion matrix, reliability diagram (and the embedding map, for a run) from a folder's saved files."""
    data, test = result.dataset, result.metrics["test"]
    names, task, title = data["label_names"], data["task"], result.title
    if not (folder / PREDICTIONS).is_file():
        return f"<p class='muted'>{_esc(folder)}: no {PREDICTIONS}; rerun to save predictions.</p>"
    _, labels, scores = read_predictions(folder / PREDICTIONS, names, task)
    stem = slug(title)
    figs = [
        page.figure(roc_figure(labels, scores, task, names, test["per_class_auc"], f"ROC\n{title}",
                               (test.get("operating_points") or {}).get("points")), f"ROC curves, {title}"),
        page.figure(confusion_figure(labels, scores, task, names, f"Confusion matrix\n{title}"), f"Confusion matrix, {title}",
                    save_as=f"{stem}_confusion.png"),
        page.figure(reliability_figure(labels, scores, task, f"Reliability\n{title}"), f"Reliability diagram, {title}",
                    save_as=f"{stem}_reliability.png"),
    ]
    if not projection:
        pass  # trained end to end: there is no frozen embedding to map
    elif (folder / PROJECTION).is_file():
        figs.append(page.figure(embedding_figure(read_projection(folder / PROJECTION), title), f"Embedding map, {title}"))
    else:
        figs.append(f"<p class='muted'>No {PROJECTION} in {_esc(folder)}; the embedding map needs a run made with this version.</p>")
    return "<div class='grid'>" + "\n".join(figs) + "</div>"


def _study_section(page, result):
    """Operating points, calibration before/after and subgroups, when the run recorded them."""
    test = result.metrics["test"]
    parts = []
    external = result.external
    if external:
        parts.append(f"<p class='note'>External evaluation of the saved model <code>{_esc(external['model'])}</code> (trained on "
                     f"{_esc(external['trained_on'])}) on {_esc(external['rows'])} rows of {_esc(result.dataset['name'])}; its calibrator "
                     f"and thresholds are the saved ones, fitted on its training data's "
                     f"{_esc((test.get('operating_points') or {}).get('chosen_on', 'val'))}.</p>")
    if test.get("operating_points"):
        parts += ["<h4>Operating points</h4>", operating_points_html(test)]
    if test.get("calibration"):
        parts += ["<h4>Calibration</h4>", calibration_html(test)]
        if test["calibration"].get("after"):  # without a calibrator the reliability diagram above is the whole story
            parts.append(page.figure(calibration_figure(test["calibration"], result.dataset["task"], f"Reliability · {result.title}"),
                                     f"Reliability before and after calibration, {result.title}"))
    if test.get("subgroups"):
        parts += ["<h4>Subgroups</h4>", subgroups_html(test)]
    return "\n".join(parts)


def _n_test(test):
    """The test size, flagged (with the reasons on hover) when notes qualify the numbers: n=14 must not look like n=1,000."""
    notes = test.get("notes", [])
    return f"{test['n']}" if not notes else f"<span title='{_esc('; '.join(notes))}'>{test['n']} &#9888;</span>"


def _caveats(result):
    """How the splits were made, the leakage found, and every note that qualifies the test numbers."""
    items = [_esc(line) for line in split_lines(result.dataset)]
    close = result.near_duplicates
    if close.get("count"):
        examples = ", ".join(f"{_esc(e['test'])} ~ {_esc(e['train'])} ({e['cosine']:.3f})" for e in close["examples"][:5])
        items.append(f"<b>near-duplicates</b>: {close['count']} of {close['of']} test images have a train image at embedding cosine "
                     f"&ge; {close['threshold']}, e.g. {examples}")
    items += [f"<b>{_esc(note)}</b>" for note in result.metrics["test"].get("notes", [])]
    return "<ul class='note'>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _featured(runs):
    """Per dataset, the run with the best *validation* AUC (choosing by test AUC would flatter the page)."""
    best = {}
    for folder, result in runs:
        name = result.dataset["name"]
        val = result.metrics.get("val", {}).get("auc")
        val = float("-inf") if val is None else val
        if name not in best or val > best[name][0]:
            best[name] = (val, (folder, result))
    return [run for _, run in best.values()]


def _compute_section(page, found):
    """Per dataset: every probe's embedding + fit CPU seconds against each trained baseline."""
    parts = []
    by_dataset = {}
    for _, run in found["runs"]:
        by_dataset.setdefault(run.dataset["name"], {"runs": [], "baselines": []})["runs"].append(run)
    for _, base in found["baselines"]:
        by_dataset.setdefault(base.dataset["name"], {"runs": [], "baselines": []})["baselines"].append(base)
    for name, group in by_dataset.items():
        entries, lines = [], []
        for run in group["runs"]:
            embed_cpu, fit_cpu = run.cpu_seconds
            entries.append({"label": f"{run.encoder['name']} + {run.probe['name']}", "embed": embed_cpu, "fit": fit_cpu,
                            "auc": run.metrics["test"]["auc"]})
        for b in group["baselines"]:
            training = b.training
            label = f"ResNet-18 {training['size']} px, {training['epochs_done']} ep" + (" (CAPPED)" if training["capped"] else "")
            entries.append({"label": label, "train": b.timings["train_cpu_s"], "auc": b.metrics["test"]["auc"]})
            for e in entries:
                if e.get("train") is None and e.get("embed") is not None and e.get("fit") is not None:
                    ratio = b.timings["train_cpu_s"] / (e["embed"] + e["fit"])
                    lines.append(f"<li>{_esc(e['label'])}: {_ratio(ratio)} fewer CPU seconds than {_esc(label)}, "
                                 f"ΔAUC {e['auc'] - b.metrics['test']['auc']:+.3f}</li>")
                elif e.get("train") is None:
                    lines.append(f"<li>{_esc(e['label'])}: compute ratio to {_esc(label)} unknown (its embeddings' CPU seconds "
                                 "were not recorded: embedded on Ray)</li>")
            if training["capped"]:
                lines.append(f"<li><b>{_esc(label)} is capped</b>: {_esc(training['capped_reason'])}.</li>")
        if not any(e.get("embed") is not None or e.get("train") is not None for e in entries):
            continue
        parts.append(f"<h3>{_esc(name)}</h3>")
        parts.append(page.figure(compute_figure(entries, f"Compute · {name}"), f"CPU seconds, {name}"))
        if lines:
            parts.append("<ul>" + "\n".join(lines) + "</ul>")
        elif not group["baselines"]:
            parts.append("<p class='muted'>No conventionally trained baseline found for this dataset; run "
                         "<code>medprobe baseline --dataset … --out RESULTS_DIR/baselines/NAME</code> to compare.</p>")
    return "\n".join(parts) or "<p class='muted'>No CPU timings saved in these results.</p>"


def write_report(results_dir, out=None, all_runs=False, baselines=()):
    """Render RESULTS_DIR's saved results to one self-contained HTML file; returns its path.

    >>> write_report("runs/retina")
    PosixPath('runs/retina/report.html')
    """
    found = discover(results_dir)
    for extra in baselines:
        if not (Path(extra) / RESULTS).is_file():
            raise MedprobeError(f"{extra}: no {RESULTS}; give a baseline results folder", command=f"medprobe baseline --out {extra}")
        found["baselines"].append((Path(extra), read_result(extra)))
    root = found["root"]
    out = Path(out) if out else root / REPORT
    page = _Page(out.parent / FIGURES)
    bench = found["bench"]
    title = f"medprobe bench: {bench['config']['name']}" if bench else f"medprobe report: {root.name}"
    page.add(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_CSS}</style></head><body>")
    page.add(f"<h1>{_esc(title)}</h1><p class='muted'>Rendered {datetime.now(timezone.utc).isoformat(timespec='seconds')} by medprobe "
             f"{__version__} from the saved results in <code>{_esc(root)}</code>; nothing was recomputed. AUC and ACC are MedMNIST's "
             "definitions; intervals are 95 % bootstrap CIs over test images.</p>")

    page.add("<h2>Summary</h2>")
    rows = build_table(root) if bench else None
    if bench:
        page.add(_bench_table(root, bench, rows))
    if found["runs"] and not bench:
        page.add(_run_metrics_table(found["runs"]))
    if found["baselines"] and not bench:
        page.add(_baseline_table(found["baselines"]))

    page.add(_comparisons_section(bench, rows) if bench else _run_comparisons_section(found["runs"] + found["baselines"]))
    page.add(_repeats_section(found["runs"]))

    shown = found["runs"] if all_runs or len(found["runs"]) <= 1 else _featured(found["runs"])
    if bench:  # in the config's dataset order
        # cells/<slug(dataset name)>/...: the bench named the folder with the same `slug`
        order = {slug(d["name"]): i for i, d in enumerate(bench["config"]["datasets"])}
        shown = sorted(shown, key=lambda run: order.get(run[0].relative_to(root).parts[1], len(order))
                       if run[0].is_relative_to(root / "cells") else len(order))
    if shown:
        page.add("<h2>Per-class ROC, confusion, calibration and embedding map</h2>")
        if len(shown) < len(found["runs"]):
            page.add("<p class='muted'>For each dataset, the run with the best <i>validation</i> AUC; "
                     "<code>medprobe report --all</code> shows every run.</p>")
        for folder, result in shown:
            page.add(f"<h3>{_esc(result.title)}</h3>")
            page.add(_caveats(result))
            page.add(_run_figures(page, folder, result))
            page.add(_study_section(page, result))
    for folder, base in found["baselines"]:
        page.add(f"<h3>{_esc(base.title)}</h3>")
        page.add(_run_figures(page, folder, base, projection=False))

    page.add("<h2>Data efficiency</h2>")
    if found["curves"]:
        groups = {}
        for curve in found["curves"]:
            groups.setdefault(curve.dataset["name"], []).append(curve)
        figs = [page.figure(curve_figure(cs, f"Data efficiency · {name}"), f"Test AUC vs labelled images per class, {name}")
                for name, cs in groups.items()]
        page.add("<div class='grid'>" + "\n".join(figs) + "</div>")
        chosen = {"val": "on the full val split", "cv": "by CV on each point's own images"}
        how = "; ".join(sorted({chosen[c.spec.get("selection", "val")] for c in found["curves"]}))
        page.add(f"<p class='muted'>Line: mean over seeds; bars: ± 1 sd; band: min–max. Hyper-parameters chosen {how}.</p>")
    else:
        page.add("<p class='muted'>No curve.json found; <code>medprobe curve --dataset … --out RESULTS_DIR</code> adds one in seconds "
                 "from the cached embeddings.</p>")

    page.add("<h2>Compute</h2>")
    page.add("<p class='muted'>CPU seconds: embedding of every image (as measured when it was computed, even if this run read the cache) "
             "plus probe fitting with its hyper-parameter search, against training a ResNet-18 from scratch on the same machine.</p>")
    page.add(_compute_section(page, found))
    page.add("</body></html>")
    text = "\n".join(page.parts)
    atomic_write_text(out, text)
    log.info("report %s: %d figures, %d bytes", out, page.n_images, len(text))
    return out


def _comparisons_section(manifest, rows):
    """Paired comparisons of a bench: each cell against its dataset's best cell and the trained baseline, and the spread across seeds."""
    parts = []
    for dataset in manifest["config"]["datasets"]:
        probes = [r for r in rows if r["dataset"] == dataset["name"] and r["kind"] == "probe" and r.get("auc") is not None]
        spread = [r for r in rows if r["dataset"] == dataset["name"] and r["kind"] == "seeds"]
        if not probes:
            continue
        has_base = any(r.get("p_baseline") is not None or r.get("delta_auc_baseline_lo") is not None for r in probes)
        parts.append(f"<h3>{_esc(dataset['name'])}</h3>")
        header = "<tr><th>method</th><th>seed</th><th>AUC</th><th>ΔAUC vs best [paired 95 % CI]</th><th>DeLong p</th>"
        header += "<th>ΔAUC vs trained here [paired 95 % CI]</th><th>DeLong p</th></tr>" if has_base else "</tr>"
        body = []
        for r in probes:
            cells = [_esc(r["method"]), _esc(r["seed"]), _fmt(r["auc"]), *_paired_cells(r, "best")]
            if has_base:
                cells += _paired_cells(r, "baseline")
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("<table>" + header + "\n".join(body) + "</table>")
        notes = [f"<li>{_esc(r['method'])} (seed {_esc(r['seed'])}): {_esc(r['paired_note'])}</li>" for r in probes if r.get("paired_note")]
        if notes:
            parts.append("<ul class='note'>" + "".join(notes) + "</ul>")
        if spread:
            parts.append("<table><tr><th>method</th><th>seeds</th><th>test AUC mean ± SD</th><th>min–max</th><th>ACC mean ± SD</th>"
                         "<th>the spread is</th></tr>" + "".join(
                             f"<tr><td>{_esc(r['method'])}</td><td>{r['n_seeds']}</td><td>{r['auc']:.3f} ± {r['auc_sd']:.3f}</td>"
                             f"<td>{r['auc_min']:.3f}–{r['auc_max']:.3f}</td><td>{r['acc']:.3f} ± {r['acc_sd']:.3f}</td>"
                             f"<td>{_esc(r['spread_is'])}</td></tr>" for r in spread) + "</table>")
    if not parts:
        return ""
    return ("<h2>Paired comparisons</h2><p class='muted'>Each cell against the cell with the highest test AUC on its dataset (same "
            "seed) and against the baseline trained here, on the same test images: the AUC difference with a paired bootstrap 95 % CI "
            "and DeLong's two-sided p (multi-class: the one-vs-rest mean; see <code>medprobe compare</code>). Not corrected for the "
            "number of comparisons.</p>" + "\n".join(parts))


def _run_comparisons_section(runs):
    """Outside a bench: every run or baseline folder against the best one on the same test images (`medprobe compare`)."""
    by_dataset = {}
    for folder, result in runs:
        if result.metrics["test"].get("auc") is not None:
            by_dataset.setdefault(result.dataset["name"], []).append((folder, result))
    parts = []
    for dataset, group in by_dataset.items():
        if len(group) < 2:
            continue
        best_folder, best = max(group, key=lambda run: run[1].metrics["test"]["auc"])
        rows = []
        for folder, result in group:
            if folder == best_folder:
                continue
            try:
                c = compare_folders(folder, best_folder)
            except ComparisonError as e:  # e.g. another split of the same data: no pairing, say why
                rows.append(f"<tr><td>{_esc(result.title)}</td><td colspan='3' class='note'>not paired: {_esc(e)}</td></tr>")
                continue
            p = "–" if c["delong"]["p"] is None else f"{c['delong']['p']:.3g}"
            rows.append(f"<tr><td>{_esc(result.title)}</td><td>{c['auc_a']:.3f}</td>"
                        f"<td>{c['difference']:+.3f} {ci_text(c['difference_ci'])}</td><td>{p}</td></tr>")
        parts.append(f"<h3>{_esc(dataset)}: against {_esc(best.title)} (AUC {best.metrics['test']['auc']:.3f})</h3>"
                     "<table><tr><th>run</th><th>AUC</th><th>ΔAUC vs best [paired 95 % CI]</th><th>DeLong p</th></tr>"
                     + "".join(rows) + "</table>")
    if not parts:
        return ""
    return ("<h2>Paired comparisons</h2><p class='muted'>Each run against the run with the highest test AUC on the same dataset, "
            "on the same test images matched by id: the AUC difference with a paired bootstrap 95 % CI and DeLong's two-sided p "
            "(see <code>medprobe compare</code>). Not corrected for the number of comparisons.</p>" + "\n".join(parts))


def _paired_cells(row, name):
    delta, lo, hi, p = (row.get(k) for k in (f"delta_auc_{name}", f"delta_auc_{name}_lo", f"delta_auc_{name}_hi", f"p_{name}"))
    if name == "best" and row.get("best_method") == row["method"] and delta == 0:
        return ["best", ""]
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
    return [_fmt(delta, signed=True) + interval, "–" if p is None else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"]


def _repeats_section(runs):
    """Runs made with `--seeds N`: the spread of each metric across seeds and which variance it is."""
    parts = []
    for _, result in runs:
        repeats = result.repeats
        if not repeats:
            continue
        rows = "".join(f"<tr><td>test {_esc(name)}</td><td>{s['mean']:.3f}</td><td>{s['sd']:.3f}</td><td>{s['min']:.3f}–{s['max']:.3f}</td></tr>"
                       for name, s in repeats["test"].items() if s["mean"] is not None)
        seeds = ", ".join(str(s) for s in repeats["seeds"])
        parts.append(f"<h3>{_esc(result.title)}</h3><p>Seeds {_esc(seeds)}: the spread is <b>{_esc(repeats['spread_is'])}</b>. "
                     f"{_esc(repeats['explanation'])}.</p><table><tr><th>metric</th><th>mean</th><th>SD</th><th>min–max</th></tr>"
                     f"{rows}</table>")
    return "<h2>Repeated runs</h2>" + "\n".join(parts) if parts else ""


def _baseline_table(baselines):
    rows = ["<table><tr><th>baseline</th><th>AUC [95 % CI]</th><th>ACC [95 % CI]</th><th>epochs</th><th>wall s</th><th>CPU s</th></tr>"]
    for _, b in baselines:
        t, training, timings = b.metrics["test"], b.training, b.timings
        capped = " (CAPPED)" if training["capped"] else ""
        rows.append(f"<tr class='baseline'><td>{_esc(b.title)}{capped}</td>"
                    f"<td>{t['auc']:.3f} {ci_text(t['auc_ci'])}</td><td>{t['acc']:.3f} [{t['acc_ci'][0]:.3f}, "
                    f"{t['acc_ci'][1]:.3f}]</td><td>{training['epochs_done']}/{training['epochs']}</td><td>{timings['train_s']:.0f}</td>"
                    f"<td>{timings['train_cpu_s']:.0f}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)
