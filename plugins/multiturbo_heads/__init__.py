"""Classification heads for multiturbo.

- ``concat_linear``: the paper's eq. 5, a linear layer on the concatenation of the
  projected views of every modality, in config order: [B, M*d] -> [B, C].
- ``mean_linear``: a linear layer on the mean of the modality views: [B, d] -> [B, C];
  its size does not grow with the number of modalities.

Both handle items that miss a modality (``handles_missing = True``):

- ``concat_linear`` zeroes a missing modality's slot of the concatenation and appends M
  presence flags (1 = present), so its input is [h_1 p_1; ...; h_M p_M; p_1..p_M], [B, M*d + M].
  The flags' weights give each missing modality a learned per-class offset (what a learned
  "missing" embedding would give a linear layer); for complete items they are constant 1 and act
  as a bias. The flags are always part of the graph, so no parameter sits unused in a batch
  (DistributedDataParallel needs that).
- ``mean_linear`` averages the views of the modalities the item has (every item has at
  least one; the collator rejects items with none).
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
    """logits = W [h_1; ...; h_M; presence flags] + b (paper eq. 5 plus M flags). Views {m: [B, d]} -> [B, C]."""

    Options = LinearHeadOptions
    handles_missing = True
    default = True  # the head of a config that names none

    def __init__(self, options: LinearHeadOptions, *, modalities, dim: int, num_classes: int):
        super().__init__(options, modalities=modalities, dim=dim, num_classes=num_classes)
        self.dropout = nn.Dropout(options.dropout)
        self.linear = nn.Linear(len(self.modalities) * (dim + 1), num_classes)

    def forward(self, views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None) -> Tensor:
        first = views[self.modalities[0]]
        parts, flags = [], []
        for m in self.modalities:
            v = views[m]  # [B, d]
            p = present.get(m) if present else None
            if p is None:
                flags.append(v.new_ones(v.shape[0], 1))
            else:
                flags.append(p[:, None].to(v.dtype))
                v = v * flags[-1]  # a missing item's slot is 0
            parts.append(v)
        x = torch.cat([self.dropout(torch.cat(parts, dim=-1)), *flags], dim=-1)  # [B, M*d + M]
        return self.linear(x.to(first.dtype))  # [B, C]


class MeanLinearHead(Head):
    """logits = W mean_m(h_m) + b, the mean over the modalities an item has. Views {m: [B, d]} -> [B, C]."""

    Options = LinearHeadOptions
    handles_missing = True

    def __init__(self, options: LinearHeadOptions, *, modalities, dim: int, num_classes: int):
        super().__init__(options, modalities=modalities, dim=dim, num_classes=num_classes)
        self.dropout = nn.Dropout(options.dropout)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None) -> Tensor:
        x = torch.stack([views[m] for m in self.modalities])  # [M, B, d]
        if present:
            w = torch.stack([present[m] if m in present else torch.ones_like(next(iter(present.values()))) for m in self.modalities])
            w = w.to(x.dtype)[:, :, None]  # [M, B, 1]
            x = (x * w).sum(0) / w.sum(0).clamp_min(1.0)  # [B, d]
        else:
            x = x.mean(0)  # [B, d]
        return self.linear(self.dropout(x))  # [B, C]


@hookimpl
def register_heads(register) -> None:
    register("concat_linear", ConcatLinearHead)
    register("mean_linear", MeanLinearHead)
