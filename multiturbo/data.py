"""From data set splits to batches: collation through each modality's encoder, loaders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .dataset import LazySplit, Sample
from .encoder import Batch, Encoder
from .errors import DataError
from .feature_cache import FEATURES_KEY, FROZEN_PART_KEY, FrozenFeature, FrozenPart
from .model import PRESENT_KEY
from .warning_lines import worker_display
from .worker_start import preload_in_fork_server


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
    """Turns a list of samples into a :class:`LabelledBatch` with each encoder's ``collate``.

    Missing modalities: an input of ``None`` means the item lacks that modality (data sets emit
    it only when their options allow missing data). The encoder then collates the present items
    only, and the modality's batch gets ``PRESENT_KEY``: a bool mask [B] over the whole batch
    (see multiturbo.model). A modality every item has carries no mask. An item with none of the
    configured modalities is a DataError; so is a modality key absent from ``Sample.inputs``.
    """

    def __init__(self, encoders: Mapping[str, Encoder], num_classes: int):
        self.encoders = dict(encoders)
        self.num_classes = num_classes

    def __call__(self, samples: Sequence[Sample]) -> LabelledBatch:
        inputs = {}
        for s in samples:
            if all(s.inputs.get(m) is None for m in self.encoders):
                raise DataError(f"Item {dict(s.meta)} has none of the configured modalities {list(self.encoders)} (all missing); drop it from the data set.")
        for m, encoder in self.encoders.items():
            raw, present = [], []
            for s in samples:
                if m not in s.inputs:
                    raise DataError(f"Item {dict(s.meta)} has no {m!r} input (it has {sorted(s.inputs)}); every item needs every configured modality (a data set marks a missing one with None).")
                present.append(s.inputs[m] is not None)
                if present[-1]:
                    raw.append(s.inputs[m])
            if raw and isinstance(raw[0], FrozenFeature):  # train.frozen_features: cache
                batch = {FEATURES_KEY: torch.stack([r.vector for r in raw])}  # [n, dim]
            elif raw and isinstance(raw[0], FrozenPart):  # train.frozen_features: cache, a partly frozen encoder
                batch = {**encoder.collate_frozen([r.tensors for r in raw]), FROZEN_PART_KEY: torch.ones(len(raw), dtype=torch.bool)}
            else:
                batch = encoder.collate(raw) if raw else {}
            if len(raw) < len(samples):
                batch = {**batch, PRESENT_KEY: torch.tensor(present, dtype=torch.bool)}
            inputs[m] = batch
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        bad = [(dict(s.meta), s.label) for s in samples if not 0 <= s.label < self.num_classes]
        if bad:
            raise DataError(f"Label out of range in item {bad[0][0]}: {bad[0][1]} is not in 0..{self.num_classes - 1}. The data set's labels must index its class list.")
        return LabelledBatch(inputs, labels, [s.meta for s in samples])


# -- item lengths, for length-aware batching ----------------------------------------------------------
def raw_length(raw: Any) -> float | None:
    """A raw input's length: audio seconds (a Waveform-like object), a 1-D array's samples, a text's
    words; None for anything else (images, precomputed features), which does not vary in padding."""
    if isinstance(raw, str):
        return float(len(raw.split()))
    if _waveform_like(raw):
        return len(raw.samples) / raw.sample_rate
    if isinstance(raw, (np.ndarray, Tensor)) and raw.ndim == 1:
        return float(raw.shape[0])
    return None


def item_lengths(split: Sequence[Sample], max_seconds: Mapping[str, float | None] | None = None) -> list[dict[str, float]] | None:
    """Each item's {modality: length}, cheaply: a :class:`LazySplit`'s own ``lengths()`` (the data set
    reads them without loading the items, e.g. audio file headers), or the inputs of a split held in
    memory (a list of samples). None when they are not known without loading every item. Wrappers
    (the audio and feature caches) are looked through by their ``split`` attribute.

    ``max_seconds``: per audio modality, the seconds its encoder keeps of an item
    (:meth:`multiturbo.encoder.Encoder.max_input_seconds`); a longer item counts at that length. It
    applies to lengths in seconds: a data set's ``length`` (audio in seconds by contract) and
    Waveforms held in memory, not bare arrays (their length is in samples at a rate not known here)."""
    caps = {m: c for m, c in (max_seconds or {}).items() if c is not None}
    inner = split
    while not isinstance(inner, (list, tuple, LazySplit)) and hasattr(inner, "split"):
        inner = inner.split
    if isinstance(inner, LazySplit):
        lengths = inner.lengths()
        return None if lengths is None else [{m: min(v, caps[m]) if m in caps else v for m, v in d.items()} for d in lengths]
    if isinstance(inner, (list, tuple)):
        out = []
        for s in inner:
            lengths = {m: _capped(raw_length(v), v, caps.get(m)) for m, v in s.inputs.items() if v is not None}
            out.append({m: v for m, v in lengths.items() if v is not None})
        return out
    return None


def _waveform_like(raw: Any) -> bool:
    """Whether ``raw`` is audio with its rate (a Waveform-like object), so :func:`raw_length` gives seconds."""
    return hasattr(raw, "samples") and hasattr(raw, "sample_rate")


def _capped(length: float | None, raw: Any, cap: float | None) -> float | None:
    """``length`` of ``raw`` at most ``cap`` seconds when it is in seconds (a Waveform-like input)."""
    if length is None or cap is None or not _waveform_like(raw):
        return length
    return min(length, cap)


def sort_keys(lengths: Sequence[Mapping[str, float]]) -> list[tuple[float, ...]]:
    """One sort key per item from its per-modality lengths: the lengths in modality order (the order
    in which the items first name them, i.e. the data set's: audio first in its audio + text sets), so
    items sort by the first modality's length and ties by the next. Sorting by one modality keeps its
    padding lowest; a blend of several would sort none of them well (measured: 11% audio padding with
    seconds and words averaged, 6% sorted by seconds, at 1,024 items in batches of 16)."""
    order: list[str] = []
    for d in lengths:
        order += [m for m in d if m not in order]
    return [tuple(d.get(m, 0.0) for m in order) for d in lengths]


def padding_fraction(order: Sequence[int], lengths: Sequence[Mapping[str, float]], batch_size: int) -> dict[str, float]:
    """Per modality, the share of padding in batches of ``batch_size`` consecutive items of ``order``
    (each padded to its longest item): 1 - sum of lengths / (batch size x longest), over all batches."""
    return batches_padding([order[s:s + batch_size] for s in range(0, len(order), batch_size)], lengths)


def batches_padding(batches: Sequence[Sequence[int]], lengths: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per modality, the share of padding in ``batches`` (lists of item indices, each batch padded to its
    longest item): 1 - sum of lengths / sum over batches of (items x longest)."""
    out = {}
    modalities = sorted({m for d in lengths for m in d})
    for m in modalities:
        real = padded = 0.0
        for batch in batches:
            values = [lengths[i].get(m) for i in batch]
            values = [v for v in values if v is not None]
            if values:
                real += sum(values)
                padded += len(values) * max(values)
        out[m] = 1.0 - real / padded if padded > 0 else 0.0
    return out


def repeated_pairs(first: Sequence[Sequence[int]], second: Sequence[Sequence[int]]) -> float:
    """The share of the pairs of items batched together in ``first`` (one epoch's batches, lists of item
    indices) that are batched together again in ``second``: 1.0 when bucketing gives the same batches
    every epoch (the same negatives for every InfoNCE term), near 0 for random batches; 0.0 when
    ``first`` has no batch of two or more items."""
    def pairs(batches: Sequence[Sequence[int]]) -> set[tuple[int, int]]:
        return {(a, b) for batch in batches for a in batch for b in batch if a < b}
    together = pairs(first)
    return len(together & pairs(second)) / len(together) if together else 0.0


POOL_BATCHES = 100  # bucketing sorts pools of this many batches: randomness across pools, similar lengths within a batch


def jittered_keys(keys: Sequence[tuple[float, ...]], jitter: float, g: torch.Generator) -> list[tuple[float, ...]]:
    """Sort keys with each item's first length times exp(jitter x z), z ~ N(0, 1) drawn from ``g`` (one
    per item, anew each epoch): items within a few percent of each other in length trade places, so a
    length-sorted pool is cut into different batches from epoch to epoch. ``jitter`` 0: ``keys`` as
    they are (no draw). Without it, a pool that holds the whole data set (up to POOL_BATCHES batches)
    is cut into the same batches every epoch: measured on 1,021 real training utterances in batches
    of 32 (durations cut at 15 s), 99% of the pairs of items batched together were batched together
    again the next epoch; with jitter 0.03, 34%, for 7.7% audio padding instead of 3.8% (random
    batches: 2.8% of the pairs again, 65% padding)."""
    if not jitter:
        return list(keys)
    scale = torch.randn(len(keys), generator=g, dtype=torch.float64).mul_(jitter).exp_().tolist()
    return [(k[0] * f, *k[1:]) if k else k for k, f in zip(keys, scale)]


def bucket_order(order: Sequence[int], keys: Sequence, batch: int, g: torch.Generator, jitter: float = 0.0) -> list[int]:
    """``order`` rearranged so that each run of ``batch`` consecutive items has similar lengths:
    pools of POOL_BATCHES x batch items (in ``order``, which is random) are sorted by ``keys`` (with
    :func:`jittered_keys`' ``jitter``) and cut into batches; the full batches are shuffled together
    (``g``), the one incomplete batch goes last (so dropping the last batch drops only it).
    Deterministic given ``order`` and ``g``."""
    keys = jittered_keys(keys, jitter, g)
    pool = batch * POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: keys[i])  # stable: ties keep the random order
        batches += [chunk[j:j + batch] for j in range(0, len(chunk), batch)]
    full = [b for b in batches if len(b) == batch]
    rest = [i for b in batches if len(b) < batch for i in b]
    return [i for k in torch.randperm(len(full), generator=g).tolist() for i in full[k]] + rest


def epoch_draw(n: int, seed: int, epoch: int, shuffle: bool, weights: Tensor | None) -> tuple[list[int], torch.Generator]:
    """Epoch ``epoch``'s item order from a generator seeded by ``seed`` and the epoch alone: n weighted
    draws with replacement (``weights``), a permutation (``shuffle``) or 0..n-1; and the generator, for
    the draws that follow (the batches' order)."""
    g = torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + epoch) % 2**63)
    if weights is not None:
        order = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
    elif not shuffle:
        order = list(range(n))
    else:
        order = torch.randperm(n, generator=g).tolist()
    return order, g


class EpochSampler(torch.utils.data.Sampler[int]):
    """Item order of one epoch, reproducible from (seed, epoch) alone, and resumable mid-epoch.

    With ``shuffle`` the order of epoch e is a permutation drawn from a generator seeded by
    ``seed`` and e (so a resumed run sees the same order without replaying earlier epochs);
    without, it is 0..n-1. ``set_epoch(e, start)`` picks the epoch and skips its first
    ``start`` items (a whole number of batches when resuming); iterating without calling it
    again moves on to the next epoch.

    ``weights`` (one per item; ``train.sampler: balanced``): instead of a permutation, the epoch
    is n draws with replacement with probability proportional to the weights (torch's
    WeightedRandomSampler), from the same per-epoch generator, so it is as reproducible and
    resumable as the shuffled order.

    ``lengths`` (one {modality: length} per item) with ``batch_size`` (``train.batching: bucket``):
    the epoch's random order is rearranged by :func:`bucket_order` so that each batch holds items of
    similar length, with the batches in random order. In a multi-process run the buckets are built
    over global batches of ``world x batch_size`` items, so every rank's batch comes from the same
    bucket and all ranks keep equal batch sizes. ``jitter``: see :func:`jittered_keys`.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, shard: tuple[int, int] = (0, 1), equal_shards: bool = False,
                 weights: Sequence[float] | None = None, lengths: Sequence[Mapping[str, float]] | None = None, batch_size: int = 1,
                 jitter: float = 0.0):
        if weights is not None and len(weights) != n:
            raise ValueError(f"EpochSampler: {len(weights)} weights for {n} items")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"EpochSampler: {len(lengths)} lengths for {n} items")
        self.lengths = None if lengths is None else list(lengths)
        self.keys = None if lengths is None else sort_keys(lengths)
        self.batch_size, self.jitter = batch_size, jitter
        self.n = n
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world = shard
        self.equal_shards = equal_shards
        self.epoch = 1
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        """This rank's items of epoch ``epoch``: the epoch's order, then every world-th item from
        position rank (a multi-process run; with ``equal_shards`` the tail that would give ranks
        unequal counts is left out, as DistributedSampler's drop_last)."""
        order, g = epoch_draw(self.n, self.seed, epoch, self.shuffle, self.weights)
        if self.keys is not None and (self.shuffle or self.weights is not None):
            order = bucket_order(order, self.keys, self.batch_size * self.world, g, self.jitter)
        if self.world == 1:
            return order
        end = (self.n // self.world) * self.world if self.equal_shards else self.n
        return order[self.rank : end : self.world]

    def padding(self, epoch: int) -> dict[str, float] | None:
        """Per modality, the padding share of this rank's batches in epoch ``epoch`` (None without lengths)."""
        if self.lengths is None:
            return None
        return padding_fraction(self.order(epoch), self.lengths, self.batch_size)

    def __iter__(self):
        order = self.order(self.epoch)[self.start:]
        self.epoch, self.start = self.epoch + 1, 0
        return iter(order)

    def __len__(self) -> int:
        """Items left in this epoch for this rank (the shard's size, without drawing the order)."""
        if self.world == 1:
            size = self.n
        elif self.equal_shards:
            size = self.n // self.world
        else:
            size = len(range(self.rank, self.n, self.world))
        return max(size - self.start, 0)


def gathered_positions(n: int, world: int) -> list[int]:
    """The split positions of an unshuffled loader's ``n`` items in the order a pass gathered over
    ``world`` ranks returns them (:func:`multiturbo.distributed.gather_rows`): each rank's shard of
    :class:`EpochSampler` in rank order (rank 0's 0, world, 2 world, ..., then rank 1's, ...);
    0..n-1 for one process."""
    return [i for rank in range(world) for i in EpochSampler(n, shuffle=False, shard=(rank, world)).order(1)]


def cut_to_budget(items: Sequence[int], cost: Sequence[float], budget: float, min_size: int) -> list[list[int]]:
    """``items`` (sorted by ``cost``, ascending) cut into runs of consecutive items whose padded cost, the
    number of items x the largest cost among them, stays within ``budget``; a batch takes at least
    ``min_size`` items even beyond the budget (every InfoNCE term keeps negatives). The last batch may
    hold fewer than ``min_size`` items: the caller decides what to do with it."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in items:
        grown = max(longest, cost[i])
        if len(current) >= min_size and (len(current) + 1) * grown > budget:
            batches.append(current)
            current, grown = [], cost[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


class BudgetReport(NamedTuple):
    """How one epoch's batches keep to a budget of padded length (:meth:`BudgetBatchSampler.over_budget`).

    ``over``: batches of ``min_size`` items (or a few more) beyond the budget; ``alone``: batches of one
    item longer than the budget by itself; ``total``: all batches; ``longest``: the longest item's cost."""

    over: int
    alone: int
    total: int
    longest: float


class BudgetBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of a dynamic size under a budget of padded length (``train.max_batch_seconds``).

    Each epoch's random order (from ``seed`` and the epoch, as :class:`EpochSampler`; ``weights``: draws
    with replacement) is cut into pools of about POOL_BATCHES batches; each pool is sorted by length
    (:func:`sort_keys`: the first modality, then the next; with :func:`jittered_keys`' ``jitter``) and
    cut by :func:`cut_to_budget` on the true lengths: a batch
    grows while its item count x its longest item's length in the FIRST modality (audio seconds in
    the audio + text data sets; the padded length, not the sum of the lengths) stays within
    ``max_cost``, and holds at least ``min_size`` items whatever their length. A pool's last batch
    with fewer than ``min_size`` items joins the epoch's other such leftovers, which are cut the same
    way at the end (a final short remainder joins the batch before it, or the batch of the longest items).
    An item longer than the budget by itself goes alone in its batch (the budget is a memory limit;
    its contrastive terms then compare it with nothing in this process, its classification loss
    still counts); these batches come last, in length order. Batches over the budget (alone, or
    ``min_size`` items longer than the budget / ``min_size``) are counted by :meth:`over_budget`.

    ``shard = (rank, world)``: consecutive groups of ``world`` batches (neighbours in length) form one
    step, rank r taking the r-th; the steps are shuffled, and the ``len(batches) % world`` batches that
    make no whole step are drawn at random and left out of the epoch. The ranks' batches then differ in size: the gathered loss pads
    and masks them (multiturbo.distributed). ``set_epoch(e, start)`` skips the first ``start``
    batches (a resume); everything is deterministic from (seed, epoch).
    """

    def __init__(self, lengths: Sequence[Mapping[str, float]], max_cost: float, min_size: int, *, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), weights: Sequence[float] | None = None, jitter: float = 0.0):
        if min_size < 1:
            raise ValueError(f"BudgetBatchSampler: min_size {min_size} < 1")
        if weights is not None and len(weights) != len(lengths):
            raise ValueError(f"BudgetBatchSampler: {len(weights)} weights for {len(lengths)} items")
        self.lengths = list(lengths)
        self.keys = sort_keys(self.lengths)
        self.cost = [k[0] if k else 0.0 for k in self.keys]  # the first modality's length: what the budget counts
        self.n, self.max_cost, self.min_size, self.seed, self.jitter = len(self.lengths), float(max_cost), min_size, seed, jitter
        self.rank, self.world = shard
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        positive = [c for c in self.cost if c > 0]
        typical = max(float(min_size), self.max_cost / (sum(positive) / len(positive))) if positive else float(min_size)
        self.pool = max(1, int(POOL_BATCHES * typical))
        self.epoch, self.start = 1, 0
        self._cache: tuple[int, list[list[list[int]]]] | None = None

    def steps(self, epoch: int) -> list[list[list[int]]]:
        """Epoch ``epoch``'s steps in training order: each a list of ``world`` batches (rank r's is the r-th)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order, g = epoch_draw(self.n, self.seed, epoch, True, self.weights)
        batches: list[list[int]] = []
        leftover: list[int] = []
        by_key = jittered_keys(self.keys, self.jitter, g).__getitem__
        alone = sorted((i for i in order if self.cost[i] > self.max_cost), key=by_key)  # each longer than the budget by itself
        order = [i for i in order if self.cost[i] <= self.max_cost]
        for start in range(0, len(order), self.pool):
            cut = cut_to_budget(sorted(order[start:start + self.pool], key=by_key), self.cost, self.max_cost, self.min_size)
            if len(cut[-1]) < self.min_size:
                leftover += cut.pop()
            batches += cut
        if leftover:
            cut = cut_to_budget(sorted(leftover, key=by_key), self.cost, self.max_cost, self.min_size)
            if len(cut[-1]) < self.min_size and len(cut) > 1:
                cut[-2] += cut.pop()
            elif len(cut[-1]) < self.min_size and batches:  # into the batch of the longest items: least padding added
                max(batches, key=lambda b: max(self.cost[i] for i in b)).extend(cut.pop())
            batches += cut
        batches += [[i] for i in alone]  # last, in length order: under torchrun one step's ranks share the longest items
        W = self.world
        if len(batches) % W:  # fewer than W left over: random batches sit out this epoch (not always the longest items)
            out = set(torch.randperm(len(batches), generator=g)[:len(batches) % W].tolist())
            batches = [b for k, b in enumerate(batches) if k not in out]
        steps = [batches[k:k + W] for k in range(0, len(batches), W)]
        steps = [steps[k] for k in torch.randperm(len(steps), generator=g).tolist()]
        self._cache = (epoch, steps)
        return steps

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of epoch ``epoch``, in order."""
        return [step[self.rank] for step in self.steps(epoch)]

    def over_budget(self, epoch: int) -> BudgetReport:
        """How epoch ``epoch``'s batches (over every rank) keep to the budget: see :class:`BudgetReport`."""
        every = [b for step in self.steps(epoch) for b in step]
        alone = sum(1 for b in every if len(b) == 1 and self.cost[b[0]] > self.max_cost)
        over = sum(1 for b in every if len(b) * max(self.cost[i] for i in b) > self.max_cost) - alone
        return BudgetReport(over, alone, len(every), max(self.cost, default=0.0))

    def padding(self, epoch: int) -> dict[str, float]:
        """Per modality, the padding share of this rank's batches in epoch ``epoch``."""
        return batches_padding(self.batches(epoch), self.lengths)

    def mean_batch_size(self, epoch: int = 1) -> float:
        """The mean items per batch on this rank in epoch ``epoch``."""
        batches = self.batches(epoch)
        return sum(map(len, batches)) / max(len(batches), 1)

    def total_batches(self, epochs: int) -> int:
        """Batches (optimiser steps) of epochs 1..``epochs`` together: the learning-rate schedule's length."""
        return sum(len(self.steps(e)) for e in range(1, epochs + 1))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``, from its batch ``start`` on."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        batches = self.batches(self.epoch)[self.start:]
        self.epoch, self.start = self.epoch + 1, 0
        return iter(batches)

    def __len__(self) -> int:
        """Batches left in this epoch."""
        return max(len(self.steps(self.epoch)) - self.start, 0)


def set_loader_epoch(loader: DataLoader, epoch: int, batches_done: int = 0) -> bool:
    """Point a training loader made by :func:`make_loader` at epoch ``epoch``, after its first
    ``batches_done`` batches (a resume). False when the loader's order is not ours (not resumable)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, BudgetBatchSampler):
        batch_sampler.set_epoch(epoch, batches_done)
        return True
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(epoch, batches_done * (loader.batch_size or 1))
        return True
    return False


def loader_padding(loader: DataLoader, epoch: int) -> dict[str, float] | None:
    """The padding share per modality of a training loader's batches in epoch ``epoch``, when it knows item lengths."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, BudgetBatchSampler):
        return batch_sampler.padding(epoch)
    sampler = getattr(loader, "sampler", None)
    return sampler.padding(epoch) if isinstance(sampler, EpochSampler) else None


def loader_batch_size(loader: DataLoader) -> float:
    """A loader's items per batch: its fixed batch size, or the mean of a dynamic one (epoch 1)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, BudgetBatchSampler):
        return batch_sampler.mean_batch_size(1)
    return float(loader.batch_size or 1)


# Its keyword parameters are DataLoader's own options (workers, pinning, prefetch) plus the
# sampler's (seed, shard); bundling them would only rename DataLoader's documented arguments.
def make_loader(
    split: Sequence[Sample],
    collator: Collator,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_singleton: bool = False,
    shard: tuple[int, int] = (0, 1),
    pin_memory: bool | None = None,
    prefetch_factor: int | None = None,
    weights: Sequence[float] | None = None,
    lengths: Sequence[Mapping[str, float]] | None = None,
    max_batch_seconds: float | None = None,
    min_batch_size: int = 2,
    bucket_jitter: float = 0.0,
) -> DataLoader:
    """A DataLoader over a split. ``drop_singleton`` drops a last batch of one item
    (InfoNCE needs at least two items); only that batch, and only when it would occur.

    The loader's ``sampler`` is an :class:`EpochSampler`: the order of each epoch depends only
    on ``seed`` and the epoch number, and ``loader.sampler.set_epoch(e, start)`` resumes it.
    ``shard = (rank, world)`` in a multi-process run: a shuffled (training) loader gives every
    rank the same number of items and drops the last incomplete batch, so the ranks' batches
    match for the gathered contrastive loss; an evaluation loader (no shuffle) splits the items
    without dropping any. Workers persist across epochs and show warnings as this process does
    (:func:`multiturbo.warning_lines.worker_display`); ``pin_memory`` defaults to CUDA's presence.
    ``weights``: per-item sampling weights (draws with replacement; see :class:`EpochSampler`).
    ``lengths``: per-item {modality: length} (:func:`item_lengths`) for length-aware batches in a
    shuffled loader (``train.batching: bucket``); ignored without ``shuffle``.
    ``max_batch_seconds`` (with ``lengths`` and ``shuffle``; ``train.max_batch_seconds``): batches of a
    dynamic size under that padded-length budget, at least ``min_batch_size`` items each
    (:class:`BudgetBatchSampler`); ``batch_size`` is then unused, and ranks' batches may differ in size.
    ``bucket_jitter``: the length-sorted batches' jitter (:func:`jittered_keys`; ``train.bucket_jitter``).
    """
    generator = torch.Generator().manual_seed(seed)  # worker seeds; the order comes from the sampler
    if num_workers > 0:
        preload_in_fork_server([split, collator])
    distributed = shard[1] > 1
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor is not None else {}
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    if max_batch_seconds is not None and shuffle:
        if lengths is None:
            raise ValueError("make_loader: max_batch_seconds needs the items' lengths")
        batch_sampler = BudgetBatchSampler(lengths, max_batch_seconds, min_batch_size, seed=seed, shard=shard, weights=weights,
                                           jitter=bucket_jitter)
        return DataLoader(split, batch_sampler=batch_sampler, collate_fn=collator, num_workers=num_workers,  # type: ignore[arg-type]
                          generator=generator, pin_memory=pin, persistent_workers=num_workers > 0, worker_init_fn=worker_display(), **extra)
    sampler = EpochSampler(len(split), shuffle=shuffle, seed=seed, shard=shard, equal_shards=distributed and shuffle, weights=weights,
                           lengths=lengths if shuffle else None, batch_size=batch_size, jitter=bucket_jitter)
    n_items = len(sampler)
    drop_last = (distributed and shuffle) or (drop_singleton and n_items % batch_size == 1)
    return DataLoader(
        split,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_display(),
        **extra,
    )
