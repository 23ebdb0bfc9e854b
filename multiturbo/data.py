"""From data set splits to batches: collation through each modality's encoder, loaders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .dataset import Sample
from .encoder import Batch, Encoder
from .errors import DataError


@dataclass
class LabelledBatch:
    """A collated batch: {modality: encoder batch}, labels [B], per-item metadata."""

    inputs: dict[str, Batch]
    labels: Tensor
    meta: list[Mapping[str, Any]]

    def to(self, device: torch.device | str) -> "LabelledBatch":
        inputs = {m: {k: t.to(device, non_blocking=True) for k, t in b.items()} for m, b in self.inputs.items()}
        return LabelledBatch(inputs, self.labels.to(device, non_blocking=True), self.meta)

    def __len__(self) -> int:
        return len(self.labels)


class Collator:
    """Turns a list of samples into a :class:`LabelledBatch` with each encoder's ``collate``."""

    def __init__(self, encoders: Mapping[str, Encoder], num_classes: int):
        self.collates = {m: enc.collate for m, enc in encoders.items()}
        self.num_classes = num_classes

    def __call__(self, samples: Sequence[Sample]) -> LabelledBatch:
        inputs = {}
        for m, collate in self.collates.items():
            raw = []
            for s in samples:
                if m not in s.inputs:
                    raise DataError(f"Item {dict(s.meta)} has no {m!r} input (it has {sorted(s.inputs)}); every item needs every configured modality.")
                raw.append(s.inputs[m])
            inputs[m] = collate(raw)
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        bad = [(dict(s.meta), s.label) for s in samples if not 0 <= s.label < self.num_classes]
        if bad:
            raise DataError(f"Label out of range in item {bad[0][0]}: {bad[0][1]} is not in 0..{self.num_classes - 1}. The data set's labels must index its class list.")
        return LabelledBatch(inputs, labels, [s.meta for s in samples])


def make_loader(
    split: Sequence[Sample],
    collator: Collator,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_singleton: bool = False,
) -> DataLoader:
    """A DataLoader over a split. ``drop_singleton`` drops a last batch of one item
    (InfoNCE needs at least two items); only that batch, and only when it would occur."""
    generator = torch.Generator().manual_seed(seed)
    drop_last = drop_singleton and len(split) % batch_size == 1
    return DataLoader(
        split,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collator,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
