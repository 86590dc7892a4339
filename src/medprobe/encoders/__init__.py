from medprobe.encoders.registry import (
    EncoderConfig,
    create_encoder,
    encoder_status,
    get_config,
    list_encoders,
    register_encoder,
    register_family,
)

__all__ = [
    "EncoderConfig",
    "create_encoder",
    "encoder_status",
    "get_config",
    "list_encoders",
    "register_encoder",
    "register_family",
]
