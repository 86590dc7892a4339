"""Selection score beside test AUC for every cell of a bench output folder: what the choice was made on, next to what it gave.

    python benchmarks/bench_scores.py runs/encoders_grid

One row per cell: dataset, encoder, probe, selection, the chosen hyper-parameter, its selection score (val AUC for
'val'; for 'cv' the best mean CV AUC over train+val, the score `a|b` encoder choices compare), test AUC [95 % CI] and the embedding cost in img/s (all images, as
measured when each was computed). Choose on the selection score; the test column is only reported.
"""

import json
import sys
from pathlib import Path


def chosen_score(selection, params):
    """The selection score of the chosen grid point (scores are keyed by the value's text)."""
    for value in params.values():
        for key, score in selection.get("scores", {}).items():
            if isinstance(value, (int, float)) and float(key) == value:
                return value, score
    return None, None


def main():
    out = Path(sys.argv[1])
    print("| dataset | encoder | probe | selection | chosen | selection AUC | test AUC [95 % CI] | embed img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in sorted(out.glob("cells/*/*/*/seed-*/results.json")):
        result = json.loads(path.read_text())
        cell = json.loads((path.parent / "cell.json").read_text())
        selection = result["probe"]["selection"]
        value, score = chosen_score(selection, result["probe"]["params"])
        score = selection.get("best_auc", score)  # cv: the one-SE rule may pick a simpler value than the best
        test = result["metrics"]["test"]
        timings = result["timings"]
        images = timings["embedded_now"] + timings["embedded_from_store"]
        rate = images / timings["embed_cost_s"] if timings["embed_cost_s"] else float("nan")
        print(f"| {path.parts[-5]} | {cell['encoder']} | {cell['probe']} | {selection['protocol']} | {value:g} | {score:.3f} "
              f"| {test['auc']:.3f} [{test['auc_ci'][0]:.3f}, {test['auc_ci'][1]:.3f}] | {rate:.1f} |")


if __name__ == "__main__":
    main()
