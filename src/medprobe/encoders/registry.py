"""The encoder registry: one frozen config per encoder, one loader per family.

An encoder is anything with a `config` and `embed_batch(pixels) -> (B, D) float32`, where
`pixels` is the float32 `(B, C, H, W)` batch that `make_transform(config)` produces.
"""

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medprobe._names import unknown_name_message
from medprobe.errors import EncoderError


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that decides what an encoder outputs; it is hashed into the cache key."""

    name: str
    family: str
    arch: str
    embed_dim: int
    input_size: int
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    # "resize_crop": shorter side to input_size / crop_pct, then centre crop (ImageNet eval);
    # "squash": resize straight to input_size x input_size (used for tiny images such as 28 px MedMNIST).
    resize_mode: str = "resize_crop"
    crop_pct: float = 1.0
    # How "resize_crop" rounds, matching the library the weights were trained with: "medprobe",
    # "torchvision" (also open_clip and timm) or "hf" (transformers); see transforms.scaled_size.
    resize_convention: str = "medprobe"
    channels: int = 3
    source: str = ""
    weights: str = ""
    license: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self):
        return asdict(self)


_CONFIGS: dict[str, EncoderConfig] = {}
_LOADERS = {}
_AVAILABILITY = {}
_VARIANTS = {}


def register_family(family, loader, availability, variant=None):
    """Register a family's loader `(config, weights_path, device) -> encoder` and its offline check.

    `variant(config, suffix) -> config` resolves names such as `clip_vit_b16@pre` (features before
    CLIP's projection); the suffix ends up in the config's name, so in results and the cache key.
    """
    _LOADERS[family] = loader
    _AVAILABILITY[family] = availability
    if variant is not None:
        _VARIANTS[family] = variant


def register_encoder(config):
    _CONFIGS[config.name] = config
    return config


def list_encoders():
    _import_families()
    return dict(_CONFIGS)


def get_config(name):
    """The registered config of one encoder (a fused name 'a+b' is not a single config)."""
    _import_families()
    base, _, suffix = name.partition("@")
    if base not in _CONFIGS:
        raise EncoderError(unknown_name_message("encoder", base, _CONFIGS))
    config = _CONFIGS[base]
    if not suffix:
        return config
    if config.family not in _VARIANTS:
        raise EncoderError(f"{base} has no '@' variants; '@pre' selects features before the projection of CLIP-style encoders only")
    return _VARIANTS[config.family](config, suffix)


def encoder_status(name):
    """'available offline' or 'needs download' (with what is missing)."""
    config = get_config(name)
    return _AVAILABILITY[config.family](config)


def create_encoder(name, weights=None, device="cpu"):
    """Build an encoder and the transform that belongs to it.

    >>> encoder, transform = create_encoder("efficientnet_lite0")
    >>> encoder.embed_batch(np.stack([transform(img)])).shape
    (1, 1280)
    """
    from medprobe.transforms import make_transform

    config = get_config(name)
    encoder = _LOADERS[config.family](config, weights, device)
    # Embeddings from user-supplied weights must never share a cache entry with the default weights' ones.
    encoder.weights_id = weights_fingerprint(weights) if weights else "default"
    return encoder, make_transform(encoder.config)


def weights_fingerprint(path):
    """SHA-256 over a --weights file, or over every file (and its relative name) in a model folder."""
    from medprobe.cache import file_sha256

    path = Path(path).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path) if file != path else file.name}:{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _import_families():
    # Families register themselves on import; importing here (not at package import) keeps `import medprobe` light.
    from medprobe.encoders import efficientnet_lite  # noqa: F401
    from medprobe.encoders import hf_vision, open_clip_family, torchvision_resnet  # noqa: F401
