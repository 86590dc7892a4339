"""One default, everywhere: the CLI, the Python API, bench configs and curves read core/defaults.py, so the README's
Python quick start and `medprobe run` print the same numbers."""

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from medprobe.cli import build_parser
from medprobe.core import defaults

ROOT = Path(__file__).resolve().parents[1]


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_the_api_defaults_are_the_cli_parsers_defaults():
    from medprobe import ImageEmbedder, create_encoder, evaluate, fit_probe
    from medprobe.embedding.options import EmbedOptions
    from medprobe.probes.spec import ProbeSpec
    from medprobe.workflows.bench import resolve_config
    from medprobe.workflows.curve import run_curve
    from medprobe.workflows.run import EvalOptions

    parser = build_parser()
    run = parser.parse_args(["run", "--dataset", "d"])
    fit = parser.parse_args(["fit", "--dataset", "d", "--save", "m"])
    curve = parser.parse_args(["curve", "--dataset", "d"])
    bench = resolve_config({"datasets": ["retinamnist"], "encoders": [defaults.ENCODER], "probes": ["logreg"], "curve": {}})

    encoders = {run.encoder, fit.encoder, curve.encoder, EmbedOptions().encoder, _default(create_encoder, "name"), ImageEmbedder().encoder}
    assert encoders == {defaults.ENCODER}
    selections = {run.selection, fit.selection, curve.selection, ProbeSpec().selection, _default(fit_probe, "selection"),
                  _default(run_curve, "selection"), *bench["selections"], bench["curve"]["selection"]}
    assert selections == {defaults.SELECTION}
    n_boots = {parser.parse_args(args).n_boot for args in (
        ["run", "--dataset", "d"], ["fit", "--dataset", "d", "--save", "m"], ["evaluate", "m", "--dataset", "d"],
        ["compare", "a", "b"], ["baseline", "--dataset", "d"])}
    assert n_boots | {EvalOptions().n_boot, _default(evaluate, "n_boot"), bench["n_boot"]} == {defaults.N_BOOTSTRAP}
    seeds = {run.seed, fit.seed, ProbeSpec().seed, _default(fit_probe, "seed"), _default(evaluate, "seed"), *bench["seeds"],
             parser.parse_args(["compare", "a", "b"]).seed}
    assert seeds == {defaults.SEED}


def test_no_cli_module_writes_a_default_of_its_own():
    literals = [f"{path.name}:{i}" for path in sorted((ROOT / "src" / "medprobe" / "cli").glob("*.py"))
                for i, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(r'"--(n-boot|seed|selection|encoder)".*default=(\d|")', line)]
    assert literals == []


def _readme_quick_start():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"^```python\n(from medprobe import .*?)^```", text, re.M | re.S).group(1)
    assert 'load_dataset("retinamnist", data_dir="../shared/data/medmnist")' in code
    return code


@pytest.fixture
def small_pneumonia(tmp_path, shared_data):
    """30/10/20 train/val/test images drawn (seed 0) from the real balanced PneumoniaMNIST: small, binary, so fast."""
    official = np.load(SHARED_DATA / "medmnist" / "pneumoniamnist_balanced.npz")
    rng, parts = np.random.default_rng(0), {}
    for split, n in (("train", 30), ("val", 10), ("test", 20)):
        rows = np.sort(rng.permutation(len(official[f"{split}_labels"]))[:n])
        parts.update({f"{split}_images": official[f"{split}_images"][rows], f"{split}_labels": official[f"{split}_labels"][rows]})
    images = np.concatenate([parts[f"{s}_images"] for s in ("train", "val", "test")]).reshape(60, -1)
    assert len({row.tobytes() for row in images}) == 60  # no copies for `medprobe run` to drop, so both sides see one set
    np.savez(tmp_path / "pneumonia_small.npz", **parts)
    return tmp_path / "pneumonia_small.npz"


def test_the_readme_quick_start_prints_what_medprobe_run_prints(tmp_path, medprobe, small_pneumonia, capsys):
    # Nothing but the data: what is under test is that both sides take the same defaults.
    done = medprobe("run", "--dataset", small_pneumonia, "--out", tmp_path / "run", "--quiet")
    assert done.returncode == 0, done.stderr
    cli = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (cli["encoder"]["name"], cli["probe"]["selection"]["protocol"]) == (defaults.ENCODER, defaults.SELECTION)

    code = _readme_quick_start().replace('load_dataset("retinamnist", data_dir="../shared/data/medmnist")',
                                         f"load_dataset({str(small_pneumonia)!r})")
    namespace = {}
    exec(compile(code, "README.md quick start", "exec"), namespace)
    api = namespace["metrics"].to_json()
    assert namespace["encoder"].config.name == cli["encoder"]["name"]
    assert namespace["probe"].selection.protocol == cli["probe"]["selection"]["protocol"]
    assert namespace["probe"].params == cli["probe"]["params"]
    for key in ("auc", "auc_ci", "acc", "acc_ci", "balanced_accuracy", "macro_f1"):
        assert api[key] == pytest.approx(cli["metrics"]["test"][key], abs=1e-12), key
    test = cli["metrics"]["test"]
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == (f"AUC {test['auc']:.3f} [{test['auc_ci'][0]:.3f}, {test['auc_ci'][1]:.3f}], "
                       f"ACC {test['acc']:.3f} [{test['acc_ci'][0]:.3f}, {test['acc_ci'][1]:.3f}]")
