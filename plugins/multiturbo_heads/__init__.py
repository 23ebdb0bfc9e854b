"""Classification heads for multiturbo.

- ``concat_linear``: the paper's eq. 5, a linear layer on the concatenation of the
  projected views of every modality, in config order: [B, M*d] -> [B, C].
- ``mean_linear``: a linear layer on the mean of the modality views: [B, d] -> [B, C];
  its size does not grow with the number of modalities.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field
from torch import Tensor, nn

from multiturbo.head import Head, HeadOptions
from multiturbo.hookspecs import hookimpl


class LinearHeadOptions(HeadOptions):
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the head's input.")


class ConcatLinearHead(Head):
    """logits = W [h_1; ...; h_M] + b (paper eq. 5). Views {m: [B, d]} -> [B, C]."""

    Options = LinearHeadOptions

    def __init__(self, options: LinearHeadOptions, *, modalities, dim: int, num_classes: int):
        super().__init__(options, modalities=modalities, dim=dim, num_classes=num_classes)
        self.dropout = nn.Dropout(options.dropout)
        self.linear = nn.Linear(len(self.modalities) * dim, num_classes)

    def forward(self, views: Mapping[str, Tensor]) -> Tensor:
        x = torch.cat([views[m] for m in self.modalities], dim=-1)  # [B, M*d]
        return self.linear(self.dropout(x))  # [B, C]


class MeanLinearHead(Head):
    """logits = W mean_m(h_m) + b. Views {m: [B, d]} -> [B, C]."""

    Options = LinearHeadOptions

    def __init__(self, options: LinearHeadOptions, *, modalities, dim: int, num_classes: int):
        super().__init__(options, modalities=modalities, dim=dim, num_classes=num_classes)
        self.dropout = nn.Dropout(options.dropout)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, views: Mapping[str, Tensor]) -> Tensor:
        x = torch.stack([views[m] for m in self.modalities]).mean(0)  # [B, d]
        return self.linear(self.dropout(x))  # [B, C]


@hookimpl
def register_heads(register) -> None:
    register("concat_linear", ConcatLinearHead)
    register("mean_linear", MeanLinearHead)
