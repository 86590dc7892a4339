"""`medprobe baseline`: the conventional side, a ResNet-18 trained from scratch and measured on this machine.

The protocol is MedMNIST v2's (Yang et al., Sci. Data 2023; github.com/MedMNIST/experiments):
Adam at lr 1e-3, batch 128, 100 epochs, learning rate x0.1 at 50 % and 75 % of the epochs,
cross-entropy (BCE-with-logits for multi-label), inputs scaled to [-1, 1], no augmentation,
the checkpoint with the best validation AUC kept and scored once on test.

- 28 px: MedMNIST's own ResNet-18 is the CIFAR-style variant (3x3 stride-1 first convolution,
  no max-pool), so the 28 px image is not shrunk to 1 px before the last stage. We build it
  from torchvision's resnet18(weights=None) by swapping conv1 for a 3x3 stride-1 convolution
  and removing the max-pool; the rest is identical to MedMNIST's models.py.
- 224 px: the stock torchvision resnet18(weights=None), fed the 28 px images upsampled with
  nearest-neighbour interpolation, as MedMNIST v2 did. Images larger than the input size (an
  image folder) are resized to it once, bilinearly.
- Images are fed as RGB (grayscale replicated), as MedMNIST's `--as_rgb`; it only changes the
  first convolution's input channels.

Besides test AUC/ACC with bootstrap CIs it records wall and CPU seconds, so the bench can put
a compute ratio next to each embedding probe. A run stopped before 100 epochs, by --epochs or
by the wall-clock cap, is labelled capped.
"""

import copy
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medprobe.core.costs import cpu_seconds
from medprobe.core.errors import MedprobeError
from medprobe.core.files import atomic_write_bytes, check_writable_folder
from medprobe.evaluation.metrics import evaluate, medmnist_acc, medmnist_auc
from medprobe.reporting.results import BaselineResult, write_run_folder

log = logging.getLogger(__name__)

PROTOCOL = {"optimizer": "Adam", "lr": 1e-3, "batch_size": 128, "epochs": 100, "lr_milestones": [0.5, 0.75], "lr_gamma": 0.1}
CHECKPOINT = "best.pt"
HISTORY = "history.csv"  # one line per epoch, written as training goes


def build_resnet18(num_classes, size):
    """ResNet-18 from scratch: CIFAR-style stem below 64 px (as MedMNIST at 28 px), torchvision's stem otherwise."""
    from torch import nn
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if size < 64:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def load_pixels(dataset, size):
    """uint8 (N, 3, S, S) for every record; S is the native size when it is at most `size`, else `size`."""
    from PIL import Image

    first = dataset.images.load(0)
    native = first.size[0] if first.size[0] == first.size[1] else None
    keep_native = native is not None and native <= size
    out = None
    for i in range(len(dataset)):
        image = dataset.images.load(i).convert("RGB")
        if not keep_native or image.size != (native, native):
            if keep_native:
                raise MedprobeError(f"{dataset.images.describe(i)} is {image.size}, the first image is {native}x{native}; "
                                    "images of one dataset must share a size to be upsampled the MedMNIST way")
            image = image.resize((size, size), Image.BILINEAR)
        array = np.asarray(image).transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(dataset), *array.shape), dtype=np.uint8)
        out[i] = array
    return out


def _batch(pixels, rows, size):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(pixels[rows]).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="nearest")
    return x


def _scores(model, pixels, rows, size, task, batch_size=256):
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            logits = model(_batch(pixels, rows[start:start + batch_size], size))
            out.append((torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, dim=1)).numpy())
    return np.concatenate(out).astype(np.float64)


def train_baseline(
    data_spec,
    out=None,
    size=28,
    epochs=PROTOCOL["epochs"],
    max_minutes=None,
    batch_size=PROTOCOL["batch_size"],
    lr=PROTOCOL["lr"],
    seed=0,
    n_boot=1000,
    progress=True,
):
    """Train ResNet-18 from scratch on `dataset` and score the best-val-AUC checkpoint on test.

    >>> result = train_baseline(DataSpec("retinamnist", data_dir="../shared/data/medmnist"), out="/tmp/baseline_retina")
    >>> result.metrics["test"]["auc"], result.timings["train_cpu_s"]
    """
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    if size not in (28, 224):
        log.warning("MedMNIST v2 trained at 28 and 224 px; %d px is outside its protocol", size)
    if epochs < 1:
        raise MedprobeError(f"--epochs must be at least 1, got {epochs}")
    if out is not None:
        check_writable_folder(out)
    started, started_cpu = time.perf_counter(), cpu_seconds()
    # MedMNIST's "224" models saw the 28 px images upsampled, so always read the 28 px file.
    data, _ = replace(data_spec, size=28).load()
    pixels = load_pixels(data, size)
    load_s = time.perf_counter() - started
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    task, labels = data.task, data.labels
    n_out = labels.shape[1] if task == "multi-label" else len(data.label_names)

    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model = build_resnet18(n_out, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    milestones = [int(f * epochs) for f in PROTOCOL["lr_milestones"]]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=PROTOCOL["lr_gamma"])
    loss_fn = nn.BCEWithLogitsLoss() if task == "multi-label" else nn.CrossEntropyLoss()
    target = torch.from_numpy(labels).float() if task == "multi-label" else torch.from_numpy(labels).long()

    history, best = [], {"val_auc": -1.0, "epoch": None, "state": None}
    capped_reason = f"--epochs {epochs} < the protocol's {PROTOCOL['epochs']}" if epochs < PROTOCOL["epochs"] else ""
    train_started, train_started_cpu = time.perf_counter(), cpu_seconds()
    bar = tqdm(range(epochs), desc=f"ResNet-18 {size} px on {data.name}", unit="epoch", disable=not progress or None)
    for epoch in bar:
        tick = time.perf_counter()
        model.train()
        order = generator.permutation(train)
        losses = []
        try:
            for start in range(0, len(order), batch_size):
                rows = np.sort(order[start:start + batch_size])
                if len(rows) < 2:  # BatchNorm cannot train on a single image
                    continue
                optimizer.zero_grad()
                loss = loss_fn(model(_batch(pixels, rows, size)), target[rows])
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        except KeyboardInterrupt:
            if best["state"] is None:
                raise
            # Stopped by hand (Ctrl-C, or SIGTERM via the CLI): score the best checkpoint so far, labelled as capped.
            capped_reason = f"interrupted during epoch {epoch + 1}; the best of the {epoch} finished epochs is scored"
            log.warning("baseline: %s", capped_reason)
            break
        scheduler.step()
        val_scores = _scores(model, pixels, val, size, task)
        val_auc, val_acc = medmnist_auc(labels[val], val_scores, task), medmnist_acc(labels[val], val_scores, task)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": val_auc, "val_acc": val_acc,
                        "seconds": round(time.perf_counter() - tick, 3)})
        if val_auc > best["val_auc"]:
            best = {"val_auc": val_auc, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
            if out is not None:
                _save_checkpoint(Path(out) / CHECKPOINT, best, size, n_out)
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", val_auc=f"{val_auc:.3f}", best=best["epoch"])
        if out is not None:  # a long run can be followed with `tail -f OUT/history.csv`, bar or no bar
            _append_history(Path(out) / HISTORY, history[-1])
        elapsed = time.perf_counter() - train_started
        if max_minutes is not None and epoch + 1 < epochs and elapsed + history[-1]["seconds"] > 60 * max_minutes:
            capped_reason = f"wall-clock cap of {max_minutes:g} min reached after {epoch + 1} of {epochs} epochs"
            log.warning("baseline: %s", capped_reason)
            break
    bar.close()
    train_s, train_cpu_s = time.perf_counter() - train_started, cpu_seconds() - train_started_cpu

    model.load_state_dict(best["state"])
    tick, tick_cpu = time.perf_counter(), cpu_seconds()
    test_scores = _scores(model, pixels, test, size, task)
    metrics = {
        "val": evaluate(labels[val], _scores(model, pixels, val, size, task), task, data.label_names, n_boot, seed),
        "test": evaluate(labels[test], test_scores, task, data.label_names, n_boot, seed),
    }
    epochs_done = len(history)
    result = BaselineResult(
        dataset=data.describe(),
        method={
            "name": f"resnet18_{size}",
            "description": f"ResNet-18 trained from scratch at {size} px, MedMNIST v2 protocol",
            "stem": "3x3 stride-1 conv1, no max-pool (MedMNIST 28 px)" if size < 64 else "torchvision stock (7x7 stride-2, max-pool)",
            "input": "28 px images upsampled (nearest)" if size > pixels.shape[-1] else f"{pixels.shape[-1]} px",
        },
        training={
            **PROTOCOL,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "size": size,
            "epochs_done": epochs_done,
            "protocol_epochs": PROTOCOL["epochs"],
            "capped": epochs_done < PROTOCOL["epochs"],
            "capped_reason": capped_reason if epochs_done < PROTOCOL["epochs"] else "",
            "max_minutes": max_minutes,
            "best_epoch": best["epoch"],
            "best_val_auc": best["val_auc"],
            "selection": "best val AUC (MedMNIST) over epochs",
            "threads": torch.get_num_threads(),
            "history": history,
        },
        metrics=metrics,
        timings={
            "load_s": load_s,
            "train_s": train_s,
            "train_cpu_s": train_cpu_s,
            "train_images_per_s": epochs_done * len(train) / train_s,
            "evaluate_s": time.perf_counter() - tick,
            "evaluate_cpu_s": cpu_seconds() - tick_cpu,
            "total_s": time.perf_counter() - started,
            "total_cpu_s": cpu_seconds() - started_cpu,
        },
        seed=seed,
    )
    if out is not None:
        write_run_folder(out, result, data.ids[test], labels[test], test_scores)
    return result


def _append_history(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = record["epoch"] == 1 or not path.is_file()
    with open(path, "w" if fresh else "a") as f:
        if fresh:
            f.write(",".join(record) + "\n")
        f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in record.values()) + "\n")


def _save_checkpoint(path, best, size, n_out):
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": best["state"], "epoch": best["epoch"], "val_auc": best["val_auc"], "size": size,
                "num_classes": n_out, "arch": "resnet18"}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
