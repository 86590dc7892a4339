"""The encoder registry: one frozen config per encoder, one loader per family.

An encoder is anything with a `config` and `embed_batch(pixels) -> (B, D) float32`, where
`pixels` is the float32 `(B, C, H, W)` batch that `make_transform(config)` produces.
"""

from dataclasses import asdict, dataclass, field

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


def register_family(family, loader, availability):
    """Register a family's loader `(config, weights_path, device) -> encoder` and its offline check."""
    _LOADERS[family] = loader
    _AVAILABILITY[family] = availability


def register_encoder(config):
    _CONFIGS[config.name] = config
    return config


def list_encoders():
    _import_families()
    return dict(_CONFIGS)


def get_config(name):
    """The registered config of one encoder (a fused name 'a+b' is not a single config)."""
    _import_families()
    if name not in _CONFIGS:
        raise EncoderError(unknown_name_message("encoder", name, _CONFIGS))
    return _CONFIGS[name]


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
    return encoder, make_transform(encoder.config)


def _import_families():
    # Families register themselves on import; importing here (not at package import) keeps `import medprobe` light.
    from medprobe.encoders import efficientnet_lite  # noqa: F401
