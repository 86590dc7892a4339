"""Layer 2, probes: scikit-learn classifiers on embeddings, zero-shot CLIP, and saved probes."""
