"""Tiny random-init models of every encoder family, saved in the real on-disk formats.

Each writer builds a small model of the same architecture family with the library itself and
saves it the way the real checkpoint is published, so tests load it back through medprobe's real
loader path: open_clip's Hugging Face layout (open_clip_config.json + open_clip_model.safetensors),
a transformers folder (config.json + model.safetensors + preprocessor_config.json), a torchvision
or EfficientNet-Lite state dict (.pth).
"""

import json
import shutil
from pathlib import Path


def go_offline(tmp_path, monkeypatch):
    """Offline mode, and every weights cache inside tmp_path, so the real caches and the network stay untouched."""
    import huggingface_hub.constants

    for variable in ("MEDPROBE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("MEDPROBE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
OPENAI_PREPROCESS = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}


def write_open_clip(folder, model_cfg, preprocess_cfg=OPENAI_PREPROCESS, seed=0):
    """Save a random-init open_clip model as open_clip's Hugging Face repos hold it."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=1))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def vit_clip_cfg(patch_size=32, quick_gelu=True, layers=1):
    vision = {"image_size": 224, "layers": layers, "width": 32, "head_width": 16, "patch_size": patch_size}
    return {"embed_dim": 16, "quick_gelu": quick_gelu, "vision_cfg": vision, "text_cfg": CLIP_TEXT}


def resnet_clip_cfg():
    vision = {"image_size": 224, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}
    return {"embed_dim": 16, "quick_gelu": True, "vision_cfg": vision, "text_cfg": CLIP_TEXT}


def write_biomedclip(folder, seed=0):
    """BiomedCLIP's layout: a timm ViT/16 image tower and a BERT text tower with its tokenizer files beside the weights."""
    from transformers import BertConfig, BertTokenizerFast

    folder = Path(folder)
    text = folder.parent / f"{folder.name}-pubmedbert"
    text.mkdir(parents=True, exist_ok=True)
    words = "a an the of with photo image scan x ray chest normal pneumonia benign malignant lesion tumour healthy retina grade".split()
    vocab = text / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64).save_pretrained(text)
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tokenizer.save_pretrained(text)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": str(text), "hf_tokenizer_name": str(text), "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }
    write_open_clip(folder, model_cfg, {"mean": OPENAI_MEAN, "std": OPENAI_STD}, seed)
    tokenizer.save_pretrained(folder)  # open_clip's local-dir: tokenizer reads the model folder
    return folder


def write_dinov2(folder, crop=224, short=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed=0, layers=1):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=crop)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": short},
        resample=3,
        do_center_crop=True,
        crop_size={"height": crop, "width": crop},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    ).save_pretrained(folder)
    return Path(folder)


def write_state_dict(path, network):
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def write_tiny(config, folder, layers=1):
    """A tiny model of `config`'s family in its real format under `folder` (ViTs with `layers` blocks); returns what
    --weights takes."""
    import torch

    folder = Path(folder)
    torch.manual_seed(0)
    if config.family == "open_clip":
        if config.arch.startswith("hf-hub:"):
            return write_biomedclip(folder)
        if config.arch.startswith("RN"):
            return write_open_clip(folder, resnet_clip_cfg())
        patch = int(config.arch.split("-")[2])
        return write_open_clip(folder, vit_clip_cfg(patch, quick_gelu="quickgelu" in config.arch, layers=layers))
    if config.family == "transformers":
        return write_dinov2(folder, config.input_size, round(config.input_size / config.crop_pct), config.mean, config.std, layers=layers)
    if config.family == "torchvision":
        import torchvision

        # ResNet-18 and -50 are small enough to test as they are, with random weights
        return write_state_dict(folder / config.weights.rsplit("/", 1)[-1], getattr(torchvision.models, config.arch)(weights=None))
    if config.family == "efficientnet_lite":
        from efficientnet_lite_pytorch import EfficientNet

        return write_state_dict(folder / f"{config.name}.pth", EfficientNet.from_name(config.arch))
    raise ValueError(f"no tiny model for family {config.family}")


def put_in_hf_cache(cache, repo, source, revision="0123456789abcdef0123456789abcdef01234567"):
    """Lay out `source`'s files as huggingface_hub's cache does after a download (refs/main -> snapshots/<rev>)."""
    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in Path(source).iterdir():
        if path.is_file():
            shutil.copy(path, snapshot / path.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot
