"""The data set contract.

A data set provides class names, the modalities it carries, and its splits (train,
validation, test), optionally per fold. Items are :class:`Sample`: raw inputs per
modality (whatever that modality's encoder collates), an integer label and metadata
(speaker, session...). A split is any sequence of samples; it may load lazily in
``__getitem__`` so that reading files happens in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, overload

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


R = TypeVar("R")


class LazySplit(Sequence[Sample], Generic[R]):
    """A split whose samples are built on access from light records, so files are read in
    DataLoader workers; ``labels`` and ``meta`` are known without loading anything.

    ``load(record) -> Sample``, ``label(record) -> int`` and ``meta(record) -> dict`` should be
    picklable (module-level functions, functools.partial, operator.itemgetter/attrgetter) so that
    DataLoader workers can be spawned.

    ``length(record) -> {modality: length}`` (optional): an item's length per modality without
    loading it (audio in seconds, e.g. from the file's header; a text's word count), for
    length-aware batching (``train.batching: bucket``, ``train.max_batch_seconds``; audio longer
    than its encoder keeps counts at the kept length); :meth:`lengths` calls it once per item, on
    first use.
    """

    def __init__(self, records: Sequence[R], load: Callable[[R], Sample], label: Callable[[R], int], meta: Callable[[R], Mapping[str, Any]],
                 length: Callable[[R], Mapping[str, float]] | None = None):
        self._records = list(records)
        self._load, self._label, self._meta, self._length = load, label, meta, length
        self.labels: list[int] = [label(r) for r in self._records]
        self.meta: list[Mapping[str, Any]] = [meta(r) for r in self._records]
        self._lengths: list[Mapping[str, float]] | None = None

    def lengths(self) -> list[Mapping[str, float]] | None:
        """Each item's {modality: length} (computed once), or None when the data set gives no ``length``."""
        if self._length is None:
            return None
        if self._lengths is None:
            self._lengths = [self._length(r) for r in self._records]
        return self._lengths

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> "LazySplit[R]": ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazySplit(self._records[i], self._load, self._label, self._meta, self._length)
        return self._load(self._records[i])

    def __repr__(self) -> str:
        return f"LazySplit({len(self)} items)"


class DatasetOptions(StrictModel):
    """Options every data set accepts. Subclass it to add a data set's own options."""


class Dataset:
    """Base class of data set plugins.

    Subclasses set ``Options``, and in ``__init__`` set ``self.classes`` (list of class
    names, label i is ``classes[i]``) and ``self.modalities`` (tuple of modality names),
    then implement :meth:`splits`. ``num_folds`` > 1 means :meth:`splits` takes a fold
    index in ``range(num_folds)``.

    ``seed`` is the data seed: the config's ``data.split_seed`` (0 when unset), never the
    training seed, so every training seed of an experiment sees the same split (and, for a
    generated data set, the same data). A random split and any generated data follow it.
    ``group_key``: the ``meta`` key whose values are groups that a split keeps whole (a speaker),
    or None; run.json counts the groups per split. Items of a :class:`LazySplit` that lack a
    modality (input None) list it in ``meta["missing"]``, so that the split's composition is
    known without loading it. ``dropped_items``: one line per item the data set left out because
    it was unusable (a data set's option such as the manifest's ``bad_items: drop``; empty when
    bad items are errors); run.json counts them and the run warns.
    """

    group_key: str | None = None
    dropped_items: list[str] = []  # read-only default; a data set that drops items sets its own list

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
