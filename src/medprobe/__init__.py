"""medprobe: training-free medical image classification with frozen foundation-model embeddings.

The package is layered; each sub-package imports only those below it:

    core        errors, names, safe file writes and digests, cost clocks, default folders
    data        datasets, image sources, decoding (incl. DICOM), the pre-scan
    encoders    frozen pretrained models and their preprocessing
    evaluation  MedMNIST metrics with bootstrap CIs
    embedding   embed (cached by image content), fusion, Ray
    probes      scikit-learn probes, zero-shot CLIP, saved probes
    reporting   typed results, run folders, bench tables, the HTML report
    workflows   run, predict, curve, bench, baseline
    cli         the `medprobe` command

The names below are the quick-start API (and `ImageEmbedder`, a scikit-learn transformer); they are
imported on first use, so `import medprobe` stays cheap.
"""

__version__ = "0.1.0"

_API = {
    "load_dataset": "medprobe.data.datasets",
    "create_encoder": "medprobe.encoders.registry",
    "embed": "medprobe.embedding.embed",
    "fit_probe": "medprobe.probes.fit",
    "evaluate": "medprobe.evaluation.metrics",
    "ImageEmbedder": "medprobe.embedding.transformer",
}

__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'medprobe' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
