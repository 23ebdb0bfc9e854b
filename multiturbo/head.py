"""The classification head contract: logits from the projected views of one pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import Tensor, nn

from .options import StrictModel


class HeadOptions(StrictModel):
    """Options every head accepts. Subclass it to add a head's own options."""


class Head(nn.Module):
    """Base class of head plugins.

    Built with the modality names (in config order), the shared dimension ``dim`` of
    the projected views and the number of classes; maps ``{modality: [B, dim]}`` to
    logits ``[B, num_classes]``.
    """

    Options: ClassVar[type[HeadOptions]] = HeadOptions

    def __init__(self, options: HeadOptions, *, modalities: Sequence[str], dim: int, num_classes: int):
        super().__init__()
        self.options = options
        self.modalities = list(modalities)
        self.dim = dim
        self.num_classes = num_classes

    def forward(self, views: Mapping[str, Tensor]) -> Tensor:
        """Logits [B, num_classes] from projected views {modality: [B, dim]}."""
        raise NotImplementedError
