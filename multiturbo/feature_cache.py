"""Frozen encoder features computed once per run (``train.frozen_features: cache``).

When a modality's encoder has no trainable parameter (e.g. ``freeze: all``, the frozen-encoder
protocol of SUPERB and EmoBox), every epoch and each of Turbo's K passes would run it again on
the same inputs. With ``cache``, the run computes each item's pooled encoder output once, before
training, with the encoder in eval mode (its own dropout off), and the batches carry these
vectors instead of the raw inputs:

    split[i].inputs[m] (raw)  --encoder (eval, no grad), once-->  FrozenFeature([dim_m])
    collate: list of FrozenFeature -> {"_features": [B, dim_m]}  --model--> feature norm, dropout, projection

What changes: the K views of such a modality then differ only by the dropout after the encoder
(``model.dropout`` before the projection), not by dropout inside the encoder. That is the
frozen-encoder protocol; ``recompute`` (the default) keeps running the frozen encoder in train
mode, so its internal dropout still acts on every pass. Inference on a trained run (predict,
evaluate, the API) runs the encoder itself, in eval mode, which gives the cached vectors.

Within one process (``compare`` and ``cv`` run every method, fold and seed in one), an item's
features are computed once per encoder and reused: the key digests the encoder's class, options and
weights and the item's raw input (text, samples and rate, array), so another encoder or another
input never reuses a vector. The raw inputs are still read (with ``train.audio_cache`` that is cheap).

Across processes (``train.frozen_features_store: disk``): the same vectors are also written, one
safetensors file per item, under ``DIR/<encoder digest>/<input digest>.safetensors`` (DIR:
``train.frozen_features_dir``, default ``$XDG_CACHE_HOME/multiturbo/features``), so a resumed
``cv``/``compare``, a sweep or a later run computes nothing again. An entry is used only when its
header names the same encoder and input digests; one that cannot be read or does not match is
computed again (and rewritten) with a warning. Vectors are float32 as computed: a run from the disk
cache equals one from the memory cache, bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .dataset import Sample, Splits
from .errors import ConfigError
from .progress import ProgressReporter

FEATURES_KEY = "_features"  # in a modality's collated batch: precomputed encoder outputs [B, dim]
FROZEN_PART_KEY = "_frozen_part"  # in a modality's collated batch: it holds cached frozen-part outputs (bool [B])


@dataclass(frozen=True)
class FrozenFeature:
    """An item's precomputed pooled encoder output for one modality: [dim]."""

    vector: Tensor


@dataclass(frozen=True)
class FrozenPart:
    """An item's cached output of its encoder's frozen lower part ({name: tensor}, unpadded; see
    :meth:`multiturbo.encoder.Encoder.frozen_part`)."""

    tensors: dict[str, Tensor]


def frozen_modalities(encoders: Mapping[str, nn.Module]) -> list[str]:
    """The modalities whose encoder has parameters and none of them trainable."""
    return [m for m, enc in encoders.items()
            if any(True for _ in enc.parameters()) and not any(p.requires_grad for p in enc.parameters())]


def partial_modalities(encoders: Mapping[str, nn.Module]) -> list[str]:
    """The modalities whose encoder trains but splits off a frozen lower part (``has_frozen_part()``)."""
    frozen = set(frozen_modalities(encoders))
    return [m for m, enc in encoders.items() if m not in frozen and callable(getattr(enc, "has_frozen_part", None)) and enc.has_frozen_part()]


def check_frozen_features(mode: str, encoders: Mapping[str, nn.Module], part_dropout: str = "refuse") -> list[str]:
    """The fully frozen modalities. With ``mode`` ``cache``, a ConfigError (found when the experiment is
    built, before any training) when no encoder is fully frozen nor splits off a frozen part, or when a
    frozen part has dropout inside and ``part_dropout`` (``train.frozen_part_dropout``) is not ``eval``.
    Without that opt-in, an encoder whose frozen part has dropout first shrinks it to a lower part without
    dropout where it has one (``exact_frozen_part``: e.g. hf_audio's conv stack below freeze_layers), so
    the cache keeps results equal to recomputing."""
    frozen = frozen_modalities(encoders)
    if mode != "cache":
        return frozen
    partial = partial_modalities(encoders)
    if not frozen and not partial:
        notes = _frozen_part_notes(encoders, list(encoders))
        raise ConfigError([
            "train.frozen_features: cache needs a modality whose encoder is fully frozen (no trainable parameter) or "
            f"splits off a frozen lower part (e.g. hf_audio with freeze: feature_encoder, hf_text with freeze_layers), but every "
            f"encoder of {list(encoders)} trains throughout{notes}. Set `freeze: all` "
            "(or `freeze: feature_encoder` for hf_audio) in an encoder's options, or set train.frozen_features: recompute."
        ])
    if part_dropout != "eval":
        # refuse: an encoder that can cache a lower part without dropout does so; the others are an error
        noisy = [m for m in partial if getattr(encoders[m], "frozen_part_dropout", False)
                 and not getattr(encoders[m], "exact_frozen_part", lambda: False)()]
        if noisy:
            notes = _frozen_part_notes(encoders, noisy)
            raise ConfigError([
                f"train.frozen_features: cache: the frozen part of the {', '.join(noisy)} encoder has dropout inside, which the "
                "cache would compute once in eval mode, so Turbo's K views would no longer differ there (only in the trainable "
                f"part above it){notes}. Opt in with "
                "train.frozen_part_dropout: eval, or set train.frozen_features: recompute."
            ])
    return frozen


def describe_frozen_part(encoder: nn.Module) -> str:
    """The encoder's ``describe_frozen_part()`` (what its cached frozen part is), or "" for a module without one."""
    describe = getattr(encoder, "describe_frozen_part", None)
    return describe() if callable(describe) else ""


def _frozen_part_notes(encoders: Mapping[str, nn.Module], modalities: Sequence[str]) -> str:
    """" (m (Class): what its frozen part is; ...)" for the ``modalities`` whose encoder describes it
    (describe_frozen_part), or "" when none does."""
    notes = [f"{m} ({type(encoders[m]).__name__}): {note}" for m in modalities
             if (note := describe_frozen_part(encoders[m]))]
    return f" ({'; '.join(notes)})" if notes else ""


class FeatureSplit(Sequence[Sample]):
    """``split`` with modality inputs replaced by their precomputed features ({m: [N, dim]}, row i =
    item i; rows of items that lack m are unused) or by their encoder's cached frozen part
    (``parts``: {m: one {name: tensor} per item, None where the item lacks m}). When every modality is
    precomputed and the split knows its labels and metadata without loading (LazySplit), nothing is
    read from disk."""

    def __init__(self, split: Sequence[Sample], features: Mapping[str, Tensor], present: Mapping[str, Tensor], all_modalities: bool,
                 parts: Mapping[str, Sequence[dict[str, Tensor] | None]] | None = None):
        self.split, self.features, self.present = split, dict(features), dict(present)
        self.parts = dict(parts or {})
        self._light = all_modalities and hasattr(split, "labels") and hasattr(split, "meta")

    def __len__(self) -> int:
        return len(self.split)

    def _cached(self, m: str, i: int) -> FrozenFeature | FrozenPart | None:
        if m in self.parts:
            part = self.parts[m][i]
            return None if part is None else FrozenPart(part)
        return FrozenFeature(self.features[m][i]) if bool(self.present[m][i]) else None

    def __getitem__(self, i: int) -> Sample:
        if self._light:
            inputs = {m: self._cached(m, i) for m in [*self.features, *self.parts]}
            return Sample(inputs=inputs, label=self.split.labels[i], meta=self.split.meta[i])
        s = self.split[i]
        inputs = dict(s.inputs)
        for m in [*self.features, *self.parts]:
            if inputs.get(m) is not None:
                inputs[m] = self._cached(m, i)
        return Sample(inputs=inputs, label=s.label, meta=s.meta)


def default_features_dir() -> Path:
    """``$XDG_CACHE_HOME/multiturbo/features`` (``~/.cache/multiturbo/features`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "multiturbo" / "features"


@dataclass
class DiskStore:
    """Frozen features on disk, shared by processes: ``directory/<encoder digest>/<input digest>.safetensors``
    holding ``features`` [dim] (float32) and a header with both digests. ``recomputed``: the entries
    found unusable (unreadable, or another encoder's or input's), each with the reason."""

    directory: Path
    recomputed: list[str] = field(default_factory=list)
    write_failed: bool = False

    def path(self, encoder: str, key: str) -> Path:
        return self.directory / encoder[:32] / f"{key}.safetensors"

    def get(self, encoder: str, key: str) -> Tensor | None:
        """A frozen encoder's features [dim] (float32), or None (missing, or unusable: recorded)."""
        tensors = self._read(encoder, key, None, _check_features)
        return None if tensors is None else tensors["features"]

    def get_part(self, encoder: str, key: str) -> dict[str, Tensor] | None:
        """A frozen part's tensors ({name: float32 tensor}), or None (missing, or unusable: recorded)."""
        return self._read(encoder, key, "part", _check_part)

    def _read(self, encoder: str, key: str, kind: str | None, check: Callable[[dict[str, Tensor]], None]) -> dict[str, Tensor] | None:
        """The tensors of the entry (``encoder``, ``key``) when its header names both and ``kind`` (None: a
        features entry) and ``check`` accepts them (it raises ValueError otherwise); None when there is no
        entry or it cannot be used (the reason is added to ``recomputed``)."""
        path = self.path(encoder, key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            if header.get("encoder") != encoder or header.get("input") != key or header.get("kind") != kind:
                raise ValueError("its header names another encoder or input, or another kind of entry")
            check(tensors)
            return tensors
        except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
            self.recomputed.append(f"{path} ({type(exc).__name__}: {exc})")
            return None

    def put(self, encoder: str, key: str, vector: Tensor) -> None:
        self._write(encoder, key, {"features": vector}, {})

    def put_part(self, encoder: str, key: str, tensors: Mapping[str, Tensor]) -> None:
        self._write(encoder, key, tensors, {"kind": "part"})

    def _write(self, encoder: str, key: str, tensors: Mapping[str, Tensor], header: dict[str, str]) -> None:
        if self.write_failed:
            return
        path, tmp = self.path(encoder, key), None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
            os.close(fd)
            save_file({k: t.contiguous() for k, t in tensors.items()}, tmp, metadata={"encoder": encoder, "input": key, **header})
            os.replace(tmp, path)
        except OSError as exc:
            self.write_failed = True
            self.recomputed.append(f"cannot write to {self.directory} ({exc}); features are kept in memory only")
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def _check_features(tensors: Mapping[str, Tensor]) -> None:
    """A features entry holds a float32 vector ``features`` (ValueError otherwise)."""
    vector = tensors.get("features")
    if vector is None:
        raise ValueError(f"it holds {sorted(tensors)}, not a features tensor")
    if vector.ndim != 1 or vector.dtype != torch.float32:
        raise ValueError(f"it holds a {vector.dtype} tensor of shape {list(vector.shape)}, not a float32 vector")


def _check_part(tensors: Mapping[str, Tensor]) -> None:
    """A frozen part's entry holds at least one tensor (ValueError otherwise)."""
    if not tensors:
        raise ValueError("it holds no tensor")


def _memo_for(digest: str) -> dict:
    """This process's entries of the encoder with ``digest`` (the oldest encoders' dropped past _MEMO_ENCODERS)."""
    memo = _MEMO.setdefault(digest, {})
    while len(_MEMO) > _MEMO_ENCODERS:
        _MEMO.pop(next(iter(_MEMO)))
    return memo


def _per_item(encoder: nn.Module, split: Sequence[Sample], modality: str, batch_size: int, progress: ProgressReporter,
              memo: dict, compute: Callable[[list[Any]], list[Any]], load: Callable[[str], Any] | None,
              save: Callable[[str, Any], None] | None) -> tuple[list[Any], int]:
    """One value per item of ``split`` (None where it lacks ``modality``), in eval mode: from ``memo``
    (then ``load``, the disk) by the input's digest, else ``compute`` on a batch of raw inputs (kept
    in ``memo`` and given to ``save``); and how many were reused."""
    was_training = encoder.training
    encoder.eval()
    rows: list[Any] = []
    reused = 0
    try:
        for start in range(0, len(split), batch_size):
            raw = [split[i].inputs.get(modality) for i in range(start, min(start + batch_size, len(split)))]
            keys = [_digest_input(r) if r is not None else None for r in raw]
            if load is not None:  # the disk's entries join the memo
                for k in keys:
                    if k is not None and k not in memo and (value := load(k)) is not None:
                        memo[k] = value
            todo = [j for j, (r, k) in enumerate(zip(raw, keys)) if r is not None and (k is None or k not in memo)]
            done: dict[int, Any] = {}
            if todo:
                done = dict(zip(todo, compute([raw[j] for j in todo])))
                memo.update({keys[j]: v for j, v in done.items() if keys[j] is not None})
                if save is not None:
                    for j, v in done.items():
                        if keys[j] is not None:
                            save(keys[j], v)
            reused += sum(1 for r in raw if r is not None) - len(todo)
            rows += [None if r is None else done[j] if j in done else memo[keys[j]] for j, r in enumerate(raw)]
            progress.advance()
    finally:
        encoder.train(was_training)
    return rows, reused


@torch.no_grad()
def compute_features(encoder: nn.Module, split: Sequence[Sample], modality: str, device: torch.device,
                     batch_size: int, progress: ProgressReporter, store: DiskStore | None = None) -> tuple[Tensor, Tensor, int]:
    """The encoder's eval-mode output for every item of ``split``: ([N, dim] on the CPU, present bool [N],
    how many items were reused from an earlier call of this process, or from ``store`` on disk, with
    the same encoder and input)."""
    digest = _digest_module(encoder)

    def compute(raw: list[Any]) -> list[Tensor]:
        return list(encoder({k: t.to(device) for k, t in encoder.collate(raw).items()}).float().cpu())

    rows, reused = _per_item(encoder, split, modality, batch_size, progress, _memo_for(digest), compute,
                             (lambda k: store.get(digest, k)) if store is not None else None,
                             (lambda k, v: store.put(digest, k, v)) if store is not None else None)
    dim = next((r.shape[0] for r in rows if r is not None), 1)
    present = torch.tensor([r is not None for r in rows], dtype=torch.bool)
    features = torch.stack([r if r is not None else torch.zeros(dim) for r in rows]) if rows else torch.zeros(0, dim)
    return features, present, reused


@torch.no_grad()
def compute_parts(encoder: nn.Module, split: Sequence[Sample], modality: str, device: torch.device,
                  batch_size: int, progress: ProgressReporter, store: DiskStore | None = None) -> tuple[list[dict[str, Tensor] | None], int]:
    """The encoder's frozen lower part (``frozen_part``, eval mode) for every item of ``split``: (one
    {name: tensor} on the CPU per item, None where it lacks the modality; how many were reused from
    this process or from ``store``). Keyed by the encoder's class, options and FROZEN weights (the
    trainable ones change in training and do not enter the frozen part) and the item's input."""
    digest = "part-" + _digest_module(encoder, frozen_only=True)

    def compute(raw: list[Any]) -> list[dict[str, Tensor]]:
        parts = encoder.frozen_part({k: t.to(device) for k, t in encoder.collate(raw).items()})
        return [{name: t.float().cpu().contiguous() for name, t in part.items()} for part in parts]

    return _per_item(encoder, split, modality, batch_size, progress, _memo_for(digest), compute,
                     (lambda k: store.get_part(digest, k)) if store is not None else None,
                     (lambda k, v: store.put_part(digest, k, v)) if store is not None else None)


_MEMO: dict[str, dict[str, Tensor | dict[str, Tensor]]] = {}  # encoder digest -> {raw input digest: features [dim], or a frozen part's tensors}; this process only
_MEMO_ENCODERS = 8  # encoders remembered (the oldest is forgotten first)


def _digest_module(module: nn.Module, frozen_only: bool = False) -> str:
    """The encoder's class, options and weights (``frozen_only``: its buffers and frozen parameters, and what
    its frozen part is: ``describe_frozen_part``, which differs e.g. between a conv-only and a layer cache of
    the same options), digested."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    if frozen_only:
        h.update(describe_frozen_part(module).encode())
    options = getattr(module, "options", None)
    if options is not None and hasattr(options, "model_dump_json"):
        h.update(options.model_dump_json().encode())
    trainable = {name for name, p in module.named_parameters() if p.requires_grad} if frozen_only else set()
    for name, t in module.state_dict().items():
        if name in trainable:
            continue
        h.update(name.encode())
        if t.numel():
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _digest_input(raw: object) -> str | None:
    """A raw input's content, digested (text, arrays, Waveform-like objects); None when unknown."""
    h = hashlib.sha1()
    if isinstance(raw, str):
        h.update(b"s" + raw.encode())
    elif isinstance(raw, np.ndarray):
        h.update(f"a{raw.dtype}{raw.shape}".encode() + np.ascontiguousarray(raw).tobytes())
    elif isinstance(raw, Tensor):
        return _digest_input(raw.detach().cpu().numpy())
    elif hasattr(raw, "samples") and hasattr(raw, "sample_rate"):
        h.update(f"w{raw.sample_rate}".encode() + (_digest_input(np.asarray(raw.samples)) or "").encode())
    else:
        return None
    return h.hexdigest()


def cache_frozen_features(splits: Splits, encoders: Mapping[str, nn.Module], mode: str, device: torch.device,
                          batch_size: int, progress: ProgressReporter, label: str = "", *,
                          store: str = "memory", directory: str | Path | None = None, part_dropout: str = "refuse") -> Splits:
    """``splits`` with the frozen modalities' inputs replaced by their features, and the inputs of
    encoders that split off a frozen lower part replaced by that part's output (mode ``cache``), or
    unchanged (``recompute``). A ConfigError, before any training, when ``cache`` finds nothing to cache
    (:func:`check_frozen_features`). ``store``: ``memory`` (this process) or ``disk`` (also under
    ``directory``, shared by processes)."""
    if mode != "cache":
        return splits
    frozen = check_frozen_features(mode, encoders, part_dropout)
    partial = partial_modalities(encoders)
    everything = len(frozen) + len(partial) == len(encoders)
    disk = DiskStore(Path(directory) if directory else default_features_dir()) if store == "disk" else None
    where = "earlier in this process or the disk cache" if disk is not None else "earlier in this process"
    for m in partial:
        what = describe_frozen_part(encoders[m])
        if what:
            progress.log(f"{label}{m}: the frozen part cached: {what}")
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        features, present, parts = {}, {}, {}
        for m in [*frozen, *partial]:
            start = time.perf_counter()
            what = "frozen features" if m in frozen else "frozen-part outputs"
            progress.start(f"{label}{m}: {what} of {name}", total=(len(split) + batch_size - 1) // batch_size)
            if m in frozen:
                features[m], present[m], reused = compute_features(encoders[m], split, m, device, batch_size, progress, disk)
            else:
                parts[m], reused = compute_parts(encoders[m], split, m, device, batch_size, progress, disk)
            progress.log(f"{label}{m}: {what} of {len(split)} {name} items ready "
                         f"({reused} reused from {where}; {time.perf_counter() - start:.1f} s)")
            if disk is not None and disk.recomputed:
                progress.log(f"{label}warning: train.frozen_features_store=disk: {len(disk.recomputed)} cache entr"
                             f"{'y' if len(disk.recomputed) == 1 else 'ies'} could not be used and were computed again, e.g. "
                             f"{disk.recomputed[0]}. Nothing to do unless this repeats (then delete {disk.directory}).")
                disk.recomputed.clear()
        out[name] = FeatureSplit(split, features, present, everything, parts)
    return Splits(**out)
