"""The one encoder class every PyTorch family returns: a frozen module that maps pixels to pooled features."""

import numpy as np


class TorchEncoder:
    """Runs `module(pixels) -> (B, D)` without gradients and returns float32 numpy.

    `build` is a zero-argument callable that loads the network. It runs on first use, so a
    run whose embeddings are all cached never imports torch or reads the weights.
    """

    def __init__(self, config, build, device="cpu"):
        self.config = config
        self.device = device
        self._build = build
        self._module = None

    @property
    def module(self):
        if self._module is None:
            import torch

            module = self._build().eval().to(torch.device(self.device))
            for param in module.parameters():
                param.requires_grad_(False)
            self._module = module
        return self._module

    def embed_batch(self, pixels):
        import torch

        module = self.module
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            return module(batch).float().cpu().numpy()
