"""The data set contract.

A data set provides class names, the modalities it carries, and its splits (train,
validation, test), optionally per fold. Items are :class:`Sample`: raw inputs per
modality (whatever that modality's encoder collates), an integer label and metadata
(speaker, session...). A split is any sequence of samples; it may load lazily in
``__getitem__`` so that reading files happens in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .options import StrictModel


@dataclass(frozen=True)
class Sample:
    """One item: raw inputs keyed by modality, a label index into ``classes``, metadata."""

    inputs: Mapping[str, Any]
    label: int
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Splits:
    """The three splits of one fold."""

    train: Sequence[Sample]
    val: Sequence[Sample]
    test: Sequence[Sample]


class DatasetOptions(StrictModel):
    """Options every data set accepts. Subclass it to add a data set's own options."""


class Dataset:
    """Base class of data set plugins.

    Subclasses set ``Options``, and in ``__init__`` set ``self.classes`` (list of class
    names, label i is ``classes[i]``) and ``self.modalities`` (tuple of modality names),
    then implement :meth:`splits`. ``num_folds`` > 1 means :meth:`splits` takes a fold
    index in ``range(num_folds)``.
    """

    Options: ClassVar[type[DatasetOptions]] = DatasetOptions
    classes: list[str]
    modalities: tuple[str, ...]
    num_folds: int = 1

    def __init__(self, options: DatasetOptions, *, seed: int = 0):
        self.options = options
        self.seed = seed

    def splits(self, fold: int | None = None) -> Splits:
        """Return the train / validation / test splits (of ``fold`` when the data set has folds)."""
        raise NotImplementedError
