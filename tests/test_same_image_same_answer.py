"""A saved model gives an image the same probabilities alone, with its folder and in a shuffled batch, under every
runtime (issue 27): the int8 runtimes quantise with the calibration saved by `fit --save`, never on a job's images.

No embedding store here (use_cache off), so equal answers are computed three times, not one stored vector read back."""

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, copy_ham
from medprobe.cli import main
from medprobe.core.errors import ModelError
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import runtimes
from medprobe.probes import saved_calibration
from medprobe.probes.saved import MODEL_FILES, load_model
from medprobe.workflows.evaluate import evaluate_model
from medprobe.workflows.predict import predict

HAM = SHARED_DATA / "ham10000_melnv"
SAMPLE = 8  # calibration images (256 in use): small, so quantising stays quick
# The model each runtime predicts with: its preprocessing must be the runtime's (fast resizes with OpenCV).
FITTED_UNDER = {runtime: "fast" if runtime == "fast" else "int8" for runtime in runtimes.RUNTIMES}



def skip_without_packages(runtime):
    """The optional packages a runtime needs (no runtime needs a CPU feature to run: without one it is only slower)."""
    needs = (["openvino"] if runtime in runtimes.OPENVINO else []) + (["cv2"] if runtime in runtimes.RESIZE_LIBRARY else [])
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"--runtime {runtime} needs {' and '.join(missing)}, which is not installed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Models fitted under int8 and fast on 12 real HAM10000 images, a folder of 4 others, and a shuffled manifest mixing
    them with 3 more; exported graphs go to this module's temporary folder."""
    root = tmp_path_factory.mktemp("same-answer")
    train = copy_ham(root / "train", "train", per_class=6)
    folder = copy_ham(root / "folder", "test", per_class=2)
    others = copy_ham(root / "others", "test", per_class=2, skip=2)
    files = sorted(folder.rglob("*.jpg")) + sorted(others.rglob("*.jpg"))[:3]
    order = np.random.default_rng(0).permutation(len(files))
    manifest = root / "shuffled.csv"
    manifest.write_text("path\n" + "".join(f"{files[i].relative_to(root)}\n" for i in order))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtimes, "CALIBRATION_IMAGES", SAMPLE)
        patch.setattr(tempfile, "tempdir", str(root / "tmp"))  # without a store, exported graphs go to the temporary folder
        (root / "tmp").mkdir()
        patch.setenv("MEDPROBE_CACHE", str(root / "cache"))
        for runtime in sorted(set(FITTED_UNDER.values())):
            if runtime == "fast" and not all(importlib.util.find_spec(n) for n in ("openvino", "cv2")):
                continue
            done = main(["fit", "--dataset", str(train), "--runtime", runtime, "--save", str(root / runtime), "--quiet",
                         "--encoder", "efficientnet_lite0", "--selection", "val", "--n-boot", "10", "--out", str(root / f"{runtime}-run")])
            assert done == 0
        yield root, folder, manifest


def scores(model, inputs, runtime):
    got = predict(model, inputs, EmbedOptions(runtime=runtime, use_cache=False, progress=False))
    return dict(zip(got.paths, got.scores))


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
def test_an_image_gets_the_same_probabilities_alone_in_its_folder_and_in_a_shuffled_batch(setup, runtime):
    skip_without_packages(runtime)
    root, folder, manifest = setup
    model = root / FITTED_UNDER[runtime]
    in_folder = scores(model, folder, runtime)
    shuffled = {str(Path(p).resolve()): s for p, s in scores(model, manifest, runtime).items()}
    assert len(in_folder) == 4 and len(shuffled) == 7
    for path, expected in in_folder.items():
        np.testing.assert_array_equal(shuffled[str(Path(path).resolve())], expected, err_msg=path)
    alone = sorted(in_folder)[0]  # a melanoma
    np.testing.assert_array_equal(scores(model, alone, runtime)[alone], in_folder[alone], err_msg=alone)


def test_the_fit_saves_its_calibration_and_evaluate_uses_it(setup, tmp_path):
    root, folder, _ = setup
    model = load_model(root / "int8")
    assert (root / "int8" / saved_calibration.FILE).is_file() and saved_calibration.FILE in MODEL_FILES  # re-saving over it is allowed
    fitted = json.loads((root / "int8-run" / "results.json").read_text())["encoder"]["runtime"]["calibration"]
    assert model.calibration.record == fitted and model.calibration.fixed and model.calibration.images().shape == (SAMPLE, 224, 224, 3)
    # evaluate on the folder alone scores each image as predict does with the folder in a bigger job
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(root / "tmp"))
        from medprobe.data.datasets import DataSpec

        evaluate_model(root / "int8", DataSpec(str(folder)), EmbedOptions(runtime="int8", use_cache=False, progress=False), out=tmp_path / "ev")
        expected = scores(root / "int8", folder, "int8")
    rows = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        path = next(p for p in expected if Path(p).name in values["id"])
        np.testing.assert_array_equal([float(values[f"score_{name}"]) for name in model.label_names], expected[path])


def test_a_damaged_calibration_or_one_missing_for_int8_is_refused(setup, tmp_path):
    root, folder, _ = setup
    copy = tmp_path / "model"
    shutil.copytree(root / "int8", copy)
    blob = bytearray((copy / saved_calibration.FILE).read_bytes())
    blob[-1] ^= 1
    (copy / saved_calibration.FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="int8_calibration.safetensors does not match its checksum"):
        load_model(copy)
    # a model saved without a calibration (fitted under fp32): int8 would calibrate per job, so it is refused by name
    meta = json.loads((root / "int8" / "model.json").read_text())
    assert meta["int8_calibration"]["record"]["images"] == SAMPLE
    shutil.copytree(root / "int8", tmp_path / "fp32")
    (tmp_path / "fp32" / saved_calibration.FILE).unlink()
    meta["int8_calibration"] = None
    text = json.dumps(meta, indent=1) + "\n"
    (tmp_path / "fp32" / "model.json").write_text(text)
    import hashlib

    (tmp_path / "fp32" / "model.json.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  model.json\n")
    with pytest.raises(ModelError, match="saved without an int8 calibration"):
        predict(tmp_path / "fp32", folder, EmbedOptions(runtime="int8", use_cache=False, progress=False))
    assert predict(tmp_path / "fp32", folder, EmbedOptions(runtime="torch", use_cache=False, progress=False)).scores.shape == (4, 2)
