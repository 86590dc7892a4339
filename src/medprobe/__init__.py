"""medprobe: training-free medical image classification with frozen foundation-model embeddings."""

__version__ = "0.1.0"

from medprobe.datasets import load_dataset  # noqa: E402
from medprobe.embed import embed  # noqa: E402
from medprobe.encoders import create_encoder  # noqa: E402
from medprobe.metrics import evaluate  # noqa: E402
from medprobe.probes import fit_probe  # noqa: E402

__all__ = ["load_dataset", "create_encoder", "embed", "fit_probe", "evaluate", "__version__"]
