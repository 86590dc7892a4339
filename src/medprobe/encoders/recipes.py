"""Feature recipes: what a frozen network is asked for, written after '@' in the encoder name.

`efficientnet_lite0@stages,tta` is EfficientNet-Lite0 with pooled features of its last stages
beside the head's, averaged over the image and its mirror. The recipe is part of the config's
name and `extra`, so it is in the cache key, results.json and the report. ',' joins recipes
because '+' already fuses encoders ('a+b').

Every recipe runs inside the torch module (or, for `pad`, the transform), so it exports to ONNX
and runs on every runtime unchanged; `ms` (a second, larger scale) upsamples inside the module too. `up` (one larger
scale) is a larger input size, so the transform resizes each image once, straight to it.
"""

from dataclasses import replace

from medprobe.core.errors import EncoderError
from medprobe.core.names import did_you_mean

# @ms runs the network a second time on the pixels upsampled MS_SCALE times (bilinear, inside the exported graph).
# For Lite0, 1.5x (336 px) had a higher CV AUC than Lite2's native 260 px on RetinaMNIST and HAM10000 and 0.0007 less on
# PneumoniaMNIST; concatenating the two scales beat averaging them on val in 5 of 6 cases (docs/history.md).
MS_SCALE = 1.5
# @up runs the network once, at UP_SCALE times its input size: Lite0 at Lite2's native 260 px. Alone, 260 px had a
# higher CV AUC than 224 px on all three datasets, and than 336 px on PneumoniaMNIST (docs/history.md). The transform
# resizes to that size itself: upsampling 224 px pixels inside the graph interpolated twice, and OpenVINO's
# Interpolate took 15 % of the int8 network's time (docs/speed.md).
UP_SCALE = 260 / 224

# name: what it does. Family-specific ones (stages, tokens) are offered only by the families that have them.
RECIPES = {
    "stages": "global-average-pooled outputs of the last CNN stages concatenated with the head's features",
    "tokens": "ViT: class token and mean patch token of the last 4 blocks, layer-normed, concatenated",
    "tta": "mean embedding of the image and its left-right mirror (2 encoder passes)",
    "tta8": "mean embedding over the 8 flips and right-angle rotations (8 passes; for fundus, skin, pathology)",
    "pad": "images smaller than the input are centred on a black canvas, not upsampled (MedMNIST+)",
    "ms": f"multi-scale: features at the input size and at {MS_SCALE}x it (upsampled inside the network), concatenated",
    "up": f"the network run once at {UP_SCALE:.3g}x its input size (the image resized straight to it; 260 px for Lite0)",
    "max": "global max-pooled features of the same maps (stages and head) after the average-pooled ones",
    "std": "per-channel standard deviation over each of the same maps, after the average- (and max-) pooled features",
}
TOKEN_BLOCKS = 4  # the @tokens recipe reads the last 4 transformer blocks, as DINOv2's linear evaluation does
VIEW_RECIPES = {"tta": 2, "tta8": 8}  # recipe -> encoder passes per image
GENERIC = ("tta", "tta8", "pad")


def parse(config, suffix, family_recipes=(), refused=None, patch=1):
    """(config with the recipe recorded, the recipe parts in canonical order) for `name@suffix`.

    Unknown or clashing parts are refused by name, and so are those in `refused` ({recipe: why this
    family cannot run it}). `patch` rounds @up's input size (see up_size). The name is rewritten in canonical
    order, so '@tta,stages' and '@stages,tta' share one cache entry.

    >>> parse(config, "tta,stages", ("stages",))[1]
    ('stages', 'tta')
    """
    known = tuple(family_recipes) + GENERIC
    parts = [p.strip() for p in suffix.split(",") if p.strip()]
    for part in parts:
        if part in (refused or {}):
            raise EncoderError(f"{config.name}@{suffix}: {config.name} cannot take @{part} ({RECIPES[part]}): {refused[part]}")
        if part not in known:
            raise EncoderError(
                f"{config.name}@{suffix}: unknown recipe {part!r}{did_you_mean(part, known)}; {config.name} offers "
                f"{', '.join(known)} (join several with ',', e.g. {config.name}@{known[0]},tta)"
            )
    if not parts:
        raise EncoderError(f"{config.name}@: empty recipe; {config.name} offers {', '.join(known)}")
    if len(set(parts)) != len(parts) or {"tta", "tta8"} <= set(parts) or {"ms", "up"} <= set(parts):
        raise EncoderError(f"{config.name}@{suffix}: a recipe is repeated, or tta and tta8 (or ms and up) are both given; use one of each")
    ordered = tuple(r for r in RECIPES if r in parts)
    changes = {"name": f"{config.name}@{','.join(ordered)}", "extra": {**config.extra, "recipe": list(ordered)}}
    if "pad" in ordered:
        changes["resize_mode"] = "pad"
    if "ms" in ordered:
        changes["extra"]["scales"] = [1.0, MS_SCALE]
    if "up" in ordered:
        changes["input_size"] = up_size(config.input_size, patch)
    return replace(config, **changes), ordered


def up_size(size, patch=1):
    """The @up input size for a network whose plain input is `size` px: a whole number of `patch`-px patches (a ViT
    drops a partial patch at the edge).

    >>> up_size(224), up_size(224, patch=14)
    (260, 266)
    """
    return patch * round(size * UP_SCALE / patch)


def recipe_of(config):
    return tuple(config.extra.get("recipe", ()))


def scales(config):
    """Input sizes the network runs at, as multiples of the config's input size: [1.0] without @ms."""
    return list(config.extra.get("scales", [1.0]))


def input_sizes(config):
    return [round(config.input_size * scale) for scale in scales(config)]


def with_scales(module_at, config):
    """The features of `module_at(size)` at each of the recipe's input sizes, from the same pixels, concatenated.

    The transform still produces pixels at the config's input size; larger sizes are upsampled here, inside the
    module, so the whole recipe is one graph that ONNX Runtime and OpenVINO run and the exactness guard checks.
    `module_at(size)` may return one module for every size (a ViT that interpolates its position embeddings)
    or one per size (a CNN whose 'same' padding is fixed for its input size).
    """
    sizes = input_sizes(config)
    if sizes == [config.input_size]:
        return module_at(config.input_size)
    import torch
    import torch.nn.functional as F

    class MultiScale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nets = torch.nn.ModuleList([module_at(size) for size in sizes])

        def forward(self, pixels):
            out = []
            for size, net in zip(sizes, self.nets):
                # bilinear, not bicubic: it cannot overshoot, and ONNX's Resize matches PyTorch's exactly for it
                x = pixels if size == config.input_size else F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
                out.append(net(x))
            return torch.cat(out, dim=1)

    return MultiScale()


def views(config):
    """Encoder passes per image the recipe costs (1 without test-time augmentation)."""
    return max([VIEW_RECIPES.get(r, 1) for r in recipe_of(config)] + [1])


def with_views(module, config):
    """`module` averaged over the recipe's test-time views, or `module` itself when it has none."""
    n = views(config)
    if n == 1:
        return module
    import torch

    class ViewAverage(torch.nn.Module):
        """Runs the views as one batch (one call, better BLAS use) and averages their embeddings."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            batch = [pixels, pixels.flip(3)]
            if n == 8:
                # the dihedral group of the square: flips and their transposes (= the right-angle rotations and
                # their mirrors), written without rot90, which the ONNX exporter lacks
                batch = [pixels, pixels.flip(3), pixels.flip(2), pixels.flip(2, 3)]
                batch += [x.transpose(2, 3) for x in batch]
            out = self.net(torch.cat(batch))
            return out.reshape(n, pixels.shape[0], out.shape[-1]).mean(dim=0)

    return ViewAverage(module)


def token_features(block_outputs, norm):
    """The @tokens vector: for each of the last TOKEN_BLOCKS blocks' (B, 1 + patches, D) outputs, the final
    layer norm's class token and mean patch token, oldest block first: (B, 2 * TOKEN_BLOCKS * D).

    The last block's class token is the plain pooled embedding, so a probe can only gain columns.
    """
    import torch

    if len(block_outputs) < TOKEN_BLOCKS:
        raise EncoderError(f"@tokens reads the last {TOKEN_BLOCKS} transformer blocks; this model has {len(block_outputs)}")
    parts = []
    for hidden in block_outputs[-TOKEN_BLOCKS:]:
        normed = norm(hidden)
        parts += [normed[:, 0], normed[:, 1:].mean(dim=1)]
    return torch.cat(parts, dim=1)
