"""Preprocessing built from an encoder's config, so the two cannot drift apart."""

import numpy as np
from PIL import Image

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
# The `fast` runtime's upsampling: OpenCV's SIMD resize is ~12x quicker than Pillow's for 150 -> 224 px (0.07 against
# 0.82 ms an image, one thread, HAM10000 JPEGs; docs/speed.md). Its cubic kernel is a = -0.75 against Pillow's -0.5, so
# pixels differ (by 0.36 grey levels on average) and it is recorded in the policy, hence the store key.
_OPENCV = {"bicubic": "INTER_CUBIC", "bilinear": "INTER_LINEAR"}
RESIZE_LIBRARIES = ("pillow", "opencv")


class Transform:
    """PIL image -> float32 (C, H, W) array, following `config` exactly.

    Images smaller than the input size (28 px MedMNIST) are upsampled with the same
    interpolation, or, with resize_mode "pad", centred on a black canvas (larger images are
    resized and cropped as usual); `policy` records which in the results.
    """

    def __init__(self, config, resize_library="pillow"):
        self.config = config
        # "opencv" upsamples with cv2.resize; shrinking (which needs Pillow's antialiasing), and interpolations OpenCV
        # does not reproduce (nearest, lanczos), stay with Pillow, so only pixels that OpenCV can make well change.
        if resize_library not in RESIZE_LIBRARIES:
            raise ValueError(f"resize_library must be one of {RESIZE_LIBRARIES}, got {resize_library!r}")
        self.resize_library = resize_library
        self.resample = _RESAMPLE[config.interpolation]
        self.mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(config.std, dtype=np.float32)[:, None, None]
        # (x / 255 - mean) / std folded into one multiply and one subtract: same values to ~1 ulp, 3x less memory traffic
        self.scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self.shift = (self.mean / self.std).astype(np.float32)

    @property
    def policy(self):
        c = self.config
        # The default (Pillow) policy has no resize_library entry, so its store keys are those it always had.
        library = {} if self.resize_library == "pillow" else {
            "resize_library": f"opencv cv2.resize {_OPENCV.get(c.interpolation, '')} when upsampling; Pillow when shrinking "
                              "or for other interpolations"}
        return {
            "input_size": c.input_size,
            "resize_mode": c.resize_mode,
            "crop_pct": c.crop_pct,
            "resize_convention": c.resize_convention,
            "interpolation": c.interpolation,
            "mean": list(c.mean),
            "std": list(c.std),
            "channels": c.channels,
            "grayscale": "replicated to 3 channels" if c.channels == 3 else "kept single-channel",
            "small_images": (f"centred on a black {c.input_size} px canvas, not resized" if c.resize_mode == "pad"
                             else f"upsampled to {c.input_size} px with {c.interpolation} interpolation"),
            **library,
        }

    def __call__(self, image):
        return self.normalise(self.resized(image))

    def resized(self, image):
        """The geometric half: PIL image -> uint8 (H, W, C) at the input size (what a pixel cache may hold)."""
        image = image.convert("RGB" if self.config.channels == 3 else "L")
        size = self.config.input_size
        if self.config.resize_mode == "squash":
            image = self._resize(image, (size, size))
        elif self.config.resize_mode == "pad" and max(image.size) <= size:
            # MedMNIST+ zero-pads 28 px images to 224 rather than inventing pixels by upsampling
            canvas = Image.new(image.mode, (size, size))
            canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
            image = canvas
        else:
            convention = self.config.resize_convention
            width, height = scaled_size(image.size, size, self.config.crop_pct, convention)
            image = self._resize(image, (width, height))
            left, top = (crop_start(d - size, convention) for d in (width, height))
            image = image[top : top + size, left : left + size] if isinstance(image, np.ndarray) else image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image)
        return pixels[:, :, None] if pixels.ndim == 2 else pixels

    def _resize(self, image, size):
        """`image` resized to `size` (width, height): a PIL image, or with OpenCV (upsampling only) a uint8 array."""
        upsampling = size[0] >= image.width and size[1] >= image.height
        if self.resize_library == "pillow" or not upsampling or self.config.interpolation not in _OPENCV:
            return image.resize(size, self.resample)
        import cv2

        return cv2.resize(np.asarray(image), size, interpolation=getattr(cv2, _OPENCV[self.config.interpolation]))

    def normalise(self, pixels, out=None):
        """uint8 (H, W, C) -> float32 (C, H, W), written into `out` (a row of the batch) when given.

        Writing into the batch saves a 600 KB temporary and a copy per 224 px image; the arithmetic is the
        same in both cases, so the values are bit-identical.
        """
        if out is None:
            out = np.empty((pixels.shape[2],) + pixels.shape[:2], np.float32)
        out[...] = pixels.transpose(2, 0, 1)  # one pass: uint8 HWC -> float32 CHW
        out *= self.scale
        out -= self.shift
        return out


def scaled_size(image_size, size, crop_pct, convention="medprobe"):
    """(width, height) after scaling the shorter side of `image_size` to size / crop_pct.

    "medprobe" rounds the longer side. "torchvision" (also open_clip and timm) and "hf" (transformers
    image processors) set the shorter side to floor(size / crop_pct) and truncate the longer one, as
    those libraries do, so the pixels match theirs exactly.

    >>> scaled_size((300, 400), 224, 1.0, "torchvision")
    (224, 298)
    """
    if convention == "medprobe":
        scale = size / crop_pct / min(image_size)
        return tuple(max(size, round(d * scale)) for d in image_size)
    # floor like timm's scale_size; the epsilon keeps 224 / (224 / 256) at 256 despite float error
    short = int(size / crop_pct + 1e-6)
    width, height = image_size
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_start(excess, convention="medprobe"):
    """Offset of a centre crop that leaves `excess` pixels: torchvision rounds half to even, the others floor."""
    return int(round(excess / 2.0)) if convention == "torchvision" else excess // 2


def make_transform(config, resize_library="pillow"):
    return Transform(config, resize_library)
