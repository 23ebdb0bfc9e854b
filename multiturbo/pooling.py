"""Pooling over valid positions, for encoder plugins (the contract asks them to respect padding)."""

from __future__ import annotations

from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is true.

    x: [B, ..., L, ...]; mask: bool or 0/1, broadcastable to x (e.g. [B, L, 1] for x [B, L, D]).
    Masked-out positions do not contribute, so padding never changes an item's result; a row
    with no valid position gives zeros, not NaN.
    """
    mask = mask.to(x.dtype)
    total = (x * mask).sum(dim)
    count = mask.expand_as(x).sum(dim).clamp_min(1.0)
    return total / count
