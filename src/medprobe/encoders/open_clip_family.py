"""CLIP-style image-text models through open_clip's own loader: OpenAI CLIP, OpenCLIP (LAION), BiomedCLIP.

Features: by default the image embedding *after* the projection into the shared image-text space
(what `model.encode_image` returns, not L2-normalised) -- the space that zero-shot prompts live in.
Append `@pre` to the name (`clip_vit_b16@pre`) for the pooled features *before* the projection:
for ViTs the layer-normed class token (768 / 1024-d), for RN50 the global average of the last
feature map (2048-d, instead of the attention pool), for timm towers (BiomedCLIP) the trunk's
pooled output. `@tokens` (ViT towers) gives the class and mean patch tokens of the last 4 blocks, and
the generic recipes (`tta`, `tta8`, `pad`) combine with either: `clip_vit_b16@pre,tta`. The choice
is `extra["features"]` (and `extra["recipe"]`) in the config, so results and the cache key record it.

A model folder in open_clip's Hugging Face layout (`open_clip_config.json` beside
`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`) describes itself: it is loaded with
`open_clip.create_model_and_transforms("local-dir:<folder>")` and its preprocessing is used. A lone
checkpoint file is loaded into the registry's architecture.
"""

import json
from dataclasses import replace
from pathlib import Path

from medprobe.core.errors import EncoderError
from medprobe.encoders import recipes
from medprobe.encoders.base import EncoderConfig
from medprobe.encoders.torch_encoder import TorchEncoder
from medprobe.encoders.weights import hf_cached_folder, hf_download, is_offline, missing_weights, model_folder, user_path

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
FEATURES = {"proj": "after the projection (default)", "pre": "before the projection"}
CONFIG_FILE = "open_clip_config.json"
# open_clip's own preference order when a folder holds several checkpoints
CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
# what to place by hand: the config and one checkpoint, as open_clip's Hugging Face repos hold them
NEEDED = [(CONFIG_FILE,), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

# name: (open_clip architecture, Hugging Face repo, dim after / before the projection, licence).
# The repos are the ones open_clip itself downloads for these pretrained tags (openai, laion2b_s34b_b79k).
_MODELS = {
    "clip_vit_b32": ("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.openai", 512, 768, "MIT"),
    "clip_vit_b16": ("ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.openai", 512, 768, "MIT"),
    "clip_vit_l14": ("ViT-L-14-quickgelu", "timm/vit_large_patch14_clip_224.openai", 768, 1024, "MIT"),
    "clip_rn50": ("RN50-quickgelu", "timm/resnet50_clip.openai", 1024, 2048, "MIT"),
    "openclip_vit_b32_laion2b": ("ViT-B-32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 512, 768, "MIT"),
    # PubMedBERT text tower + timm ViT-B/16 image tower; the architecture lives in the repo's open_clip_config.json.
    "biomedclip": (
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        512,
        768,
        "MIT",
    ),
}
_PRE_DIMS = {name: entry[3] for name, entry in _MODELS.items()}

CONFIGS = tuple(
    EncoderConfig(
        name=_name,
        family="open_clip",
        arch=_arch,
        embed_dim=_dim,
        input_size=224,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        interpolation="bicubic",
        resize_mode="resize_crop",
        crop_pct=1.0,
        resize_convention="torchvision",
        source="huggingface",
        weights=_repo,
        license=_licence,
        extra={"features": "proj"},
    )
    for _name, (_arch, _repo, _dim, _pre, _licence) in _MODELS.items()
)


# open_clip builds its towers for one image size: ViT position embeddings and ResNet attention pools are not
# interpolated to another, so the @ms and @up recipes cannot run them at another scale.
_NO_MULTI_SCALE = "open_clip image towers take only the input size they were built for; use @tta or another family"


def variant(config, suffix):
    """`clip_vit_b16@pre`: features before the projection (`@proj`, the default, spelled out); `@tokens` (ViT towers):
    class and mean patch tokens of the last blocks, before the projection; and the generic recipes (tta, tta8, pad).

    >>> get_config("clip_vit_b16@pre,tta").extra
    {'features': 'pre', 'recipe': ['tta']}
    """
    parts = [p.strip() for p in suffix.split(",")]
    chosen = [p for p in parts if p in FEATURES]
    rest = [p for p in parts if p not in FEATURES]
    if len(chosen) > 1 or (chosen and "tokens" in rest):
        raise EncoderError(f"{config.name}@{suffix}: give one feature choice: @pre (before the projection), @proj (after it, "
                           f"the default) or @tokens (ViT tokens, before the projection)")
    base = config.name
    features = "tokens" if "tokens" in rest else (chosen[0] if chosen else "proj")
    recipe = ()
    if rest:
        try:
            config, recipe = recipes.parse(config, ",".join(rest), ("tokens",), refused={"ms": _NO_MULTI_SCALE, "up": _NO_MULTI_SCALE})
        except EncoderError as e:
            raise EncoderError(f"{e}; or a feature choice: @pre (before the projection) or @proj (after it, the default)") from e
    shown = (["pre"] if features == "pre" else []) + list(recipe)
    dims = {"proj": config.embed_dim, "pre": _PRE_DIMS[base], "tokens": _PRE_DIMS[base] * 2 * recipes.TOKEN_BLOCKS}
    return replace(config, name=f"{base}@{','.join(shown)}" if shown else base, embed_dim=dims[features],
                   extra={**config.extra, "features": features})


def _source_in(folder, config):
    """('dir', folder) for a self-describing open_clip folder, ('file', checkpoint) for a bare checkpoint, else None."""
    folder = Path(folder)
    checkpoint = next((folder / name for name in CHECKPOINTS if (folder / name).is_file()), None)
    if checkpoint is None:
        return None
    if (folder / CONFIG_FILE).is_file():
        return ("dir", folder)
    if config.arch.startswith("hf-hub:"):
        return None  # no built-in architecture to load a bare checkpoint into
    return ("file", checkpoint)


def find_source(config, weights=None):
    """Where the weights are: --weights (file or folder), the medprobe models folder, the Hugging Face cache."""
    if weights:
        path = user_path(weights)
        if path.is_file():
            if config.arch.startswith("hf-hub:"):
                raise EncoderError(f"{path}: {config.name} needs its folder (with {CONFIG_FILE}), not a lone checkpoint file")
            return ("file", path)
        source = _source_in(path, config)
        if source is None:
            raise EncoderError(f"{path}: expected {CONFIG_FILE} and one of {', '.join(CHECKPOINTS)} in this folder")
        return source
    source = _source_in(model_folder(config), config)
    if source is None:
        cached = hf_cached_folder(config.weights, [CHECKPOINTS])
        source = _source_in(cached, config) if cached else None
    return source


def availability(config):
    return "available offline" if find_source(config) else "needs download"


def load(config, weights=None, device="cpu", runtime="auto"):
    source = find_source(config, weights) or _download(config)
    text_folder = None
    if source[0] == "dir":
        model_cfg = _read_config(source[1])
        config = config_from_folder(config, model_cfg)
        text_folder = _text_config_folder(config, model_cfg.get("model_cfg", {}).get("text_cfg", {}))
    return ClipEncoder(config, source, text_folder, device, runtime, weights)


def _download(config):
    url = f"https://huggingface.co/{config.weights}"
    if is_offline():
        raise missing_weights(config, NEEDED, url, "offline mode is on")
    try:
        folder = hf_download(config.weights, [CHECKPOINTS[:1]], (CONFIG_FILE, *TOKENIZER_FILES))
    except Exception:
        try:  # some repos (BiomedCLIP) only have the .bin checkpoint
            folder = hf_download(config.weights, [CHECKPOINTS[2:3]], (CONFIG_FILE, *TOKENIZER_FILES))
        except Exception as e:  # no network, gated repo, missing file: all end in the same advice
            raise missing_weights(config, NEEDED, url, f"download failed: {e}") from e
    return _source_in(folder, config)


def _read_config(folder):
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EncoderError(f"{path}: not a readable open_clip config ({e})") from e
    if "model_cfg" not in data:
        raise EncoderError(f"{path}: has no 'model_cfg' (expected open_clip's Hugging Face layout)")
    return data


def config_from_folder(config, data):
    """The registry config updated with the folder's own architecture dims and preprocessing (open_clip's defaults filled in)."""
    model_cfg, preprocess = data["model_cfg"], data.get("preprocess_cfg", {})
    vision = model_cfg.get("vision_cfg", {})
    size = vision.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise EncoderError(f"{config.name}: non-square input {size} is not supported")
        size = size[0]
    resize_mode = preprocess.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        raise EncoderError(f"{config.name}: open_clip resize_mode {resize_mode!r} is not supported (only 'shortest' and 'squash')")
    features = config.extra["features"]
    width = _pre_dim(vision)
    dims = {"proj": int(model_cfg["embed_dim"]), "pre": width, "tokens": width * 2 * recipes.TOKEN_BLOCKS}
    return replace(
        config,
        embed_dim=dims[features],
        input_size=int(size),
        mean=tuple(preprocess.get("mean", OPENAI_MEAN)),
        std=tuple(preprocess.get("std", OPENAI_STD)),
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode="pad" if config.resize_mode == "pad" else "squash" if resize_mode == "squash" else "resize_crop",
        crop_pct=1.0,
    )


def _pre_dim(vision):
    if "timm_model_name" in vision:
        import timm
        import torch

        with torch.device("meta"):  # the width without allocating the weights
            return int(timm.create_model(vision["timm_model_name"], pretrained=False, num_classes=0).num_features)
    if isinstance(vision.get("layers"), (list, tuple)):
        return int(vision.get("width", 64)) * 32  # ModifiedResNet: 4 stages, bottleneck expansion 4
    return int(vision.get("width", 768))


def _text_config_folder(config, text_cfg):
    """A local folder with the config.json of a Hugging Face text tower (BiomedCLIP's PubMedBERT), or None if there is none.

    open_clip builds that tower from `AutoConfig.from_pretrained(hf_model_name)`, which would reach for
    the network; resolving it here keeps loading offline.
    """
    name = text_cfg.get("hf_model_name")
    if not name:
        return None
    if Path(name).is_dir():
        return Path(name)
    local = model_folder(config) / "text"
    if (local / "config.json").is_file():
        return local
    cached = hf_cached_folder(name, [("config.json",)])
    if cached:
        return cached
    url = f"https://huggingface.co/{name}"
    if is_offline():
        raise missing_weights(replace(config, name=f"{config.name}/text"), [("config.json",)], url, f"offline, and its text tower {name} is not cached")
    try:
        return hf_download(name, [("config.json",)])
    except Exception as e:
        raise missing_weights(replace(config, name=f"{config.name}/text"), [("config.json",)], url, f"download failed: {e}") from e


class ClipEncoder(TorchEncoder):
    """A TorchEncoder over a CLIP image tower, plus `embed_text` and `logit_scale` for zero-shot."""

    def __init__(self, config, source, text_folder=None, device="cpu", runtime="auto", weights=None):
        super().__init__(config, self._build_image_module, device, runtime, weights)
        self.source = source
        self.text_folder = text_folder
        self._clip = None
        self._tokenizer = None

    def _build_image_module(self):
        self._clip = _create(self.config, self.source, self.text_folder)
        return recipes.with_views(image_features(self._clip, self.config.extra["features"]), self.config)

    @property
    def clip(self):
        """The whole open_clip model, built (and moved to the device) on first use."""
        _ = self.module
        return self._clip

    def embed_text(self, texts):
        """Projected text embeddings (N, D) float32, not normalised.

        >>> encoder.embed_text(["a chest X-ray with pneumonia"]).shape
        (1, 512)
        """
        import numpy as np
        import open_clip
        import torch

        clip = self.clip
        if self._tokenizer is None:
            kind, path = self.source
            self._tokenizer = open_clip.get_tokenizer(f"local-dir:{path}" if kind == "dir" else self.config.arch)
        with torch.inference_mode():
            tokens = self._tokenizer(list(texts)).to(self.device)
            return np.asarray(clip.encode_text(tokens).float().cpu().numpy(), dtype=np.float32)

    @property
    def logit_scale(self):
        """The learned temperature CLIP multiplies cosine similarities by (100 for OpenAI CLIP)."""
        return float(self.clip.logit_scale.exp())


def _create(config, source, text_folder):
    import open_clip

    kind, path = source
    try:
        if kind == "file":
            model = open_clip.create_model(config.arch, pretrained=str(path))
        else:
            overrides = {}
            if text_folder is not None:
                data = _read_config(path)
                text_cfg = dict(data["model_cfg"]["text_cfg"], hf_model_name=str(text_folder), hf_model_pretrained=False)
                overrides["text_cfg"] = text_cfg
            model = open_clip.create_model(f"local-dir:{path}", **overrides)
    except EncoderError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/KeyError for wrong or corrupt checkpoints
        raise EncoderError(f"{path}: open_clip could not load {config.name} from it ({type(e).__name__}: {e})") from e
    return model


def image_features(clip, features):
    """The image half of `clip` as a module: pixels -> features after (or before) the projection, or ViT tokens."""
    import torch
    from open_clip.transformer import VisionTransformer

    if features == "tokens" and not isinstance(clip.visual, VisionTransformer):
        raise EncoderError(f"@tokens needs open_clip's own ViT image tower; this model has a {type(clip.visual).__name__}: use @pre")

    class _ImageFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, pixels):
            if features == "proj":
                return self.clip.encode_image(pixels)
            if features == "tokens":
                return vit_tokens(self.clip.visual, pixels)
            return before_projection(self.clip.visual, pixels)

    return _ImageFeatures()


def before_projection(visual, pixels):
    """Pooled image features before the projection, for open_clip's three kinds of image tower."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel

    if isinstance(visual, TimmModel):
        return visual.trunk(pixels)  # the head holds the projection
    if isinstance(visual, ModifiedResNet):
        x = visual.stem(pixels)
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
        return x.mean(dim=(2, 3))  # the attention pool is the projection here
    # VisionTransformer.forward minus its final `pooled @ proj`; test_encoders checks pre @ proj == encode_image
    pooled, _ = visual._pool(visual.transformer(visual._embeds(pixels)))
    return pooled



def vit_tokens(visual, pixels):
    """The @tokens vector of an open_clip VisionTransformer: every block run by hand, the last ones' tokens kept."""
    transformer = visual.transformer
    x = visual._embeds(pixels)
    x = x if transformer.batch_first else x.transpose(0, 1)
    hidden = []
    for block in transformer.resblocks:
        x = block(x)
        hidden.append(x if transformer.batch_first else x.transpose(0, 1))
    return recipes.token_features(hidden, visual.ln_post)  # ln_post then the class token is what _pool gives
