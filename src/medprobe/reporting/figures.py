"""The report's figures, drawn with matplotlib's object API (no pyplot state) from saved predictions and results."""

import io

import numpy as np

from medprobe.evaluation.calibration import N_BINS, reliability
from medprobe.evaluation.metrics import binary_columns, predictions

MARKERS = "o^sDvP*X"  # one per operating-point rule on the ROC figure


def _figure(width=5.0, height=4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def png(fig, dpi=100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def roc_figure(labels, scores, task, label_names, per_class_auc, title, points=None):
    """One ROC curve per class (the positive class for binary); the legend's AUC is the saved one.

    `points` (results.json's operating_points.points) marks each rule's test point, at the threshold chosen on the held-out scores (`chosen_on`).
    """
    from sklearn.metrics import roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    names = label_names[-1:] if task == "binary" else label_names
    for (truth, score), name, color in zip(binary_columns(labels, scores, task), names, _colors(len(names))):
        if 0 < truth.sum() < len(truth):
            fpr, tpr, _ = roc_curve(truth, score)
            auc = per_class_auc.get(name)
            ax.plot(fpr, tpr, color=color, lw=1.6, label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    colour_of = dict(zip(names, _colors(len(names))))
    for rule, marker in zip(points or {}, MARKERS):
        first = True
        for name, entry in points[rule].items():
            test = entry.get("test")
            if not test or test["sensitivity"] is None or test["specificity"] is None:
                continue
            x, y, curve = 1 - test["specificity"], test["sensitivity"], name
            if task == "binary" and name != names[0]:  # the other class taken as positive: its point on the drawn curve
                x, y, curve = 1 - test["sensitivity"], test["specificity"], names[0]
            ax.plot(x, y, marker=marker, ms=8, mec="black", color=colour_of[curve], ls="none",
                    label=f"{rule} ({name}; threshold from val)" if first else None)
            first = False
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def confusion_figure(labels, scores, task, label_names, title):
    """Counts, coloured by the share of each true class (per-label TN/FP/FN/TP for multi-label)."""
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

    predicted = predictions(scores, task)
    fig = _figure(5.2, 4.4)
    ax = fig.add_subplot()
    if task == "multi-label":
        counts = multilabel_confusion_matrix(labels, predicted).reshape(-1, 4)  # per label [[TN, FP], [FN, TP]]
        rows, cols, xlabel, ylabel = label_names, ["TN", "FP", "FN", "TP"], "outcome at threshold 0.5", "label"
    else:
        counts = confusion_matrix(labels, predicted, labels=range(len(label_names)))
        rows = cols = label_names
        xlabel, ylabel = "predicted" + (" (threshold 0.5)" if task == "binary" else " (argmax)"), "true"
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=9, color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45 if len(cols) > 4 else 0, ha="right" if len(cols) > 4 else "center")
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    return fig


def reliability_figure(labels, scores, task, title):
    mean_conf, observed, count, ece = reliability(labels, scores, task)
    fig = _figure(5.0, 4.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    edges = np.linspace(0, 1, N_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    top.bar(centres, np.nan_to_num(observed), width=1 / N_BINS, edgecolor="black", color="#4c72b0", alpha=0.8, label="observed")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.plot(mean_conf, observed, "o-", color="#dd8452", ms=4, label="mean predicted")
    what = "top-class probability" if task == "multi-class" or task == "ordinal" else "predicted probability (positive)"
    top.set(ylabel="accuracy" if task in ("multi-class", "ordinal") else "fraction positive", ylim=(0, 1))
    top.set_title(f"{title} · ECE {ece:.3f}", fontsize=9)
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, count, width=1 / N_BINS, color="grey", edgecolor="black")
    bottom.set(xlabel=what, ylabel="images", xlim=(0, 1))
    return fig


def calibration_figure(calibration, task, title):
    """Reliability before and after the val-fitted calibrator, side by side, from the bins saved in results.json."""
    stages = [("before", "probe")] + ([("after", f"after {calibration['method']}")] if calibration.get("after") else [])
    fig = _figure(4.2 * len(stages), 4.0)
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, (key, label) in zip(axes, stages):
        bins = calibration[key]["reliability"]
        n = bins["bins"]
        edges = np.linspace(0, 1, n + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        observed = np.array([np.nan if v is None else v for v in bins["observed"]], dtype=float)
        mean_conf = np.array([np.nan if v is None else v for v in bins["mean_confidence"]], dtype=float)
        ax.bar(centres, np.nan_to_num(observed), width=1 / n, edgecolor="black", color="#4c72b0", alpha=0.8, label="observed")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.plot(mean_conf, observed, "o-", color="#dd8452", ms=4, label="mean predicted")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-class probability" if task in ("multi-class", "ordinal") else "predicted probability (positive)",
               ylabel="accuracy" if task in ("multi-class", "ordinal") else "fraction positive")
        ax.set_title(f"{label} · ECE {calibration[key]['ece']:.3f} · Brier {calibration[key]['brier']:.3f}", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=9)
    return fig


def embedding_figure(points, title):
    fig = _figure()
    ax = fig.add_subplot()
    names = sorted({p["label"] for p in points})
    for name, color in zip(names, _colors(len(names))):
        xy = np.array([(float(p["x"]), float(p["y"])) for p in points if p["label"] == name])
        ax.scatter(xy[:, 0], xy[:, 1], s=8, color=color, alpha=0.7, label=name, linewidths=0)
    method = points[0]["method"].upper() if points else "PCA"
    ax.set(xlabel=f"{method} 1", ylabel=f"{method} 2")
    ax.set_title(f"Test embeddings, {method}\n{title}", fontsize=9)
    ax.legend(fontsize=8, markerscale=2, loc="best")
    return fig


def curve_figure(curves, title):
    """Mean test AUC per shot count, the min-max band over seeds shaded and ± sd as error bars."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    all_shots = []
    for c in curves:
        for p in c.points:
            if p["shots"] not in all_shots:
                all_shots.append(p["shots"])
    all_shots.sort(key=lambda s: float("inf") if s == "all" else int(s))
    position = {s: i for i, s in enumerate(all_shots)}
    for c, color in zip(curves, _colors(len(curves))):
        pts = c.points
        x = [position[p["shots"]] for p in pts]
        mean = np.array([p["auc_mean"] for p in pts])
        ax.fill_between(x, [p["auc_min"] for p in pts], [p["auc_max"] for p in pts], color=color, alpha=0.2, linewidth=0)
        ax.errorbar(x, mean, yerr=[p["auc_std"] for p in pts], color=color, marker="o", ms=4, capsize=3,
                    label=f"{c.encoder} + {c.probe} ({max(p['n_seeds'] for p in pts)} seeds)")
    ax.set_xticks(range(len(all_shots)), all_shots)
    ax.set(xlabel="labelled training images per class", ylabel="test AUC", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def compute_figure(entries, title):
    """Horizontal bars of CPU seconds (log scale): each probe (embedding + fit) and each trained baseline."""
    fig = _figure(6.4, 1.1 + 0.38 * max(3, len(entries)))
    ax = fig.add_subplot()
    labels = [e["label"] for e in entries]
    embed = [e.get("embed", 0) or 0 for e in entries]
    fit = [e.get("fit", 0) or 0 for e in entries]
    train = [e.get("train", 0) or 0 for e in entries]
    y = np.arange(len(entries))
    ax.barh(y, embed, color="#4c72b0", label="embedding (all images)")
    ax.barh(y, fit, left=embed, color="#55a868", label="probe fit")
    ax.barh(y, train, color="#c44e52", label="training from scratch")
    for i, e in enumerate(entries):
        total = (embed[i] + fit[i]) or train[i]
        unknown = e.get("train") is None and e.get("embed") is None  # embedded on Ray: the workers' CPU was not measured
        ax.text(max(total, 1) * 1.1, i, ("embedding CPU s unknown" if unknown else f"{total:,.0f} s") + (f"  (AUC {e['auc']:.3f})" if e.get("auc") is not None else ""), va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    top = max([embed[i] + fit[i] for i in range(len(entries))] + train + [1])
    smallest = min([v for v in embed + fit + train if v > 0] or [1])
    ax.set_xlim(10 ** np.floor(np.log10(smallest)), top * 8)  # a log axis must start below every bar, or bars vanish
    ax.set(xlabel="CPU seconds (log scale)", title=title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)  # below, clear of the bars
    return fig
