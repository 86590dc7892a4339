"""Layer 1, data: datasets (MedMNIST, npz, folders, CSV manifests), image sources, decoding (incl. DICOM) and the pre-scan."""
