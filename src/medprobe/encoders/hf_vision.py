"""Vision transformers through transformers' own `AutoModel`: DINOv2 ViT-S/14 and ViT-B/14, RAD-DINO.

Features: `pooler_output`, the layer-normed class token (what RAD-DINO's model card uses for
classification); `@tokens` gives the class and mean patch tokens of the last 4 blocks instead (see
medprobe.encoders.recipes). Preprocessing follows the model folder's `preprocessor_config.json` when it has
one (shorter side, centre crop, rescale, normalise, exactly as the transformers image processor
does it), else the registry's copy of it. Weights are found offline first (see weights.py).
"""

import json
from dataclasses import replace
from pathlib import Path

from medprobe.core.errors import EncoderError
from medprobe.encoders import recipes
from medprobe.encoders.base import EncoderConfig
from medprobe.encoders.torch_encoder import TorchEncoder
from medprobe.encoders.weights import complete, hf_cached_folder, hf_download, is_offline, missing_weights, model_folder, user_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NEEDED = [("config.json",), ("model.safetensors", "pytorch_model.bin")]
OPTIONAL = ("preprocessor_config.json",)
PATCH = 14  # every model here is a ViT with 14 px patches
# PIL resampling codes used by transformers image processors
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}

# name: (Hugging Face repo, dim, crop size, shorter side before the crop, mean, std, licence)
_MODELS = {
    "dinov2_vits14": ("facebook/dinov2-small", 384, 224, 256, IMAGENET_MEAN, IMAGENET_STD, "Apache-2.0"),
    "dinov2_vitb14": ("facebook/dinov2-base", 768, 224, 256, IMAGENET_MEAN, IMAGENET_STD, "Apache-2.0"),
    # Chest X-ray DINOv2 ViT-B/14 (Microsoft); shared for research use only, not clinical practice.
    "rad_dino": ("microsoft/rad-dino", 768, 518, 518, (0.5307,) * 3, (0.2583,) * 3, "MIT, research"),
}

CONFIGS = tuple(
    EncoderConfig(
        name=_name,
        family="transformers",
        arch="Dinov2Model",
        embed_dim=_dim,
        input_size=_crop,
        mean=_mean,
        std=_std,
        interpolation="bicubic",
        resize_mode="resize_crop",
        crop_pct=_crop / _short,
        resize_convention="hf",
        source="huggingface",
        weights=_repo,
        license=_licence,
    )
    for _name, (_repo, _dim, _crop, _short, _mean, _std, _licence) in _MODELS.items()
)


def find_folder(config, weights=None):
    """The model folder: --weights, the medprobe models folder, or the Hugging Face cache (no network)."""
    if weights:
        path = user_path(weights)
        folder = path.parent if path.is_file() else path
        if not complete(folder, NEEDED):
            raise EncoderError(
                f"{folder}: a {config.name} model folder needs config.json and model.safetensors (or pytorch_model.bin), "
                f"as saved by `save_pretrained` or downloaded from https://huggingface.co/{config.weights}"
            )
        return folder
    if complete(model_folder(config), NEEDED):
        return model_folder(config)
    return hf_cached_folder(config.weights, NEEDED)


def variant(config, suffix):
    """`dinov2_vitb14@tokens,tta`: the recipes of `medprobe.encoders.recipes` (tokens, ms, up, tta, tta8, pad)."""
    config, _ = recipes.parse(config, suffix, ("tokens", "ms", "up"), patch=PATCH)
    return replace(config, embed_dim=_width_to_dim(config, config.embed_dim))


def _width_to_dim(config, width):
    per_scale = width * 2 * recipes.TOKEN_BLOCKS if "tokens" in recipes.recipe_of(config) else width
    return per_scale * len(recipes.scales(config))


def availability(config):
    return "available offline" if find_folder(config) else "needs download"


def load(config, weights=None, device="cpu", runtime="auto"):
    folder = find_folder(config, weights) or _download(config)
    config = config_from_folder(config, folder)
    return TorchEncoder(config, lambda: _build(config, folder), device, runtime, weights)


def _download(config):
    url = f"https://huggingface.co/{config.weights}"
    if is_offline():
        raise missing_weights(config, NEEDED + [OPTIONAL], url, "offline mode is on")
    try:
        return hf_download(config.weights, [group[:1] for group in NEEDED], OPTIONAL)
    except Exception as e:  # no network, gated repo, missing file: all end in the same advice
        raise missing_weights(config, NEEDED + [OPTIONAL], url, f"download failed: {e}") from e


def config_from_folder(config, folder):
    """The registry config updated with what the folder says: its width, and its image processor's settings."""
    folder = Path(folder)
    model = json.loads((folder / "config.json").read_text())
    width = int(model["hidden_size"]) if "hidden_size" in model else _registry_width(config)
    changes = {"embed_dim": _width_to_dim(config, width), "arch": (model.get("architectures") or [config.arch])[0]}
    processor_file = folder / "preprocessor_config.json"
    if processor_file.is_file():
        changes.update(_preprocessing(json.loads(processor_file.read_text()), processor_file))
        if config.resize_mode == "pad":  # the @pad recipe outranks the folder's resize, not its sizes
            changes["resize_mode"] = "pad"
        if "up" in recipes.recipe_of(config):  # @up scales the folder's input size
            changes["input_size"] = recipes.up_size(changes["input_size"], int(model.get("patch_size", PATCH)))
    return replace(config, **changes)


def _registry_width(config):
    return _MODELS[config.name.partition("@")[0]][1]


def _preprocessing(processor, where):
    """EncoderConfig fields equivalent to a transformers image processor config (BitImageProcessor and alike)."""
    if not processor.get("do_rescale", True) or abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise EncoderError(f"{where}: only images rescaled by 1/255 are supported")
    size, crop = processor.get("size", {}), processor.get("crop_size", {})
    fields = {
        "mean": tuple(processor.get("image_mean", IMAGENET_MEAN)) if processor.get("do_normalize", True) else (0.0,) * 3,
        "std": tuple(processor.get("image_std", IMAGENET_STD)) if processor.get("do_normalize", True) else (1.0,) * 3,
        "interpolation": _RESAMPLE.get(processor.get("resample", 3), "bicubic"),
    }
    if processor.get("do_center_crop", False) and "shortest_edge" in size and crop.get("height") == crop.get("width"):
        fields.update(input_size=crop["height"], crop_pct=crop["height"] / size["shortest_edge"], resize_mode="resize_crop")
    elif not processor.get("do_center_crop", False) and size.get("height") and size.get("height") == size.get("width"):
        fields.update(input_size=size["height"], resize_mode="squash")
    else:
        raise EncoderError(f"{where}: unsupported resize (size={size}, crop_size={crop}); medprobe needs a square input")
    return fields


def _build(config, folder):
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(folder)
    except Exception as e:  # transformers and safetensors raise many types for a wrong or corrupt folder
        raise EncoderError(f"{folder}: transformers could not load a model from it ({type(e).__name__}: {e})") from e

    class PooledOutput(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            return self.net(pixel_values=pixels).pooler_output

    class TokenOutput(PooledOutput):
        def forward(self, pixels):
            hidden = self.net(pixel_values=pixels, output_hidden_states=True).hidden_states
            return recipes.token_features(hidden[1:], self.net.layernorm)  # [0] is the patch embedding, not a block

    tokens = "tokens" in recipes.recipe_of(config)
    pooled = TokenOutput(model) if tokens else PooledOutput(model)
    # DINOv2 interpolates its position embeddings to any input size, so one module serves both @ms scales
    return recipes.with_views(recipes.with_scales(lambda size: pooled, config), config)

