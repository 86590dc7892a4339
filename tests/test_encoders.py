"""Every registered encoder, offline: tiny random-init models in the real on-disk formats, loaded through the real loaders.

No test touches the network: offline mode is on, and every cache (medprobe models folder, Hugging
Face cache, torch hub) points into the test's own temporary folder.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medprobe.core.errors import EncoderError
from medprobe.encoders import create_encoder, encoder_status, get_config, list_encoders
from tiny_models import go_offline, put_in_hf_cache, vit_clip_cfg, write_open_clip, write_tiny

NAMES = sorted(list_encoders())
DOWNLOADABLE = [name for name in NAMES if get_config(name).family != "efficientnet_lite"]
CLIP_NAMES = [name for name in NAMES if get_config(name).family == "open_clip"]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Offline mode, and every weights cache inside tmp_path, so the real caches and the network stay untouched."""
    go_offline(tmp_path, monkeypatch)
    return tmp_path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> what --weights takes for a tiny model of that encoder's family (written once per module)."""
    root = tmp_path_factory.mktemp("tiny")
    written = {}

    def get(name):
        if name not in written:
            written[name] = write_tiny(get_config(name), root / name)
        return written[name]

    return get


def images():
    """Odd, non-square sizes (both orientations) and a 28 px grayscale MedMNIST-like image."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (217, 301, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (301, 217, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)),
    ]


def test_registry_lists_the_foundation_models():
    expected = {
        "clip_vit_b32", "clip_vit_b16", "clip_vit_l14", "clip_rn50", "openclip_vit_b32_laion2b", "biomedclip",
        "dinov2_vits14", "dinov2_vitb14", "rad_dino", "resnet18", "resnet50",
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    }  # fmt: skip
    assert expected <= set(NAMES) and len(NAMES) >= 12
    for name in NAMES:
        config = get_config(name)
        assert config.embed_dim > 0 and config.license and config.weights and config.source
        assert len(config.mean) == len(config.std) == 3 and config.interpolation in ("bicubic", "bilinear")


def test_cli_lists_status_dim_and_licence(capsys):
    from medprobe.cli import main

    assert main(["encoders"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.split() and line.split()[0] in NAMES]
    assert len(rows) == len(NAMES) >= 12
    assert all(("available offline" in row) or ("needs download" in row) for row in rows)
    assert any("clip_vit_b16" in row and " 512 " in row and "MIT" in row and "needs download" in row for row in rows)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_loads_and_embeds(name, tiny):
    encoder, transform = create_encoder(name, weights=tiny(name))
    pixels = np.stack([transform(image) for image in images()])
    size = encoder.config.input_size
    assert pixels.shape == (3, 3, size, size) and pixels.dtype == np.float32
    first = encoder.embed_batch(pixels)
    assert first.shape == (3, encoder.config.embed_dim) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, encoder.embed_batch(pixels))  # deterministic: eval mode, no dropout


@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_offline_and_missing_names_files_and_folder(name, offline):
    config = get_config(name)
    assert encoder_status(name) == "needs download"
    with pytest.raises(EncoderError) as error:
        create_encoder(name)
    message = str(error.value)
    assert str(offline / "models" / name) in message and "offline" in message
    expected_file = {"open_clip": "open_clip_config.json", "transformers": "model.safetensors"}.get(config.family)
    assert (expected_file or config.weights.rsplit("/", 1)[-1]) in message
    assert "--weights" in message


@pytest.mark.parametrize("name", ["clip_vit_b16", "dinov2_vits14", "resnet18"])
def test_models_folder_is_found_offline(name, tiny, offline):
    import shutil

    source = tiny(name)
    folder = offline / "models" / name
    if source.is_file():
        folder.mkdir(parents=True)
        shutil.copy(source, folder / source.name)
    else:
        shutil.copytree(source, folder)
    assert encoder_status(name) == "available offline"
    encoder, transform = create_encoder(name)
    assert encoder.embed_batch(np.stack([transform(images()[0])])).shape == (1, encoder.config.embed_dim)


@pytest.mark.parametrize("name", ["biomedclip", "dinov2_vits14", "rad_dino"])
def test_hugging_face_cache_is_found_offline(name, tiny, offline):
    put_in_hf_cache(offline / "hf", get_config(name).weights, tiny(name))
    assert encoder_status(name) == "available offline"
    encoder, transform = create_encoder(name)
    assert encoder.embed_batch(np.stack([transform(images()[0])])).shape == (1, encoder.config.embed_dim)


def test_torch_hub_cache_is_found_offline(tiny, offline):
    import shutil

    checkpoint = tiny("resnet18")
    (offline / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, offline / "torch" / "hub" / "checkpoints" / checkpoint.name)
    assert encoder_status("resnet18") == "available offline"
    encoder, _ = create_encoder("resnet18")
    assert encoder.embed_batch(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 512)


# --- preprocessing: identical to the libraries' own ------------------------------------------


@pytest.mark.parametrize("name", ["clip_vit_b32", "clip_rn50", "biomedclip"])
def test_open_clip_preprocessing_matches_open_clip(name, tiny):
    import open_clip

    folder = tiny(name)
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    _, transform = create_encoder(name, weights=folder)
    for image in images():
        np.testing.assert_allclose(transform(image), preprocess(image).numpy(), atol=2e-6)


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vitb14", "rad_dino"])
def test_transformers_preprocessing_matches_image_processor(name, tiny):
    from transformers import AutoImageProcessor

    folder = tiny(name)
    pil_processor = AutoImageProcessor.from_pretrained(folder, use_fast=False)
    default_processor = AutoImageProcessor.from_pretrained(folder)
    _, transform = create_encoder(name, weights=folder)
    assert transform.config.resize_convention == "hf"
    three_levels = 3 / 255 / min(transform.config.std) + 1e-5
    for image in images():
        ours = transform(image)
        # The PIL processor resizes exactly as we (and DINOv2's own PIL transforms) do; the default, torchvision-based
        # one antialiases differently and lands a few pixels a grey level or two away.
        np.testing.assert_allclose(ours, pil_processor(images=image, return_tensors="np")["pixel_values"][0], atol=2e-6)
        np.testing.assert_allclose(ours, default_processor(images=image, return_tensors="np")["pixel_values"][0], atol=three_levels)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_preprocessing_matches_the_weights_transforms(name, tiny):
    import torchvision

    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    _, transform = create_encoder(name, weights=tiny(name))
    assert get_config(name).weights == weights.url
    for image in images():
        # torchvision's preset expects RGB; grey images are replicated to 3 channels, as we do
        np.testing.assert_allclose(transform(image), weights.transforms()(image.convert("RGB")).numpy(), atol=2e-6)


def test_registry_matches_open_clip_architectures_and_tags():
    """Dims, input size and preprocessing in the registry are what open_clip itself says for these tags."""
    import open_clip

    tags = {"clip_vit_b32": "openai", "clip_vit_b16": "openai", "clip_vit_l14": "openai", "clip_rn50": "openai", "openclip_vit_b32_laion2b": "laion2b_s34b_b79k"}
    for name, tag in tags.items():
        config, pre = get_config(name), get_config(f"{name}@pre")
        model_cfg = open_clip.get_model_config(config.arch)
        pretrained = open_clip.get_pretrained_cfg(config.arch, tag)
        vision = model_cfg["vision_cfg"]
        assert config.embed_dim == model_cfg["embed_dim"] and config.input_size == vision["image_size"]
        assert pre.embed_dim == (vision["width"] * 32 if isinstance(vision["layers"], (list, tuple)) else vision["width"])
        assert pretrained["hf_hub"].rstrip("/") == config.weights
        assert tuple(pretrained["mean"]) == config.mean and tuple(pretrained["std"]) == config.std
        assert pretrained["interpolation"] == config.interpolation and pretrained["resize_mode"] == "shortest"
        assert pretrained.get("quick_gelu", False) == model_cfg.get("quick_gelu", False)


def test_open_clip_folder_preprocessing_is_used(tmp_path):
    """A folder's own preprocess_cfg (here: squash, bilinear, other mean) wins over the registry's, and enters the config."""
    cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "resize_mode": "squash"}
    folder = write_open_clip(tmp_path / "custom", vit_clip_cfg(32), cfg)
    encoder, transform = create_encoder("clip_vit_b32", weights=folder)
    assert (encoder.config.resize_mode, encoder.config.interpolation, encoder.config.mean) == ("squash", "bilinear", (0.5, 0.5, 0.5))
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    np.testing.assert_allclose(transform(images()[0]), preprocess(images()[0]).numpy(), atol=2e-6)


# --- CLIP features before / after the projection ---------------------------------------------


@pytest.mark.parametrize("name", ["clip_vit_b32", "clip_rn50", "biomedclip"])
def test_pre_projection_features(name, tiny):
    import torch

    from medprobe.embedding.embed import describe_job

    proj, transform = create_encoder(name, weights=tiny(name))
    pre, pre_transform = create_encoder(f"{name}@pre", weights=tiny(name))
    assert pre.config.name == f"{name}@pre" and pre.config.extra["features"] == "pre" and proj.config.extra["features"] == "proj"
    assert describe_job(pre, pre_transform) != describe_job(proj, transform)  # so the cache keys differ
    pixels = np.stack([transform(image) for image in images()])
    after, before = proj.embed_batch(pixels), pre.embed_batch(pixels)
    assert before.shape == (3, pre.config.embed_dim) and pre.config.embed_dim != proj.config.embed_dim
    visual = proj.clip.visual
    with torch.no_grad():
        if hasattr(visual, "proj") and isinstance(visual.proj, torch.nn.Parameter):  # ViT: features @ proj
            projected = torch.from_numpy(before) @ visual.proj
        elif hasattr(visual, "head"):  # timm tower: the head is the projection
            projected = visual.head(torch.from_numpy(before))
        else:  # ModifiedResNet: its attention pool is not a function of the mean, so only shapes compare
            projected = None
    if projected is not None:
        np.testing.assert_allclose(projected.numpy(), after, rtol=1e-4, atol=1e-5)


def test_feature_suffix_errors():
    with pytest.raises(EncoderError, match="@pre"):
        get_config("clip_vit_b16@post")
    with pytest.raises(EncoderError, match="unknown recipe 'pre'.*offers stages, ms, up, max, std, tta, tta8, pad"):
        get_config("efficientnet_lite0@pre")
    with pytest.raises(EncoderError, match="no '@' recipes"):
        get_config("resnet18@pre")
    assert get_config("clip_vit_b16@proj") == get_config("clip_vit_b16")


# --- weights given by hand --------------------------------------------------------------------


def test_bare_checkpoint_loads_into_the_registry_architecture(tmp_path):
    """A lone open_clip checkpoint file (no config beside it) loads into the registry's built-in architecture."""
    import open_clip

    from medprobe.encoders import open_clip_family

    folder = write_open_clip(tmp_path / "tiny", vit_clip_cfg(32))
    arch_file = tmp_path / "arch" / "medprobe-tiny-ViT.json"
    arch_file.parent.mkdir()
    arch_file.write_text(json.dumps(vit_clip_cfg(32)))
    open_clip.add_model_config(arch_file)
    config = replace(get_config("clip_vit_b32"), arch="medprobe-tiny-ViT")
    encoder = open_clip_family.load(config, weights=folder / "open_clip_model.safetensors")
    out = encoder.embed_batch(np.zeros((2, 3, 224, 224), np.float32))
    reference, _ = create_encoder("clip_vit_b32", weights=folder)
    np.testing.assert_allclose(out, reference.embed_batch(np.zeros((2, 3, 224, 224), np.float32)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["clip_vit_b32", "dinov2_vits14", "resnet18"])
def test_corrupt_weights_name_the_file(name, tiny, tmp_path):
    import shutil

    source = tiny(name)
    if source.is_file():
        broken = tmp_path / source.name
        broken.write_bytes(b"not a checkpoint")
    else:
        broken = tmp_path / "broken"
        shutil.copytree(source, broken)
        weights = next(p for p in broken.iterdir() if p.suffix == ".safetensors")
        weights.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError) as error:
        encoder, _ = create_encoder(name, weights=broken)
        encoder.embed_batch(np.zeros((1, 3, encoder.config.input_size, encoder.config.input_size), np.float32))
    assert str(broken) in str(error.value)


def test_weights_path_that_does_not_exist():
    with pytest.raises(EncoderError, match="no such file or folder"):
        create_encoder("dinov2_vits14", weights="/nonexistent/dinov2")


def test_folder_without_the_model_files(tmp_path):
    with pytest.raises(EncoderError, match="config.json"):
        create_encoder("dinov2_vits14", weights=tmp_path)
    with pytest.raises(EncoderError, match="open_clip_config.json"):
        create_encoder("biomedclip", weights=tmp_path)
