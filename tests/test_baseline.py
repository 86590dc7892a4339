"""The conventional baseline: ResNet-18 from scratch, MedMNIST v2 protocol, measured and labelled honestly."""

import json

import numpy as np
import pytest
import torch

from conftest import write_image_folder, write_npz
from medprobe.cli import main
from medprobe.data.datasets import DataSpec, load_dataset
from medprobe.workflows.baseline import CHECKPOINT, TrainingConfig, build_resnet18, load_pixels, train_baseline


def test_28px_model_is_medmnists_cifar_style_resnet18():
    model = build_resnet18(5, 28)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 5)
    # Same parameter count as MedMNIST's models.ResNet18(in_channels=3, num_classes=5): 11,171,397.
    assert sum(p.numel() for p in model.parameters()) == 11_171_397


def test_224px_model_is_stock_torchvision_resnet18():
    model = build_resnet18(2, 224)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert not isinstance(model.maxpool, torch.nn.Identity)


def test_one_epoch_run_writes_results_predictions_and_checkpoint(tmp_path):
    write_npz(tmp_path / "tiny.npz", n_train=24, n_val=9, n_test=12, classes=3)
    results = train_baseline(DataSpec(tmp_path / "tiny.npz"), TrainingConfig(epochs=1), out=tmp_path / "out", n_boot=50, progress=False)
    training, timings, test = results.training, results.timings, results.metrics["test"]
    assert results.to_json()["kind"] == "baseline" and training["epochs_done"] == 1 and training["best_epoch"] == 1
    assert training["capped"] and "protocol's 100" in training["capped_reason"]
    assert (training["optimizer"], training["lr"], training["batch_size"]) == ("Adam", 1e-3, 128)
    assert timings["train_cpu_s"] > 0 and timings["train_s"] > 0
    assert 0 <= test["auc"] <= 1 and len(test["auc_ci"]) == 2 and test["n"] == 12
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["metrics"]["test"]["auc"] == test["auc"]
    header = (tmp_path / "out" / "predictions.csv").read_text().splitlines()[0]
    assert header == "id,label,score_0,score_1,score_2"
    checkpoint = torch.load(tmp_path / "out" / CHECKPOINT, weights_only=True)
    model = build_resnet18(3, 28)
    model.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["epoch"] == 1 and "CAPPED" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "history.csv").read_text().splitlines()[0] == "epoch,loss,val_auc,val_acc,seconds"


def test_wall_clock_cap_stops_early_and_is_labelled(tmp_path):
    write_npz(tmp_path / "tiny.npz", n_train=16, n_val=6, n_test=9, classes=3)
    results = train_baseline(DataSpec(tmp_path / "tiny.npz"), TrainingConfig(epochs=100, max_minutes=1e-4), n_boot=20, progress=False)
    training = results.training
    assert training["epochs_done"] == 1 and training["capped"] and "wall-clock cap" in training["capped_reason"]


def test_224px_upsamples_28px_images_nearest(tmp_path):
    write_npz(tmp_path / "tiny.npz", n_train=6, n_val=3, n_test=6, classes=2, channels=1)
    data = load_dataset(tmp_path / "tiny.npz")
    pixels = load_pixels(data, 224)
    assert pixels.shape == (15, 3, 28, 28)  # kept at 28 px; upsampled per batch
    results = train_baseline(DataSpec(tmp_path / "tiny.npz"), TrainingConfig(size=224, epochs=1, batch_size=8), n_boot=20, progress=False)
    assert results.method["input"] == "28 px images upsampled (nearest)" and results.training["size"] == 224


def test_large_images_are_resized_down_once(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=4, size=40)
    pixels = load_pixels(load_dataset(tmp_path / "imgs"), 28)
    assert pixels.shape == (8, 3, 28, 28) and pixels.dtype == np.uint8


def test_cli_baseline(tmp_path, capsys):
    write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=9, classes=3)
    assert main(["baseline", "--dataset", str(tmp_path / "tiny.npz"), "--epochs", "1", "--n-boot", "20", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "CAPPED" in printed and "AUC" in printed and "CPU s" in printed


def test_zero_epochs_is_refused(tmp_path):
    write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=9, classes=3)
    assert main(["baseline", "--dataset", str(tmp_path / "tiny.npz"), "--epochs", "0", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("task_classes", [2])
def test_binary_scores_have_two_columns(tmp_path, task_classes):
    write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=8, classes=task_classes)
    results = train_baseline(DataSpec(tmp_path / "tiny.npz"), TrainingConfig(epochs=1), n_boot=20, progress=False)
    assert results.dataset["task"] == "binary" and set(results.metrics["test"]["per_class_auc"]) == {"1"}


def test_interrupt_scores_the_best_checkpoint_and_labels_it(tmp_path, monkeypatch):
    write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=9, classes=3)
    real_step, calls = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # during the second epoch (12 images = one batch per epoch)
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    results = train_baseline(DataSpec(tmp_path / "tiny.npz"), TrainingConfig(epochs=5), out=tmp_path / "out", n_boot=20, progress=False)
    training = results.training
    assert training["epochs_done"] == 1 and training["capped"] and "interrupted during epoch 2" in training["capped_reason"]
    assert (tmp_path / "out" / "results.json").is_file()
