"""`ImageEmbedder`: medprobe's embedding step as a scikit-learn transformer, for notebooks that build Pipelines."""

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from medprobe.core import defaults
from medprobe.core.errors import DatasetError, EncoderError
from medprobe.data.datasets import Dataset
from medprobe.data.sources import ArrayImages, FileImages
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders.registry import column_groups, create_encoder


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Image file paths (or uint8 image arrays) in, the frozen encoder's embeddings out: an (N, D) float32 array.

    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> model = make_pipeline(ImageEmbedder("efficientnet_lite0"), StandardScaler(), LogisticRegression(C=0.01))
    >>> cross_val_score(model, paths, labels, cv=5, scoring="roc_auc")

    `fit` learns nothing (it returns self). `transform` plans the job and reads and fills the embedding store
    exactly as `medprobe run` does (images keyed by the SHA-256 of their bytes, one store per recipe), so the
    transforms that every CV fold and grid point repeat compute each image once, and images the CLI embedded
    with the same encoder and runtime cost nothing. The encoder is built on the first transform and never
    pickled: `__init__` only stores its arguments, so `clone`, `GridSearchCV` and joblib workers get a light
    object (a worker builds its own encoder). `get_feature_names_out` names the recipe's column blocks
    (`avg_stage1_0`, ..., `max_head_1279`).

    How the selection differs from medprobe's: `GridSearchCV` or `cross_val_score` around this pipeline takes
    the grid point with the best mean score over the folds you give it, plain K-fold unless you pass a grouped
    splitter and `groups=`. `medprobe run --selection cv` (the default) instead runs 5-fold x 3 repeated
    stratified CV over train+val, keeps each patient or lesion (`--group`) and every set of identical images in
    one fold, widens the grid at its edges, and takes the *simplest* value within one standard error of the
    best (the one-standard-error rule), then decides thresholds and calibrators on out-of-fold scores. Here,
    identical copies and a patient's images can straddle folds and inflate the CV score: pass
    `GroupKFold`/`StratifiedGroupKFold` with `groups=` when your data has them.
    """

    def __init__(self, encoder=defaults.ENCODER, runtime="auto", cache_dir=None, weights=None, device="cpu", batch_size=64,
                 progress=False):
        self.encoder = encoder
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.progress = progress

    def fit(self, X=None, y=None):
        """Nothing to learn: the encoder is frozen."""
        return self

    def transform(self, X):
        """(N, D) float32 embeddings of N images: file paths, an (N, H, W[, C]) uint8 array, or a list of uint8 arrays."""
        if "+" in self.encoder or "|" in self.encoder:
            raise EncoderError(f"ImageEmbedder takes one encoder, got {self.encoder!r}; concatenate several with FeatureUnion")
        images = _image_source(X)
        options = EmbedOptions(self.encoder, self.weights, self.device, self.runtime, self.batch_size, self.cache_dir,
                               progress=self.progress)
        built = self.__dict__.get("_built")
        if built is None or built[0] != options:
            built = (options, *create_encoder(self.encoder, weights=self.weights, device=self.device, runtime=self.runtime))
            self.__dict__["_built"] = built  # not a parameter and not pickled (see __getstate__)
        n = len(images)
        data = Dataset("images", "multi-class", [], np.arange(n).astype(str), np.full(n, "test"), np.zeros(n, np.int64), images)
        return embed(data, built[1], built[2], options).vectors

    def get_feature_names_out(self, input_features=None):
        """One name per column: the recipe's block ('avg_stage1', 'max_head', ...; 'embedding' for one block) and the index in it."""
        return np.array([f"{group}_{i}" for group, width in column_groups(self.encoder) for i in range(width)], dtype=object)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_built", None)  # a built encoder (a torch module, an ONNX session) is rebuilt where it is needed
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False  # images, not a feature matrix
        return tags


def _image_source(X):
    """FileImages for paths, ArrayImages for arrays; anything else is refused with what was given."""
    if isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim in (3, 4):
        return ArrayImages([X])
    items = list(X) if isinstance(X, (list, tuple, np.ndarray)) else None
    if items is None or not items:
        raise DatasetError(f"ImageEmbedder.transform takes image paths or uint8 image arrays; got {type(X).__name__}"
                           + (" with no images" if items == [] else ""))
    if all(isinstance(x, (str, Path)) for x in items):
        return FileImages(items)
    if all(isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim in (2, 3) for x in items):
        return ArrayImages([x[None] for x in items])
    kinds = sorted({type(x).__name__ if not isinstance(x, np.ndarray) else f"{x.dtype} array of {x.ndim} dims" for x in items})
    raise DatasetError(f"ImageEmbedder.transform takes image paths or uint8 image arrays (H, W[, C]); got {', '.join(kinds)}")
