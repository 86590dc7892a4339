"""The defaults every entry point shares: the CLI's flags, the Python API's keyword arguments, bench configs and curves.

Each is defined here once, so `medprobe run` and the README's Python quick start print the same numbers
(tests/test_defaults.py holds the CLI parser against these).
"""

# EfficientNet-Lite0 with its 7 stages pooled beside the head (@stages: it beat the plain head on RetinaMNIST,
# PneumoniaMNIST and HAM10000 alike, at the same cost), run on the image upsampled to 260 px (@up: its CV and val AUCs
# beat 224 px on all three, for 1.35-1.5x the embedding time), every map also max-pooled (@max: CV and val AUCs above
# average pooling alone on all three, for no extra network pass; docs/history.md).
ENCODER = "efficientnet_lite0@stages,up,max"
# Repeated CV over train+val with the one-standard-error rule: it beat MedMNIST's "best val AUC" rule on all three
# datasets (docs/history.md). "val" stays available for rows comparable with MedMNIST's published ones.
SELECTION = "cv"
N_BOOTSTRAP = 1000  # resamples behind every 95 % CI
SEED = 0  # the probe's seed, the splits medprobe draws and the bootstrap's draws
# The probe sees every column of the recipe; "choose" lets the selection pick among its column groups (probes.columns).
# Left at "all" until benchmarks/column_groups.py shows the choice pays (docs/probe.md).
COLUMN_GROUPS = "all"
