"""Layers shared by the basic encoders."""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor, nn

from multiturbo.errors import DataError


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a [B, C, H, W] map, independently at every position.

    Unlike GroupNorm it does not pool statistics over H x W, so padded time frames of a
    spectrogram cannot leak into the valid ones. Computed along the channel axis as it lies
    (mean and biased variance over C, then ``self.norm``'s eps, weight and bias): nn.LayerNorm's
    values up to float rounding, without permuting the map to channels-last and back, and
    about 4x faster than nn.LayerNorm's kernel on rows of a few channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)  # the parameters (and their names in saved weights)

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(1, keepdim=True)
        scale = torch.rsqrt(centred.square().mean(1, keepdim=True) + self.norm.eps)
        return centred * scale * self.norm.weight[:, None, None] + self.norm.bias[:, None, None]


def in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()``, without importing torch.onnx where nothing has (no export
    can be running then): the import costs about 0.1 s of CPU in every process that runs a forward,
    e.g. each DataLoader worker of an inference pass on the CPU."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def as_float_array(value: object, *, what: str, encoder: str) -> Tensor:
    """Convert a numpy array or tensor to a float32 CPU tensor; anything else is a DataError."""
    if isinstance(value, Tensor):
        t = value.detach().cpu()
    else:
        if not isinstance(value, np.ndarray):
            raise DataError(
                f"The {encoder} encoder got a {type(value).__name__} where it expects {what} "
                f"(a numpy array or a torch tensor). Make the data set's loader return arrays for this modality, "
                f"or pick an encoder that accepts {type(value).__name__} inputs."
            )
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise DataError(
                f"The {encoder} encoder got an array of dtype {value.dtype} where it expects {what} with numbers. "
                f"Convert the data to a float or integer array in the data set's loader."
            )
        t = torch.from_numpy(np.ascontiguousarray(value))
    if t.is_complex():
        raise DataError(f"The {encoder} encoder got a complex array where it expects {what}. Pass real values.")
    return t.to(torch.float32)
