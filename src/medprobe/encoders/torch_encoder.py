"""The one encoder class every PyTorch family returns: a frozen module that maps pixels to pooled features."""

import numpy as np


class TorchEncoder:
    """Runs `module(pixels) -> (B, D)` without gradients and returns float32 numpy."""

    def __init__(self, config, module, device="cpu"):
        import torch

        self.config = config
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        for param in self.module.parameters():
            param.requires_grad_(False)

    def embed_batch(self, pixels):
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            return self.module(batch).float().cpu().numpy()
