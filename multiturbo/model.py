"""The Turbo model: encoders keyed by modality, projections into a shared space, a head.

Shapes: B items, K passes, d shared dimension, C classes, M modalities.

    batch {m: encoder batch [B, ...]}
      -> repeat K times along dim 0 -> [K*B, ...]          (one forward, K dropout masks)
      -> encoder_m -> [K*B, dim_m] -> dropout + linear -> [K*B, d] -> views_m [K, B, d]
    head({m: views_m[0]}) -> logits [B, C]                   (paper eq. 5, pass 1)
    loss = lambda * CE + (1 - lambda) * turbo_loss(views)   (paper eq. 6)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import Batch, Encoder
from .head import Head
from .loss import TurboLoss


@dataclass
class StepOutput:
    """What one training forward produces (scalars are 0-d tensors)."""

    loss: Tensor  # lambda * CE + (1 - lambda) * contrastive
    ce: Tensor
    contrastive: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)  # every contrastive pair's loss by name
    logits: Tensor | None = None  # [B, C] from pass 1


def repeat_batch(batch: Batch, passes: int) -> Batch:
    """Repeat every tensor K times along dim 0: row k*B + i is item i in pass k. [B, ...] -> [K*B, ...]."""
    if passes == 1:
        return batch
    return {key: t.repeat(passes, *([1] * (t.dim() - 1))) for key, t in batch.items()}


class TurboModel(nn.Module):
    """Encoders + projections + head + the contrastive objective.

    Args:
        encoders: modality -> encoder, in config order.
        head: maps {modality: [B, d]} to logits [B, C].
        contrastive: the Turbo loss module (owns the temperature), or None for vanilla.
        dim: shared dimension d. dropout: dropout before each projection.
        passes: K. forward_mode: "batched" (one forward on K copies) or "sequential".
        ce_weight: lambda of eq. 6. ce_passes: "first" (paper) or "all" (mean CE over K passes).
    """

    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        head: Head,
        contrastive: TurboLoss | None,
        *,
        dim: int,
        dropout: float,
        passes: int,
        forward_mode: Literal["batched", "sequential"] = "batched",
        ce_weight: float = 0.5,
        ce_passes: Literal["first", "all"] = "first",
    ):
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Dropout(dropout), nn.Linear(enc.output_dim, dim)) for m, enc in encoders.items()}
        )
        self.head = head
        self.contrastive = contrastive
        self.passes = passes
        self.forward_mode = forward_mode
        self.ce_weight = ce_weight
        self.ce_passes = ce_passes

    def views(self, batch: Mapping[str, Batch], passes: int | None = None) -> dict[str, Tensor]:
        """Projected views of every modality: {m: [K, B, d]} (not normalised)."""
        K = self.passes if passes is None else passes
        out = {}
        for m in self.modalities:
            encode = lambda b, m=m: self.projections[m](self.encoders[m](b))  # [n, d]  # noqa: E731
            if self.forward_mode == "batched" or K == 1:
                h = encode(repeat_batch(batch[m], K))  # [K*B, d]
                out[m] = h.view(K, -1, h.shape[-1])
            else:
                out[m] = torch.stack([encode(batch[m]) for _ in range(K)])  # [K, B, d]
        return out

    def logits(self, views: Mapping[str, Tensor], pass_index: int = 0) -> Tensor:
        """Logits [B, C] from the views {m: [K, B, d]} of one pass."""
        return self.head({m: v[pass_index] for m, v in views.items()})

    def forward(self, batch: Mapping[str, Batch]) -> Tensor:
        """Inference: logits [B, C] from one pass (use eval() to switch dropout off)."""
        return self.logits(self.views(batch, passes=1))

    def step(self, batch: Mapping[str, Batch], labels: Tensor) -> StepOutput:
        """One training forward: eq. 6 on a batch with labels [B]."""
        views = self.views(batch)
        if self.ce_passes == "all":
            all_logits = [self.logits(views, k) for k in range(self.passes)]
            ce = torch.stack([F.cross_entropy(lg, labels) for lg in all_logits]).mean()
            logits = all_logits[0]
        else:
            logits = self.logits(views, 0)
            ce = F.cross_entropy(logits, labels)
        if self.contrastive is None:
            return StepOutput(loss=ce, ce=ce, contrastive=torch.zeros_like(ce), logits=logits)
        out = self.contrastive(views)
        loss = self.ce_weight * ce + (1.0 - self.ce_weight) * out.total
        return StepOutput(loss=loss, ce=ce, contrastive=out.total, terms=out.terms, logits=logits)
