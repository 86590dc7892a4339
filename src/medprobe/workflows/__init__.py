"""Layer 4, workflows: what the commands do, end to end (run, fit/predict, curve, bench, baseline), from the layers below."""
