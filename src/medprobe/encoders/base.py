"""What every encoder is: a frozen config, and the small protocol each family implements.

An encoder maps the float32 `(B, C, H, W)` batch that `make_transform(config)` produces to a
float32 `(B, D)` array. Everything that changes those numbers is in `config`, `runtime` and
`weights_id`, which the embedding cache hashes into its key.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that decides what an encoder outputs; it is hashed into the cache key."""

    name: str
    family: str
    arch: str
    embed_dim: int
    input_size: int
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    # "resize_crop": shorter side to input_size / crop_pct, then centre crop (ImageNet eval);
    # "squash": resize straight to input_size x input_size (used for tiny images such as 28 px MedMNIST);
    # "pad": images smaller than the input centred on a black canvas, larger ones as "resize_crop" (the @pad recipe).
    resize_mode: str = "resize_crop"
    crop_pct: float = 1.0
    # How "resize_crop" rounds, matching the library the weights were trained with: "medprobe",
    # "torchvision" (also open_clip and timm) or "hf" (transformers); see transforms.scaled_size.
    resize_convention: str = "medprobe"
    channels: int = 3
    source: str = ""
    weights: str = ""
    license: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self):
        return asdict(self)


@runtime_checkable
class Encoder(Protocol):
    config: EncoderConfig
    weights_id: str  # "default", or a fingerprint of the --weights file or folder

    @property
    def runtime(self) -> dict:
        """What changes the numbers beyond fp32 rounding (precision, backend); part of the cache key."""

    def prepare(self, n_images: int | None = None, artifacts: Path | None = None) -> None:
        """Told before a job: how many images it embeds (picks the fast path) and where exported graphs may be cached."""

    def calibrate_on(self, digests: list, load) -> None:
        """Told before the cache key is taken: the job's image digests, and `load(rows) -> uint8 (N, H, W, C)` resized
        pixels for any of its rows.

        Only a runtime calibrated on data (int8) uses them; it must put what it chose into `runtime` (under "calibration").
        """

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (B, C, H, W) pixels -> float32 (B, D) embeddings."""

    def runtime_info(self) -> dict:
        """The runtime plus what actually ran (backend, exactness guard), for results files."""


@runtime_checkable
class CalibratedEncoder(Encoder, Protocol):
    """An encoder whose int8 runtimes quantise on a calibration of images (medprobe's TorchEncoder)."""

    int8_calibration: object  # the runtimes.Calibration in use: None until a job draws one or a saved model fixes one

    def calibrate_with(self, calibration) -> None:
        """Calibrate on this fixed runtimes.Calibration (a saved model's) whatever images later jobs hold (int8 only)."""


@runtime_checkable
class StreamingEncoder(Encoder, Protocol):
    """An encoder that can take the next batch while earlier ones are still running (medprobe's OpenVINO runtimes)."""

    def embed_batches(self, batches):
        """Yield `(tag, vectors)` for each `(tag, pixels)` of the iterable `batches`, in order, with the vectors
        `embed_batch(pixels)` gives; the next batch may be pulled (so decoded) before the last is done."""


@runtime_checkable
class TextEncoder(Encoder, Protocol):
    """An image-text model (CLIP-style): image embeddings and text embeddings in one space, for zero-shot."""

    logit_scale: float  # the learned temperature CLIP multiplies cosine similarities by

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Projected text embeddings, float32 (N, D), not normalised."""
