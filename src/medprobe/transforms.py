"""Preprocessing built from an encoder's config, so the two cannot drift apart."""

import numpy as np
from PIL import Image

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class Transform:
    """PIL image -> float32 (C, H, W) array, following `config` exactly.

    Images smaller than the input size (28 px MedMNIST) are upsampled with the same
    interpolation; `policy` records that in the results.
    """

    def __init__(self, config):
        self.config = config
        self.resample = _RESAMPLE[config.interpolation]
        self.mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(config.std, dtype=np.float32)[:, None, None]

    @property
    def policy(self):
        c = self.config
        return {
            "input_size": c.input_size,
            "resize_mode": c.resize_mode,
            "crop_pct": c.crop_pct,
            "interpolation": c.interpolation,
            "mean": list(c.mean),
            "std": list(c.std),
            "channels": c.channels,
            "grayscale": "replicated to 3 channels" if c.channels == 3 else "kept single-channel",
            "small_images": f"upsampled to {c.input_size} px with {c.interpolation} interpolation",
        }

    def __call__(self, image):
        image = image.convert("RGB" if self.config.channels == 3 else "L")
        size = self.config.input_size
        if self.config.resize_mode == "squash":
            image = image.resize((size, size), self.resample)
        else:
            scale = size / self.config.crop_pct / min(image.size)
            width, height = (max(size, round(d * scale)) for d in image.size)
            image = image.resize((width, height), self.resample)
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return (pixels.transpose(2, 0, 1) - self.mean) / self.std


def make_transform(config):
    return Transform(config)
