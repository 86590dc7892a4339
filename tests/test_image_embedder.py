"""`medprobe.ImageEmbedder` as a scikit-learn transformer, on a handful of real HAM10000 images (plain efficientnet_lite0)."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from conftest import SHARED_DATA, store_vectors
from medprobe.core.errors import DatasetError, EncoderError
from medprobe.encoders.registry import column_groups, get_config

ENCODER = "efficientnet_lite0"


@pytest.fixture(scope="module")
def images(shared_data):
    """Eight melanoma and eight naevus JPEGs from the shared HAM10000 folder (the first by name, so the same every run)."""
    root = SHARED_DATA / "ham10000_melnv" / "train"
    paths = [p for label in ("mel", "nv") for p in sorted((root / label).glob("*.jpg"))[:8]]
    return [str(p) for p in paths], np.repeat([1, 0], 8)


def test_import_medprobe_does_not_import_scikit_learn_or_torch():
    code = "import sys, medprobe; medprobe.ImageEmbedder; print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'torch'}))"
    lazy = "import sys, medprobe; print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'torch'}))"
    assert subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    assert "sklearn" in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_a_pipeline_cross_validates_and_each_image_is_embedded_once(tmp_path, images):
    from medprobe import ImageEmbedder

    paths, labels = images
    cache = tmp_path / "cache"
    model = Pipeline([("embed", ImageEmbedder(ENCODER, cache_dir=str(cache))), ("scale", StandardScaler()),
                      ("probe", LogisticRegression(C=0.01, max_iter=1000))])
    scores = cross_val_score(model, paths, labels, cv=StratifiedKFold(4, shuffle=True, random_state=0), scoring="roc_auc")
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 1))
    # 4 folds x (fit on 12 + score 4) transforms, yet every image was computed once: one store row per image.
    stored = store_vectors(cache)
    assert len(stored) == len(paths)

    twin = clone(model)
    assert twin.get_params()["embed__encoder"] == ENCODER and "_built" not in vars(twin.named_steps["embed"])
    # The embedder's output is what the store holds and what a store-less embedding computes now.
    fresh = ImageEmbedder(ENCODER, cache_dir=str(tmp_path / "other")).transform(paths)
    assert fresh.shape == (len(paths), get_config(ENCODER).embed_dim) and fresh.dtype == np.float32
    np.testing.assert_allclose(twin.named_steps["embed"].fit(paths).transform(paths), fresh, rtol=0, atol=1e-5)


def test_the_built_encoder_is_never_pickled_and_arrays_hit_the_same_store(tmp_path, images):
    from PIL import Image

    from medprobe import ImageEmbedder

    paths, _ = images
    embedder = ImageEmbedder(ENCODER, runtime="torch", cache_dir=str(tmp_path / "cache"))
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:3]]
    first = embedder.fit_transform(pixels)
    assert "_built" in vars(embedder)
    restored = pickle.loads(pickle.dumps(embedder))
    assert len(pickle.dumps(embedder)) < 2000 and "_built" not in vars(restored) and restored.get_params() == embedder.get_params()
    np.testing.assert_array_equal(restored.transform(np.stack(pixels)), first)  # the stacked array has the same digests
    assert len(store_vectors(tmp_path / "cache")) == 3


def test_feature_names_follow_the_recipes_column_blocks():
    from medprobe import ImageEmbedder

    names = ImageEmbedder().get_feature_names_out()  # the default recipe, efficientnet_lite0@stages,up,max
    assert len(names) == get_config("efficientnet_lite0@stages,up,max").embed_dim
    assert names[0] == "avg_stage1_0" and names[16] == "avg_stage2_0" and names[-1] == "max_head_1279"
    assert list(ImageEmbedder(ENCODER).get_feature_names_out()[[0, -1]]) == ["avg_head_0", "avg_head_1279"]
    for name in ("efficientnet_lite2@stages,ms", "efficientnet_lite1@max,std", "resnet18", "efficientnet_lite0@tta"):
        assert sum(width for _, width in column_groups(name)) == get_config(name).embed_dim


def test_the_named_blocks_are_where_the_network_puts_them(tmp_path, images):
    """The avg_head block of @stages,max is the plain encoder's embedding, and max_head its max-pooled twin."""
    from medprobe import ImageEmbedder

    paths = images[0][:2]
    recipe = ImageEmbedder("efficientnet_lite0@stages,max", runtime="torch", cache_dir=str(tmp_path))
    wide, plain = recipe.transform(paths), ImageEmbedder(ENCODER, runtime="torch", cache_dir=str(tmp_path)).transform(paths)
    names = recipe.get_feature_names_out()
    head = np.array([n.startswith("avg_head_") for n in names])
    np.testing.assert_allclose(wide[:, head], plain, rtol=0, atol=1e-5)
    maxed = wide[:, np.array([n.startswith("max_head_") for n in names])]
    assert np.all(maxed >= wide[:, head] - 1e-6)  # a map's maximum is never below its mean


@pytest.mark.parametrize("given, message", [
    ([1.5, 2.5], "got float"),
    (np.zeros((2, 8, 8), np.float32), "got float32 array"),
    ([], "no images"),
])
def test_inputs_that_are_not_images_are_refused_by_name(given, message):
    from medprobe import ImageEmbedder

    with pytest.raises(DatasetError, match=message):
        ImageEmbedder(ENCODER).transform(given)


def test_a_fusion_is_refused_with_the_way_out():
    from medprobe import ImageEmbedder

    with pytest.raises(EncoderError, match="FeatureUnion"):
        ImageEmbedder("efficientnet_lite0+efficientnet_lite2").transform(["x.png"])
