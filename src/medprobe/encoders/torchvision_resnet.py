"""ImageNet ResNet-18 and ResNet-50 from torchvision: the CNN encoders of the paper.

Features: the global-average-pooled output before the ImageNet classifier (512 / 2048-d).
Weights: torchvision's IMAGENET1K_V1 state dicts (the classic ones; V2 needs a different resize),
found offline first (see weights.py); online they download into the torch hub cache, as
`torchvision.models.resnet50(weights="IMAGENET1K_V1")` would.
"""

from pathlib import Path

from medprobe.core.errors import EncoderError
from medprobe.encoders.base import EncoderConfig
from medprobe.encoders.torch_encoder import TorchEncoder
from medprobe.encoders.weights import is_offline, missing_weights, model_folder, user_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name: (torchvision weights URL, pooled feature dim). Preprocessing is torchvision's ImageClassification
# preset of these weights: resize the shorter side to 256 (bilinear), centre-crop 224, ImageNet mean/std.
_MODELS = {
    "resnet18": ("https://download.pytorch.org/models/resnet18-f37072fd.pth", 512),
    "resnet50": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", 2048),
}

CONFIGS = tuple(
    EncoderConfig(
        name=_name,
        family="torchvision",
        arch=_name,
        embed_dim=_dim,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",
        resize_mode="resize_crop",
        crop_pct=0.875,
        resize_convention="torchvision",
        source="torchvision IMAGENET1K_V1",
        weights=_url,
        license="BSD-3-Clause",
    )
    for _name, (_url, _dim) in _MODELS.items()
)


def _file_name(config):
    return config.weights.rsplit("/", 1)[-1]


def torch_hub_checkpoints():
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(config, weights=None):
    """The state-dict file: --weights (a file, or a folder holding it), the medprobe models folder, the torch hub cache."""
    name = _file_name(config)
    if weights:
        path = user_path(weights)
        if path.is_file():
            return path
        candidates = [path / name] if (path / name).is_file() else sorted(path.glob("*.pth")) + sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise EncoderError(f"{path}: expected one {config.name} state dict ({name}) in this folder, found {[c.name for c in candidates]}")
        return candidates[0]
    for folder in (model_folder(config), torch_hub_checkpoints()):
        if (folder / name).is_file():
            return folder / name
    return None


def availability(config):
    return "available offline" if find_weights(config) else "needs download"


def load(config, weights=None, device="cpu", runtime="auto"):
    path = find_weights(config, weights) or _download(config)
    return TorchEncoder(config, lambda: _build(config, path), device, runtime, weights)


def _download(config):
    name = _file_name(config)
    if is_offline():
        raise missing_weights(config, [(name,)], config.weights, "offline mode is on")
    import torch

    target = torch_hub_checkpoints() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # torchvision's file names end in the first hex digits of the file's SHA-256
        torch.hub.download_url_to_file(config.weights, str(target), hash_prefix=Path(name).stem.split("-")[-1])
    except Exception as e:  # no network, proxy, HTTP or checksum error: all end in the same advice
        raise missing_weights(config, [(name,)], config.weights, f"download failed: {e}") from e
    return target


def _build(config, path):
    import torch
    import torchvision

    network = getattr(torchvision.models, config.arch)(weights=None)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as e:  # a wrong or corrupt file: say which one
        raise EncoderError(f"{path}: not a valid {config.name} state dict ({e})") from e
    network.fc = torch.nn.Identity()  # pooled features, not ImageNet logits
    return network

