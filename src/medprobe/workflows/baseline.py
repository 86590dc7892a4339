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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medprobe.core import defaults
from medprobe.core.costs import cpu_seconds
from medprobe.core.errors import MedprobeError
from medprobe.core.files import atomic_write_bytes, check_writable_folder
from medprobe.core.memory import reuse_freed_memory
from medprobe.evaluation.metrics import check_n_boot, evaluate, medmnist_acc, medmnist_auc
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


@dataclass(frozen=True)
class TrainingConfig:
    """How the ResNet-18 is trained: MedMNIST v2's protocol unless a field is overridden (fewer epochs are labelled capped).

    >>> TrainingConfig(size=224, epochs=10)
    """

    size: int = 28
    epochs: int = PROTOCOL["epochs"]
    batch_size: int = PROTOCOL["batch_size"]
    lr: float = PROTOCOL["lr"]
    max_minutes: float | None = None  # wall-clock cap: training stops at the last epoch that fits
    seed: int = defaults.SEED

    def __post_init__(self):
        if self.epochs < 1:
            raise MedprobeError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:  # BatchNorm cannot train on a single image
            raise MedprobeError(f"--batch-size must be at least 2, got {self.batch_size}")


@dataclass
class _Best:
    """The checkpoint with the best validation AUC so far."""

    val_auc: float = -1.0
    epoch: int | None = None
    state: dict | None = None


def train_baseline(data_spec, config=TrainingConfig(), out=None, n_boot=defaults.N_BOOTSTRAP, progress=True):
    """Train ResNet-18 from scratch on `dataset` and score the best-val-AUC checkpoint on test.

    >>> result = train_baseline(DataSpec("retinamnist", data_dir="../shared/data/medmnist"), TrainingConfig(epochs=5), out="/tmp/retina")
    >>> result.metrics["test"]["auc"], result.timings["train_cpu_s"]
    """
    import torch
    from tqdm.auto import tqdm

    check_n_boot(n_boot)
    if config.size not in (28, 224):
        log.warning("MedMNIST v2 trained at 28 and 224 px; %d px is outside its protocol", config.size)
    if out is not None:
        check_writable_folder(out)
    started, started_cpu = time.perf_counter(), cpu_seconds()
    # MedMNIST's "224" models saw the 28 px images upsampled, so always read the 28 px file.
    data, _ = replace(data_spec, size=28).load()
    pixels = load_pixels(data, config.size)
    timings = {"load_s": time.perf_counter() - started}
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    n_out = data.labels.shape[1] if data.task == "multi-label" else len(data.label_names)

    torch.manual_seed(config.seed)
    reuse_freed_memory()  # as an encoder does: training allocates every activation and gradient anew each step
    model = build_resnet18(n_out, config.size)
    epoch = _Epoch(model, config, data.task, data.labels, pixels)
    history, best = [], _Best()
    capped_reason = f"--epochs {config.epochs} < the protocol's {PROTOCOL['epochs']}" if config.epochs < PROTOCOL["epochs"] else ""
    train_started, train_started_cpu = time.perf_counter(), cpu_seconds()
    bar = tqdm(range(config.epochs), desc=f"ResNet-18 {config.size} px on {data.name}", unit="epoch", disable=not progress or None)
    for number in bar:
        try:
            record = epoch.run(train, val)
        except KeyboardInterrupt:
            if best.state is None:
                raise
            # Stopped by hand (Ctrl-C, or SIGTERM via the CLI): score the best checkpoint so far, labelled as capped.
            capped_reason = f"interrupted during epoch {number + 1}; the best of the {number} finished epochs is scored"
            log.warning("baseline: %s", capped_reason)
            break
        history.append({"epoch": number + 1, **record})
        if record["val_auc"] > best.val_auc:
            best = _Best(record["val_auc"], number + 1, copy.deepcopy(model.state_dict()))
            if out is not None:
                _save_checkpoint(Path(out) / CHECKPOINT, best, config.size, n_out)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_auc=f"{record['val_auc']:.3f}", best=best.epoch)
        if out is not None:  # a long run can be followed with `tail -f OUT/history.csv`, bar or no bar
            _append_history(Path(out) / HISTORY, history[-1])
        elapsed = time.perf_counter() - train_started
        if config.max_minutes is not None and number + 1 < config.epochs and elapsed + record["seconds"] > 60 * config.max_minutes:
            capped_reason = f"wall-clock cap of {config.max_minutes:g} min reached after {number + 1} of {config.epochs} epochs"
            log.warning("baseline: %s", capped_reason)
            break
    bar.close()
    timings.update(train_s=time.perf_counter() - train_started, train_cpu_s=cpu_seconds() - train_started_cpu)

    model.load_state_dict(best.state)
    tick, tick_cpu = time.perf_counter(), cpu_seconds()
    scores = {split: _scores(model, pixels, rows, config.size, data.task) for split, rows in (("val", val), ("test", test))}
    metrics = {split: evaluate(data.labels[rows], scores[split], data.task, data.label_names, n_boot, config.seed).to_json()
               for split, rows in (("val", val), ("test", test))}
    timings.update(train_images_per_s=len(history) * len(train) / timings["train_s"], evaluate_s=time.perf_counter() - tick,
                   evaluate_cpu_s=cpu_seconds() - tick_cpu, total_s=time.perf_counter() - started,
                   total_cpu_s=cpu_seconds() - started_cpu)
    result = _baseline_result(data, config, pixels.shape[-1], history, best, capped_reason, metrics, timings, torch.get_num_threads())
    if out is not None:
        write_run_folder(out, result, data.ids[test], data.labels[test], scores["test"])
    return result


class _Epoch:
    """One epoch of the protocol: a shuffled pass of Adam over train, the learning-rate schedule's step, then val AUC/ACC."""

    def __init__(self, model, config, task, labels, pixels):
        import torch
        from torch import nn

        self.model, self.config, self.task, self.labels, self.pixels = model, config, task, labels, pixels
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        milestones = [int(f * config.epochs) for f in PROTOCOL["lr_milestones"]]
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones, gamma=PROTOCOL["lr_gamma"])
        self.loss_fn = nn.BCEWithLogitsLoss() if task == "multi-label" else nn.CrossEntropyLoss()
        self.target = torch.from_numpy(labels).float() if task == "multi-label" else torch.from_numpy(labels).long()
        self.generator = np.random.default_rng(config.seed)

    def run(self, train, val):
        """The epoch's record: mean loss, val AUC and ACC, seconds."""
        tick = time.perf_counter()
        self.model.train()
        order = self.generator.permutation(train)
        losses = []
        for start in range(0, len(order), self.config.batch_size):
            rows = np.sort(order[start:start + self.config.batch_size])
            if len(rows) < 2:  # BatchNorm cannot train on a single image
                continue
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(_batch(self.pixels, rows, self.config.size)), self.target[rows])
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        self.scheduler.step()
        scores = _scores(self.model, self.pixels, val, self.config.size, self.task)
        truth = self.labels[val]
        return {"loss": float(np.mean(losses)), "val_auc": medmnist_auc(truth, scores, self.task),
                "val_acc": medmnist_acc(truth, scores, self.task), "seconds": round(time.perf_counter() - tick, 3)}


def _baseline_result(data, config, native_size, history, best, capped_reason, metrics, timings, threads):
    capped = len(history) < PROTOCOL["epochs"]
    return BaselineResult(
        dataset=data.describe(),
        method={
            "name": f"resnet18_{config.size}",
            "description": f"ResNet-18 trained from scratch at {config.size} px, MedMNIST v2 protocol",
            "stem": "3x3 stride-1 conv1, no max-pool (MedMNIST 28 px)" if config.size < 64 else "torchvision stock (7x7 stride-2, max-pool)",
            "input": "28 px images upsampled (nearest)" if config.size > native_size else f"{native_size} px",
        },
        training={
            **PROTOCOL,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "size": config.size,
            "epochs_done": len(history),
            "protocol_epochs": PROTOCOL["epochs"],
            "capped": capped,
            "capped_reason": capped_reason if capped else "",
            "max_minutes": config.max_minutes,
            "best_epoch": best.epoch,
            "best_val_auc": best.val_auc,
            "selection": "best val AUC (MedMNIST) over epochs",
            "threads": threads,
            "history": history,
        },
        metrics=metrics,
        timings=timings,
        seed=config.seed,
    )


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
    torch.save({"state_dict": best.state, "epoch": best.epoch, "val_auc": best.val_auc, "size": size,
                "num_classes": n_out, "arch": "resnet18"}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
