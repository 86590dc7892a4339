"""Layer 1, encoders: frozen pretrained models, each an entry in the registry with its own preprocessing."""

from medprobe.encoders.base import Encoder, EncoderConfig, TextEncoder
from medprobe.encoders.registry import create_encoder, encoder_status, get_config, list_encoders, register_encoder, register_family

__all__ = [
    "Encoder",
    "EncoderConfig",
    "TextEncoder",
    "create_encoder",
    "encoder_status",
    "get_config",
    "list_encoders",
    "register_encoder",
    "register_family",
]
