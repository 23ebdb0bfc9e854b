"""Small built-in encoders that need no pretrained weights.

- ``logmel_cnn``: waveform -> log-mel spectrogram -> small 2-D CNN -> masked mean over frames.
- ``hashed_transformer``: text -> hashed word tokens -> small Transformer -> masked mean.
- ``small_cnn``: image -> small CNN -> global average pooling.

All of them normalise per item (LayerNorm / GroupNorm, never BatchNorm), so an item's
vector does not depend on the other items of its batch, nor on padding: the engine
repeats a batch K times for Turbo's dropout views, and batch statistics would couple them.
"""

from __future__ import annotations

from multiturbo.hookspecs import Register, hookimpl

from .audio import LogMelCNN
from .image import SmallCNN
from .text import HashedTransformer

__all__ = ["LogMelCNN", "HashedTransformer", "SmallCNN", "register_encoders"]


@hookimpl
def register_encoders(register: Register) -> None:
    register("logmel_cnn", LogMelCNN)
    register("hashed_transformer", HashedTransformer)
    register("small_cnn", SmallCNN)
