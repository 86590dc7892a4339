"""Views of the validation study in `metrics.test` (operating points, calibration, subgroups): terminal text and HTML.

Both read the saved results only; nothing is recomputed here.
"""

import html

from medprobe.reporting.results import ci_text

RATES = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV"), ("f1", "F1"))


def _value(value, ci=None, with_ci=True):
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" {ci_text(ci)}" if with_ci else "")


def study_text(test):
    """The terminal lines for operating points, calibration and subgroups ('' when the results have none)."""
    lines = []
    points = test.get("operating_points")
    if points:
        lines.append(f"operating points (threshold chosen on {points['chosen_on']}, on {points['on']}; positive when score >= threshold):")
        lines.append(f"  {'rule':<20}{'class':<12}{'threshold':>10}  {'sensitivity [95% CI]':<24}{'specificity [95% CI]':<24}"
                     f"{'PPV':>7}{'NPV':>7}{'F1':>7}")
        for rule, per_column in points["points"].items():
            for column, entry in per_column.items():
                t = entry.get("test")
                threshold = "–" if entry["threshold"] is None else f"{entry['threshold']:.4g}"
                if t is None:
                    lines.append(f"  {rule:<20}{column:<12}{threshold:>10}  {entry.get('note') or 'not scored'}")
                    continue
                lines.append(f"  {rule:<20}{column:<12}{threshold:>10}  {_value(t['sensitivity'], t['sensitivity_ci']):<24}"
                             f"{_value(t['specificity'], t['specificity_ci']):<24}{_value(t['ppv'], with_ci=False):>7}"
                             f"{_value(t['npv'], with_ci=False):>7}{_value(t['f1'], with_ci=False):>7}")
                if entry.get("note"):
                    lines.append(f"  ! {rule} {column}: {entry['note']}")
    calibration = test.get("calibration")
    if calibration:
        lines.append(f"calibration ({calibration['binning']}):")
        for label, key in (("before", "before"), (f"after {calibration['method']}", "after")):
            c = calibration.get(key)
            if c:
                extra = f"   AUC {c['auc']:.3f}" if c.get("auc") is not None and "after" in label else ""
                lines.append(f"  {label:<20}ECE {_value(c['ece'], c['ece_ci'])}   Brier {_value(c['brier'], c['brier_ci'])}{extra}")
        if calibration.get("after"):
            lines.append(f"  {calibration['method']} fitted on {calibration.get('fitted_on', 'val')}")
        lines += [f"  ! {note}" for note in calibration.get("notes", [])]
    for column, table in (test.get("subgroups") or {}).items():
        lines += subgroup_lines(column, table)
    return "\n".join(lines)


def subgroup_lines(column, table):
    gap = table.get("largest_auc_gap")
    head = f"subgroups by {column}"
    if gap:
        head += f" (largest AUC gap: {gap['high']} vs {gap['low']} {gap['gap']:+.3f} {ci_text(gap['gap_ci'])})"
    lines = [head + ":", f"  {'group':<14}{'n':>6}{'per class':>28}  {'AUC [95% CI]':<24}{'at ' + _first_rule(table):<28}"]
    for g in table["groups"]:
        counts = ", ".join(f"{k} {v}" for k, v in g["per_class"].items())
        if g["flag"]:
            lines.append(f"  {g['group']:<14}{g['n']:>6}{counts:>28}  too small to say: {g['flag']}")
            continue
        sens_spec = _first_point(g)
        lines.append(f"  {g['group']:<14}{g['n']:>6}{counts:>28}  {_value(g['auc'], g['auc_ci']):<24}{sens_spec}")
    return lines


def _first_rule(table):
    for g in table["groups"]:
        if g.get("operating_points"):
            rule = next(iter(g["operating_points"]))
            return f"{rule}: sens / spec"
    return ""


def _first_point(group):
    points = group.get("operating_points") or {}
    if not points:
        return ""
    per_column = next(iter(points.values()))
    parts = []
    for column, t in per_column.items():
        if t is None:
            continue
        parts.append((f"{column} " if len(per_column) > 1 else "") + f"{_value(t['sensitivity'], with_ci=False)} / {_value(t['specificity'], with_ci=False)}")
    return "; ".join(parts)


# --- HTML -----------------------------------------------------------------------------------------


def _esc(value):
    return html.escape(str(value))


def _cell(value, ci=None):
    return f"<td>{_value(value, with_ci=False)}<br><span class='muted'>{ci_text(ci) if value is not None else ''}</span></td>"


def operating_points_html(test):
    points = test.get("operating_points")
    if not points:
        return ""
    rows = [f"<table><tr><th>rule</th><th>class</th><th>threshold</th><th>sens / spec on {_esc(points['chosen_on'])}</th>"
            + "".join(f"<th>{label} (test)</th>" for _, label in RATES) + "<th>TP / FP / TN / FN</th></tr>"]
    for rule, per_column in points["points"].items():
        for column, entry in per_column.items():
            t, val = entry.get("test"), entry.get("val")
            threshold = "–" if entry["threshold"] is None else f"{entry['threshold']:.4g}"
            val_text = f"{val['sensitivity']:.3f} / {val['specificity']:.3f}" if val else "–"
            if t is None:
                rows.append(f"<tr><td>{_esc(rule)}</td><td>{_esc(column)}</td><td>{threshold}</td><td>{val_text}</td>"
                            f"<td colspan='6'>{_esc(entry.get('note') or 'not scored')}</td></tr>")
                continue
            counts = t["counts"]
            flag = f" &#9888;<br><span class='muted'>{_esc(entry['note'])}</span>" if entry.get("note") else ""
            rows.append(f"<tr><td>{_esc(rule)}{flag}</td><td>{_esc(column)}</td><td>{threshold}</td><td>{val_text}</td>"
                        + "".join(_cell(t[key], t[f"{key}_ci"]) for key, _ in RATES)
                        + f"<td>{counts['tp']} / {counts['fp']} / {counts['tn']} / {counts['fn']}</td></tr>")
    rows.append("</table>")
    return (f"<p class='muted'>Thresholds chosen on {_esc(points['chosen_on'])} ({_esc(points['on'])}; positive when score &ge; threshold), "
            "metrics on test with 95 % bootstrap CIs.</p>" + "\n".join(rows))


def calibration_html(test):
    calibration = test.get("calibration")
    if not calibration:
        return ""
    rows = ["<table><tr><th>scores</th><th>ECE</th><th>Brier</th><th>AUC</th><th>ACC</th></tr>"]
    for label, key in (("probe (before)", "before"), (f"after {calibration['method']} (fitted on {calibration.get('fitted_on', 'val')})", "after")):
        c = calibration.get(key)
        if c:
            rows.append(f"<tr><td>{_esc(label)}</td>{_cell(c['ece'], c['ece_ci'])}{_cell(c['brier'], c['brier_ci'])}"
                        f"<td>{_value(c.get('auc'), with_ci=False)}</td><td>{_value(c.get('acc'), with_ci=False)}</td></tr>")
    rows.append("</table>")
    notes = "".join(f"<li>{_esc(n)}</li>" for n in calibration.get("notes", []))
    return (f"<p class='muted'>ECE over {_esc(calibration['binning'])}; Brier as scikit-learn's brier_score_loss. 95 % bootstrap CIs.</p>"
            + "\n".join(rows) + (f"<ul class='note'>{notes}</ul>" if notes else ""))


def subgroups_html(test):
    parts = []
    for column, table in (test.get("subgroups") or {}).items():
        gap = table.get("largest_auc_gap")
        parts.append(f"<h4>by {_esc(column)}</h4>")
        if gap:
            parts.append(f"<p>Largest AUC gap: <b>{_esc(gap['high'])}</b> vs <b>{_esc(gap['low'])}</b>, {gap['gap']:+.3f} "
                         f"{ci_text(gap['gap_ci'])}</p>")
        rules = next((list(g["operating_points"]) for g in table["groups"] if g.get("operating_points")), [])
        header = "<tr><th>group</th><th>n</th><th>images per class</th><th>AUC</th>"
        header += "".join(f"<th>{_esc(rule)}: sensitivity</th><th>{_esc(rule)}: specificity</th>" for rule in rules) + "</tr>"
        rows = ["<table>" + header]
        for g in table["groups"]:
            counts = ", ".join(f"{_esc(k)} {v}" for k, v in g["per_class"].items())
            if g["flag"]:
                rows.append(f"<tr class='flagged'><td>{_esc(g['group'])} &#9888;</td><td>{g['n']}</td><td>{counts}</td>"
                            f"<td colspan='{1 + 2 * len(rules)}'>too small to say: {_esc(g['flag'])}</td></tr>")
                continue
            cells = [_cell(g["auc"], g["auc_ci"])]
            for rule in rules:
                for key in ("sensitivity", "specificity"):
                    per_column = g["operating_points"][rule]
                    t = next(iter(per_column.values())) if len(per_column) == 1 else None
                    cells.append(_cell(t[key], t[f"{key}_ci"]) if t else "<td>see results.json</td>")
            rows.append(f"<tr><td>{_esc(g['group'])}</td><td>{g['n']}</td><td>{counts}</td>" + "".join(cells) + "</tr>")
        rows.append("</table>")
        parts.append("\n".join(rows))
        parts.append(f"<p class='muted'>Subgroups are {_esc(table['flag_rule'])}; thresholds are the ones chosen on all of "
                     f"{_esc((test.get('operating_points') or {}).get('chosen_on', 'val'))}.</p>")
    return "\n".join(parts)
