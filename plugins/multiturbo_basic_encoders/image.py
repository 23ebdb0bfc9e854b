"""``small_cnn``: a small image CNN, trained from scratch.

Raw input: a numpy array or tensor [H, W] (grayscale) or [H, W, C] (channels last),
uint8 in 0..255 or float in 0..1.

    collate:  list of B images -> {"image": [B, channels, image_size, image_size] float}
              uint8 / 255; grayscale repeated to ``channels``; bilinear resize when the
              size differs; then (x - mean) / std
    forward:  4 conv blocks (3x3; stride 1, 2, 2, 2), GroupNorm, GELU
              [B, 4*width, image_size/8, image_size/8]
              -> global average pooling [B, 4*width] -> dropout, linear -> [B, output_dim]

GroupNorm normalises each image on its own, so an item's vector does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from multiturbo.encoder import Encoder, EncoderOptions
from multiturbo.errors import DataError

from ._layers import as_float_array


class SmallCNNOptions(EncoderOptions):
    image_size: int = Field(32, ge=8, description="Images are resized to image_size x image_size.")
    channels: int = Field(3, ge=1, description="Input channels; grayscale images are repeated to this many.")
    width: int = Field(32, ge=1, description="Width of the first conv block (the next ones use 2x, 4x, 4x).")
    output_dim: int = Field(128, ge=1, description="Size of the pooled output vector.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout in the conv blocks and before the output layer.")
    mean: float = Field(0.5, description="Subtracted from pixel values in 0..1.")
    std: float = Field(0.25, gt=0.0, description="Pixel values are divided by this after subtracting the mean.")


def _block(c_in: int, c_out: int, stride: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.GELU(),
        nn.Dropout(dropout),
    )


class SmallCNN(Encoder):
    """Small CNN with GroupNorm and dropout, global average pooling."""

    Options = SmallCNNOptions

    def __init__(self, options: SmallCNNOptions):
        super().__init__(options)
        o = options
        self.output_dim = o.output_dim
        w = o.width
        self.features = nn.Sequential(
            _block(o.channels, w, 1, o.dropout),
            _block(w, 2 * w, 2, o.dropout),
            _block(2 * w, 4 * w, 2, o.dropout),
            _block(4 * w, 4 * w, 2, o.dropout),
        )
        self.dropout = nn.Dropout(o.dropout)
        self.out = nn.Linear(4 * w, o.output_dim)

    def _to_chw(self, item: Any, i: int) -> Tensor:
        """One raw image -> [channels, image_size, image_size] float in 0..1 units."""
        o = self.options
        integer = (isinstance(item, np.ndarray) and item.dtype == np.uint8) or (
            isinstance(item, Tensor) and item.dtype == torch.uint8
        )
        x = as_float_array(item, what="an image [H, W] or [H, W, C]", encoder="small_cnn")
        if integer:
            x = x / 255.0
        if x.dim() == 2:
            x = x[:, :, None]
        if x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0:
            raise DataError(
                f"The small_cnn encoder expects images of shape [H, W] or [H, W, C], but item {i} of the batch has "
                f"shape {tuple(x.shape)}. Return channels-last arrays from the data set (transpose [C, H, W] "
                f"images with .transpose(1, 2, 0))."
            )
        c = x.shape[2]
        if c not in (1, o.channels):
            raise DataError(
                f"The small_cnn encoder is set up for {o.channels} channel(s), but item {i} of the batch has "
                f"shape {tuple(x.shape)} ({c} channels, channels last). Set the encoder's `channels` option to "
                f"{c}, or convert the images in the data set's loader."
            )
        if not torch.isfinite(x).all():
            raise DataError(
                f"The small_cnn encoder got an image with NaN or infinite values (item {i} of the batch). "
                f"Check the image file or the loader that produced it."
            )
        x = x.permute(2, 0, 1).expand(o.channels, -1, -1)  # [C, H, W]
        if x.shape[1:] != (o.image_size, o.image_size):
            x = F.interpolate(x[None], size=(o.image_size, o.image_size), mode="bilinear", align_corners=False)[0]
        return x

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B images -> {"image": [B, channels, image_size, image_size]} normalised."""
        if len(raw) == 0:
            raise DataError("The small_cnn encoder got an empty batch. Pass at least one image.")
        images = torch.stack([self._to_chw(item, i) for i, item in enumerate(raw)])
        return {"image": (images - self.options.mean) / self.options.std}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """{"image": [B, C, S, S]} -> [B, output_dim]."""
        x = self.features(batch["image"])  # [B, 4*width, S/8, S/8]
        return self.out(self.dropout(x.mean(dim=(2, 3))))
