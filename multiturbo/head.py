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
    # True if forward accepts ``present``: heads that can classify items that miss a modality.
    handles_missing: ClassVar[bool] = False
    # True for the head a config gets when it names none (``model.head`` left out); one head sets it.
    default: ClassVar[bool] = False

    def __init__(self, options: HeadOptions, *, modalities: Sequence[str], dim: int, num_classes: int):
        super().__init__()
        self.options = options
        self.modalities = list(modalities)
        self.dim = dim
        self.num_classes = num_classes

    def forward(self, views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits [B, num_classes] from projected views {modality: [B, dim]}.

        present (only passed to heads with ``handles_missing = True``, only when some item misses a
        modality): {modality: bool [B]} for the incomplete modalities (modalities not in it are
        complete); the views of missing items are zeros and carry no information.
        """
        raise NotImplementedError
