"""The encoder registry: a table of frozen configs, one loader per family.

Built-in families are plain modules holding `CONFIGS`, `load` and `availability` (and, for
CLIP-style models, `variant`); they are listed once here. `register_family` and
`register_encoder` add a family of your own.
"""

from medprobe.core import defaults
from medprobe.core.errors import EncoderError, UnknownNameError
from medprobe.encoders import efficientnet_lite, hf_vision, open_clip_family, runtimes, torchvision_resnet
from medprobe.encoders.base import EncoderConfig
from medprobe.encoders.transforms import make_transform

_CONFIGS: dict[str, EncoderConfig] = {}
_LOADERS = {}
_AVAILABILITY = {}
_VARIANTS = {}


def register_family(family, loader, availability, variant=None):
    """Register a family's loader `(config, weights, device, runtime) -> Encoder` and its offline check.

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


for _family, _module in (
    ("efficientnet_lite", efficientnet_lite),
    ("transformers", hf_vision),
    ("open_clip", open_clip_family),
    ("torchvision", torchvision_resnet),
):
    register_family(_family, _module.load, _module.availability, getattr(_module, "variant", None))
    for _config in _module.CONFIGS:
        register_encoder(_config)


# Families that name their embedding's column blocks (the rest are one block, "embedding").
_COLUMN_GROUPS = {"efficientnet_lite": efficientnet_lite.column_groups}


def column_groups(name):
    """(name, width) of each block of columns the encoder's embedding holds, in order; widths sum to its embed_dim.

    >>> column_groups("efficientnet_lite0@stages,up,max")[-1]
    ('max_head', 1280)
    """
    config = get_config(name)
    groups = _COLUMN_GROUPS.get(config.family, lambda c: [("embedding", c.embed_dim)])(config)
    if sum(width for _, width in groups) != config.embed_dim:  # a recipe whose layout this table does not know yet
        return [("embedding", config.embed_dim)]
    return groups


def list_encoders():
    return dict(_CONFIGS)


def get_config(name):
    """The registered config of one encoder (a fused name 'a+b' is not a single config)."""
    base, _, suffix = name.partition("@")
    if base not in _CONFIGS:
        raise UnknownNameError("encoder", base, _CONFIGS)
    config = _CONFIGS[base]
    if name.endswith("@"):  # else 'efficientnet_lite0@' ran as the plain encoder and was recorded with its '@'
        raise EncoderError(f"{name}: nothing after '@'; name a recipe after it (e.g. efficientnet_lite0@stages,up) or drop the '@'")
    if not suffix:
        return config
    if config.family not in _VARIANTS:
        raise EncoderError(f"{base} has no '@' recipes; EfficientNet-Lite, DINOv2 and CLIP-style encoders have them (e.g. efficientnet_lite0@stages,tta)")
    return _VARIANTS[config.family](config, suffix)


def encoder_status(name):
    """'available offline' or 'needs download' (with what is missing)."""
    config = get_config(name)
    return _AVAILABILITY[config.family](config)


def create_encoder(name=defaults.ENCODER, weights=None, device="cpu", runtime="auto"):
    """Build an encoder (by default medprobe's default recipe), with its runtime chosen now, and its transform.

    >>> encoder, transform = create_encoder("efficientnet_lite0", runtime="onnx")
    >>> encoder.embed_batch(np.stack([transform(img)])).shape
    (1, 1280)
    """
    config = get_config(name)
    encoder = _LOADERS[config.family](config, weights, device, runtime)
    return encoder, make_transform(encoder.config, runtimes.resize_library(runtime))
