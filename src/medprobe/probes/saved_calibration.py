"""The int8 calibration a saved model keeps, so `predict`, `evaluate` and a server quantise exactly as the fit did.

    MODEL_DIR/int8_calibration.safetensors  uint8 (N, H, W, C): the calibration images, resized by the model's transform
    model.json "int8_calibration"           its record (what keyed the fit's store), the sample's digests, the file's SHA-256

Written by `fit --save` under an int8 runtime (int8, openvino-int8, fast). Without it, each job quantised on a sample of
its own images, so one HAM10000 image got p_mel 0.6077 with its folder and 0.7609 alone (issue 27). The pixels are kept
rather than the quantiser's activation ranges: those are named by the tensors of one ONNX export, so they would tie a
model to one torch version, while the pixels quantise any export. 256 images at 260 px are 52 MB.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from medprobe.core.errors import ModelError
from medprobe.encoders.runtimes import Calibration

FILE = "int8_calibration.safetensors"


def to_saved(calibration):
    """(the model.json entry, the file's bytes) of an encoder's int8 calibration."""
    from safetensors.numpy import save

    images = np.ascontiguousarray(calibration.images(), dtype=np.uint8)
    blob = save({"images": images})
    entry = {"file": FILE, "sha256": hashlib.sha256(blob).hexdigest(), "record": calibration.record, "digests": list(calibration.digests)}
    return entry, blob


def from_saved(folder, entry, config):
    """The saved calibration of the model in `folder`, checked against model.json and its encoder `config` (a dict); None if none.

    The file is hashed now and read again (and hashed again) only when a graph must be quantised.
    """
    if entry is None:
        return None
    where = Path(folder) / FILE
    try:
        record, digests, sha256 = entry["record"], tuple(entry["digests"]), entry["sha256"]
        consistent = (entry["file"] == FILE and record["images"] == len(digests) and all(isinstance(d, str) for d in digests)
                      and record["sample_sha256"] == hashlib.sha256("\n".join(digests).encode()).hexdigest())
    except (KeyError, TypeError) as e:
        raise ModelError(f"{Path(folder) / 'model.json'}: the int8_calibration entry is malformed ({type(e).__name__}: {e}); refit the model") from e
    if not consistent:
        raise ModelError(f"{Path(folder) / 'model.json'}: the int8_calibration entry does not agree with itself (file, digests and "
                         "record differ); refit the model")
    _read(where, sha256)
    shape = _shape(where)
    expected = (len(digests), config["input_size"], config["input_size"], config["channels"])
    if shape != expected:
        held = f"shape {shape}" if shape else "no uint8 'images' array"
        raise ModelError(f"{where}: calibration images of {held}, but {config['name']} needs uint8 {expected}; refit the model")

    def images():
        from safetensors.numpy import load

        return load(_read(where, sha256))["images"]

    return Calibration(json.loads(json.dumps(record)), digests, images, fixed=True)


def _read(where, sha256):
    try:
        blob = where.read_bytes()
    except OSError as e:
        raise ModelError(f"{where}: cannot read the model's int8 calibration ({e.strerror}); refit the model") from e
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise ModelError(f"{where} does not match its checksum in model.json: the model was modified or damaged after saving; refit it")
    return blob


def _shape(where):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(where), "np") as f:
            if list(f.keys()) != ["images"] or f.get_slice("images").get_dtype() != "U8":
                return None
            return tuple(f.get_slice("images").get_shape())
    except SafetensorError:
        return None
