"""`medprobe compare RUN_A RUN_B`: is A better than B on the same test images? A paired comparison of two saved folders."""

from pathlib import Path

from medprobe.core.errors import OutputError
from medprobe.evaluation.metrics import BOOTSTRAP_SEED, N_BOOTSTRAP, check_n_boot
from medprobe.reporting.compare import compare_folders
from medprobe.reporting.results import write_json


def compare(folder_a, folder_b, out=None, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """Compare two run (or baseline) folders pairwise; with `out`, also write the comparison there as JSON.

    Reads only the saved predictions: nothing is embedded or fitted.

    >>> c = compare("runs/lite0", "runs/lite2", out="runs/lite0_vs_lite2.json")
    """
    check_n_boot(n_boot)
    if out is not None and Path(out).is_dir():
        raise OutputError(f"{out} is a folder; give a file name for the comparison JSON (e.g. {Path(out) / 'comparison.json'})")
    comparison = compare_folders(folder_a, folder_b, n_boot, seed)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, comparison)
    return comparison
