import json
import subprocess
import sys

import pytest

from conftest import QUICK, write_image_folder, write_npz
from medprobe.cli import main


def test_run_writes_results_predictions_and_summary(tmp_path, capsys):
    npz = write_npz(tmp_path / "t.npz", n_train=30, n_val=9, n_test=15, label_shape="1d")
    out = tmp_path / "out"
    assert main(["run", "--dataset", str(npz), "--probe", "logreg", "--out", str(out), "--quiet", "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "95% CI" in printed
    results = json.loads((out / "results.json").read_text())
    test = results["metrics"]["test"]
    assert 0 <= test["auc_ci"][0] <= test["auc"] <= test["auc_ci"][1] <= 1
    assert {"acc", "acc_ci", "balanced_accuracy", "macro_f1", "per_class_auc"} <= set(test)
    assert results["encoder"]["config"]["input_size"] == 260  # @up: Lite0 at 260 px
    assert results["preprocessing"]["small_images"].startswith("upsampled to 260")
    assert str(results["probe"]["params"]["C"]) in results["probe"]["selection"]["scores"]  # a value the selection scored
    assert results["encoder"]["name"] == "efficientnet_lite0@stages,up,max" and results["probe"]["selection"]["protocol"] == "cv"  # the defaults
    assert len(results["cache"]["key"]) == 64 and results["versions"]["scikit-learn"]
    assert {"load_s", "embed_s", "fit_s", "total_s"} <= set(results["timings"])
    assert (out / "summary.md").read_text().startswith("# t ")
    assert (out / "predictions.csv").read_text().splitlines()[0] == "id,label,score_0,score_1,score_2"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_embed_then_run_reuses_the_cache(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "imgs", per_class=10)
    assert main(["embed", "--dataset", str(folder), "--quiet", "--encoder", "efficientnet_lite0"]) == 0
    assert "computed" in capsys.readouterr().out
    assert main(["run", "--dataset", str(folder), "--probe", "knn", "--out", str(tmp_path / "o"), "--quiet", *QUICK, "--n-boot", "200"]) == 0
    assert "cache hit" in capsys.readouterr().out


def test_embed_draws_no_split_so_a_folder_too_small_to_split_still_embeds(tmp_path, capsys):
    # One image per class: `run` cannot hold out a test split from it, but every row is embedded whatever its split.
    folder = write_image_folder(tmp_path / "imgs", per_class=1)
    assert main(["embed", "--dataset", str(folder), "--quiet", "--encoder", "efficientnet_lite0"]) == 0
    assert capsys.readouterr().out.startswith("2 images -> 1280-d")
    assert main(["run", "--dataset", str(folder), "--quiet", *QUICK]) == 2
    assert "too few to hold out a test split" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--dataset", "retinamnst"], "did you mean 'retinamnist'"),
        (["run", "--dataset", "DATA", "--encoder", "efficientnet_lite9"], "unknown encoder 'efficientnet_lite9'; did you mean 'efficientnet_lite"),
        (["run", "--dataset", "DATA", "--probe", "lasso"], "unknown probe 'lasso'"),
        (["run", "--dataset", "missing.csv"], "missing.csv: CSV manifest not found"),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_no_traceback(tmp_path, args, message, medprobe):
    """In this process (an exception fails the test, as a traceback would); test_corrupt_image_is_named runs a real one."""
    npz = write_npz(tmp_path / "t.npz", n_train=8, n_val=4, n_test=4)
    args = [str(npz) if a == "DATA" else a for a in args]
    done = medprobe(*args, "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_corrupt_image_is_named(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", per_class=10)
    (folder / "a" / "a_3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    done = subprocess.run([sys.executable, "-m", "medprobe.cli", "run", "--dataset", str(folder), "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 2 and "a_3.png" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o" / "results.json").exists()


def test_lists_encoders_and_datasets(capsys, shared_data):
    assert main(["encoders"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out
    assert main(["datasets", "--data-dir", str(shared_data / "medmnist")]) == 0
    listing = capsys.readouterr().out
    assert "retinamnist" in listing and str(shared_data / "medmnist" / "retinamnist.npz") in listing


def test_an_error_quoting_a_control_character_stays_on_its_line():
    """A message may quote a hand-edited file; its carriage returns and escape sequences are shown, not obeyed."""
    from medprobe.cli import describe_error
    from medprobe.core.errors import MedprobeError

    assert describe_error(MedprobeError("p.csv: got \r,label\x1b[31m")) == "p.csv: got \\r,label\\x1b[31m"
    assert describe_error(MedprobeError("2 images cannot be read:\n  a.jpg")) == "2 images cannot be read:\n  a.jpg"  # lines kept
