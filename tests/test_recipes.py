"""Feature recipes (`name@stages,tta`): what each one computes, that it exports to ONNX unchanged, and that it is keyed.

EfficientNet-Lite0 runs with its real weights; the ViT families with tiny random-init models written in
their real on-disk formats and loaded through the real loaders.
"""

import numpy as np
import pytest
from PIL import Image

from medprobe.core.errors import EncoderError
from medprobe.embedding.embed import describe_job
from medprobe.encoders import create_encoder, get_config
from medprobe.encoders.efficientnet_lite import HEAD_DIM, STAGE_CHANNELS, STAGES
from medprobe.encoders.recipes import MS_SCALE, TOKEN_BLOCKS, UP_SCALE
from medprobe.encoders.transforms import make_transform
from tiny_models import (
    go_offline,
    write_tiny,
)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    go_offline(tmp_path, monkeypatch)
    return tmp_path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny models with TOKEN_BLOCKS transformer blocks (the shared helpers default to one)."""
    root = tmp_path_factory.mktemp("tiny")
    written = {}

    def get(name):
        if name not in written:
            written[name] = write_tiny(get_config(name), root / name, layers=TOKEN_BLOCKS)
        return written[name]

    return get


def _pixels(n=3, size=224, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def _symmetric(size=224):
    """Images unchanged by every flip and right-angle rotation: functions of the distance to the centre."""
    c = np.arange(size) - (size - 1) / 2
    r = np.hypot(c[:, None], c[None, :])
    return np.stack([np.stack([np.cos(r / (5 + 3 * i + j)) for j in range(3)]) for i in range(2)]).astype(np.float32)


def test_recipe_names_are_canonical_and_in_the_cache_key():
    a, b = get_config("efficientnet_lite0@tta,stages"), get_config("efficientnet_lite0@stages,tta")
    assert a == b and a.name == "efficientnet_lite0@stages,tta" and a.extra["recipe"] == ["stages", "tta"]
    assert a.embed_dim == HEAD_DIM + sum(STAGE_CHANNELS["efficientnet_lite0"][s - 1] for s in STAGES)
    plain = get_config("efficientnet_lite0")
    assert plain.embed_dim == HEAD_DIM and "recipe" not in plain.extra
    plain_encoder, plain_transform = create_encoder("efficientnet_lite0")
    recipe_encoder, recipe_transform = create_encoder("efficientnet_lite0@stages")
    assert describe_job(plain_encoder, plain_transform) != describe_job(recipe_encoder, recipe_transform)


@pytest.mark.parametrize("suffix, message", [
    ("stagse", "unknown recipe 'stagse'; did you mean 'stages'"),
    ("tta,tta8", "tta and tta8"),
    ("tta,tta", "repeated"),
    ("tokens", "unknown recipe 'tokens'"),  # a ViT recipe, not a CNN one
    ("ms,up", "ms and up"),
])  # fmt: skip
def test_bad_recipes_are_refused_by_name(suffix, message):
    with pytest.raises(EncoderError, match=message):
        get_config(f"efficientnet_lite0@{suffix}")


def test_stages_end_with_the_plain_embedding():
    pixels = _pixels()
    plain, _ = create_encoder("efficientnet_lite0", runtime="torch")
    stages, _ = create_encoder("efficientnet_lite0@stages", runtime="torch")
    head = plain.embed_batch(pixels)
    out = stages.embed_batch(pixels)
    assert out.shape == (3, stages.config.embed_dim) == (3, 2064)
    np.testing.assert_allclose(out[:, -HEAD_DIM:], head, rtol=1e-5, atol=1e-6)
    assert (out[:, :-HEAD_DIM] != 0).any(axis=1).all()  # the stage columns carry something


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_stages_width_declared_is_the_width_embedded(name):
    # Lite2 is 1.1x wider than Lite0/1 in stages 3-7; a declared 2064 for it broke every Lite2@stages run
    encoder, _ = create_encoder(f"{name}@stages", runtime="torch")
    out = encoder.embed_batch(_pixels(n=1, size=encoder.config.input_size))
    assert out.shape == (1, encoder.config.embed_dim)


@pytest.mark.parametrize("recipe", ["tta", "tta8"])
def test_tta_of_a_symmetric_image_is_the_plain_embedding_and_differs_otherwise(recipe):
    plain, _ = create_encoder("efficientnet_lite0", runtime="torch")
    averaged, _ = create_encoder(f"efficientnet_lite0@{recipe}", runtime="torch")
    symmetric = _symmetric()
    np.testing.assert_allclose(averaged.embed_batch(symmetric), plain.embed_batch(symmetric), rtol=1e-4, atol=1e-5)
    pixels = _pixels(2)
    assert not np.allclose(averaged.embed_batch(pixels), plain.embed_batch(pixels), atol=1e-3)


def test_tta_is_the_mean_of_the_flipped_embeddings():
    plain, _ = create_encoder("efficientnet_lite0", runtime="torch")
    averaged, _ = create_encoder("efficientnet_lite0@tta", runtime="torch")
    pixels = _pixels(2)
    expected = (plain.embed_batch(pixels) + plain.embed_batch(pixels[..., ::-1].copy())) / 2
    np.testing.assert_allclose(averaged.embed_batch(pixels), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("recipe", ["stages", "tta8", "stages,tta,pad", "stages,ms", "stages,up", "stages,up,max", "stages,up,max,std"])
def test_onnx_runs_each_recipe_and_equals_eager(recipe, tmp_path):
    encoder, _ = create_encoder(f"efficientnet_lite0@{recipe}", runtime="onnx")
    encoder.prepare(4, tmp_path)
    pixels = _pixels(4, size=encoder.config.input_size)
    out = encoder.embed_batch(pixels)
    assert encoder.backend.startswith("onnxruntime"), encoder.backend  # the exactness guard kept ONNX Runtime
    assert encoder.guard["min_cosine"] >= 0.999999
    np.testing.assert_allclose(out, encoder.reference_batch(pixels), rtol=1e-3, atol=1e-4)


def _lite0_head_at(pixels, size, state_dict):
    """Lite0's pooled head on `pixels` upsampled to `size`, by the package's own network with dynamic TF-'same' padding
    (which fits any input size): the reference for the larger scales of @ms and @up."""
    import torch
    import torch.nn.functional as F
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    reference.load_state_dict(state_dict)
    with torch.inference_mode():
        upsampled = F.interpolate(torch.from_numpy(pixels), size=(size, size), mode="bilinear", align_corners=False)
        return reference.eval().extract_features(upsampled).mean(dim=(2, 3)).numpy()


def test_up_is_the_network_run_on_the_image_resized_to_the_larger_size():
    up, transform = create_encoder("efficientnet_lite0@up", runtime="torch")
    # one resize, in the transform, straight to 260 px: nothing is upsampled inside the graph
    assert transform.policy["input_size"] == 260 == round(224 * UP_SCALE) and "scales" not in up.config.extra
    assert transform(Image.new("RGB", (150, 112), (200, 90, 40))).shape == (3, 260, 260)
    pixels = _pixels(2, size=260)
    out = up.embed_batch(pixels)
    assert out.shape == (2, HEAD_DIM)
    np.testing.assert_allclose(out, _lite0_head_at(pixels, 260, up.module.net.state_dict()), rtol=1e-4, atol=1e-5)


def _reference_head(encoder, pixels):
    """The head's feature maps from the package's own Lite0 network with the encoder's weights, in float64."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0", image_size=pixels.shape[-1])
    reference.load_state_dict(encoder.module.net.state_dict())
    with torch.inference_mode():
        return reference.eval().extract_features(torch.from_numpy(pixels)).double()


def test_max_is_the_average_pooled_vector_then_the_maxima_of_the_same_maps():
    config = get_config("efficientnet_lite0@max,up,stages")
    assert config.name == "efficientnet_lite0@stages,up,max" and config.embed_dim == 2 * (HEAD_DIM + 784)
    assert get_config("efficientnet_lite0@max").embed_dim == 2 * HEAD_DIM
    averaged, _ = create_encoder("efficientnet_lite0@stages,up", runtime="torch")
    both, _ = create_encoder("efficientnet_lite0@stages,up,max", runtime="torch")
    pixels = _pixels(2, size=260)
    out = both.embed_batch(pixels)
    half = config.embed_dim // 2
    np.testing.assert_array_equal(out[:, :half], averaged.embed_batch(pixels))  # the default's columns, untouched
    head_max = _reference_head(both, pixels).amax(dim=(2, 3)).numpy()
    np.testing.assert_allclose(out[:, -HEAD_DIM:], head_max, rtol=1e-5, atol=1e-6)
    assert (out[:, half:] >= out[:, :half] - 1e-6).all()  # a map's maximum is never below its mean
    with pytest.raises(EncoderError, match="unknown recipe 'max'"):
        get_config("dinov2_vits14@max")


def test_std_follows_the_maxima_and_is_each_channels_spread_over_the_map():
    config = get_config("efficientnet_lite1@std,stages,max")
    assert config.name == "efficientnet_lite1@stages,max,std" and config.embed_dim == 3 * (HEAD_DIM + 784)
    assert get_config("efficientnet_lite0@std").embed_dim == 2 * HEAD_DIM
    with_max, _ = create_encoder("efficientnet_lite0@stages,max", runtime="torch")
    three, _ = create_encoder("efficientnet_lite0@stages,max,std", runtime="torch")
    pixels = _pixels(2)
    out = three.embed_batch(pixels)
    np.testing.assert_array_equal(out[:, : 2 * (HEAD_DIM + 784)], with_max.embed_batch(pixels))  # @max's columns, untouched
    head_std = _reference_head(three, pixels).std(dim=(2, 3), unbiased=False).numpy()
    np.testing.assert_allclose(out[:, -HEAD_DIM:], head_std, rtol=1e-4, atol=1e-5)
    assert (out[:, -(HEAD_DIM + 784):] >= 0).all() and out[:, -HEAD_DIM:].max() > 0


def test_up_rounds_a_vit_to_whole_patches(tiny):
    assert get_config("dinov2_vits14@up").input_size == 266 == 19 * 14  # not 260, which drops 8 px at the edge
    assert get_config("efficientnet_lite2@stages,up").input_size == 302
    # loaded from a model folder, whose image processor says 224 px: @up still scales it, to whole patches
    up, transform = create_encoder("dinov2_vits14@up", weights=tiny("dinov2_vits14"), runtime="torch")
    plain, _ = create_encoder("dinov2_vits14", weights=tiny("dinov2_vits14"), runtime="torch")
    assert plain.config.input_size == 224 and up.config.input_size == transform.policy["input_size"] == 266
    assert up.embed_batch(_pixels(2, size=266)).shape == (2, up.config.embed_dim)


def test_multi_scale_is_the_plain_features_then_those_of_the_upsampled_image():
    assert get_config("efficientnet_lite0@ms,stages").name == "efficientnet_lite0@stages,ms"
    pixels = _pixels(2)
    plain, _ = create_encoder("efficientnet_lite0@stages", runtime="torch")
    multi, _ = create_encoder("efficientnet_lite0@stages,ms", runtime="torch")
    out = multi.embed_batch(pixels)
    width = plain.config.embed_dim
    assert out.shape == (2, multi.config.embed_dim) == (2, 2 * width)
    np.testing.assert_allclose(out[:, :width], plain.embed_batch(pixels), rtol=1e-5, atol=1e-6)
    head = _lite0_head_at(pixels, round(224 * MS_SCALE), multi.module.nets[0].net.state_dict())
    np.testing.assert_allclose(out[:, -HEAD_DIM:], head, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out[:, width - HEAD_DIM : width], head, atol=1e-3)  # the scales see different things


def test_multi_scale_composes_with_tta_and_keys_the_store():
    plain, plain_transform = create_encoder("efficientnet_lite0@stages", runtime="torch")
    multi, multi_transform = create_encoder("efficientnet_lite0@stages,ms", runtime="torch")
    assert multi.config.extra["scales"] == [1.0, MS_SCALE] and multi_transform.policy == plain_transform.policy
    assert describe_job(plain, plain_transform) != describe_job(multi, multi_transform)
    both, _ = create_encoder("efficientnet_lite0@stages,tta,ms", runtime="torch")
    pixels = _pixels(2)
    expected = (multi.embed_batch(pixels) + multi.embed_batch(pixels[..., ::-1].copy())) / 2
    np.testing.assert_allclose(both.embed_batch(pixels), expected, rtol=1e-4, atol=1e-5)


def test_multi_scale_is_refused_where_the_network_takes_one_size():
    with pytest.raises(EncoderError, match="clip_vit_b16 cannot take @ms .*only the input size they were built for"):
        get_config("clip_vit_b16@pre,ms")
    with pytest.raises(EncoderError, match="resnet50 has no '@' recipes"):
        get_config("resnet50@ms")


def test_pad_centres_small_images_on_black_and_resizes_large_ones():
    transform = make_transform(get_config("efficientnet_lite0@pad"))
    small = Image.fromarray(np.full((28, 28), 255, dtype=np.uint8))
    out = transform(small)
    assert out.shape == (3, 224, 224)
    inside = out[:, 98:126, 98:126]
    assert np.allclose(inside, 1.0) and np.allclose(out[:, :98], -1.0) and np.allclose(out[:, 126:], -1.0)  # (x - 127.5) / 127.5
    assert "black" in transform.policy["small_images"]
    large = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    np.testing.assert_array_equal(transform(large), make_transform(get_config("efficientnet_lite0"))(large))


# --- the ViT families: class + mean patch token of the last blocks -----------------------------


@pytest.mark.parametrize("name, plain_suffix", [("dinov2_vits14", ""), ("rad_dino", ""), ("clip_vit_b32", "@pre")])
def test_vit_tokens_hold_the_plain_class_token(name, plain_suffix, tiny):
    plain, transform = create_encoder(f"{name}{plain_suffix}", weights=tiny(name), runtime="torch")
    tokens, tokens_transform = create_encoder(f"{name}@tokens", weights=tiny(name), runtime="torch")
    width = plain.config.embed_dim
    assert tokens.config.embed_dim == 2 * TOKEN_BLOCKS * width and tokens.config.extra["recipe"] == ["tokens"]
    assert describe_job(plain, transform) != describe_job(tokens, tokens_transform)
    rng = np.random.default_rng(0)
    pixels = np.stack([transform(Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))) for _ in range(2)])
    out = tokens.embed_batch(pixels)
    assert out.shape == (2, tokens.config.embed_dim) and np.isfinite(out).all()
    last_class_token = out[:, 2 * (TOKEN_BLOCKS - 1) * width : (2 * TOKEN_BLOCKS - 1) * width]
    np.testing.assert_allclose(last_class_token, plain.embed_batch(pixels), rtol=1e-4, atol=1e-5)


def test_dinov2_multi_scale_runs_the_same_model_at_both_sizes_and_exports(tiny, tmp_path):
    name = "dinov2_vits14"
    plain, _ = create_encoder(name, weights=tiny(name), runtime="torch")
    multi, _ = create_encoder(f"{name}@ms", weights=tiny(name), runtime="onnx")
    multi.prepare(2, tmp_path)
    pixels = _pixels(2, multi.config.input_size)
    out = multi.embed_batch(pixels)
    assert multi.backend.startswith("onnxruntime"), multi.backend
    np.testing.assert_allclose(out, multi.reference_batch(pixels), rtol=1e-3, atol=1e-4)
    width = plain.config.embed_dim
    assert out.shape == (2, 2 * width)
    np.testing.assert_allclose(out[:, :width], plain.embed_batch(pixels), rtol=1e-3, atol=1e-4)
    assert not np.allclose(out[:, width:], out[:, :width], atol=1e-3)


# open_clip's ViTs reach ONNX Runtime too since the export switches off nn.MultiheadAttention's fused kernel; that is
# tested in test_export_attention.py.
@pytest.mark.parametrize("name", ["dinov2_vits14"])
def test_vit_recipes_export_to_onnx(name, tiny, tmp_path):
    encoder, _ = create_encoder(f"{name}@tokens,tta", weights=tiny(name), runtime="onnx")
    encoder.prepare(2, tmp_path)
    pixels = _pixels(2, encoder.config.input_size)
    out = encoder.embed_batch(pixels)
    assert encoder.backend.startswith("onnxruntime"), encoder.backend
    np.testing.assert_allclose(out, encoder.reference_batch(pixels), rtol=1e-3, atol=1e-4)


def test_clip_feature_choice_and_recipes_combine():
    assert get_config("clip_vit_b16@tta,pre").name == "clip_vit_b16@pre,tta"
    assert get_config("clip_vit_b16@pre,tta").extra == {"features": "pre", "recipe": ["tta"]}
    with pytest.raises(EncoderError, match="one feature choice"):
        get_config("clip_vit_b16@pre,tokens")
    with pytest.raises(EncoderError, match="@pre"):
        get_config("clip_vit_b16@post")


def test_tokens_on_a_resnet_clip_tower_is_refused(tiny):
    encoder, _ = create_encoder("clip_rn50@tokens", weights=tiny("clip_rn50"), runtime="torch")
    with pytest.raises(EncoderError, match="needs open_clip's own ViT"):
        encoder.embed_batch(_pixels(1))


def test_run_chooses_among_recipes_by_the_selection_protocol_and_records_it(tmp_path, medprobe):
    import json

    from conftest import write_npz

    npz = write_npz(tmp_path / "t.npz", n_train=30, n_val=12, n_test=12, classes=2)
    out = tmp_path / "out"
    spec = "efficientnet_lite0|efficientnet_lite0@stages"
    done = medprobe("run", "--dataset", npz, "--encoder", spec, "--selection", "val", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "results.json").read_text())
    choice = result["probe"]["selection"]["encoder_choice"]
    assert set(choice["scores"]) == {"efficientnet_lite0", "efficientnet_lite0@stages"} and choice["by"] == "val AUC"
    assert choice["chosen"] == max(choice["scores"], key=choice["scores"].get) == result["encoder"]["name"]
    assert choice["scores"][choice["chosen"]] == max(s for s in result["probe"]["selection"]["scores"].values() if s is not None)
    assert result["timings"]["embedded_now"] == 2 * 54  # both candidates were embedded and their cost counted
