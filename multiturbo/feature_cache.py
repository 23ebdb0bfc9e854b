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

Within one process (``compare`` and ``cv`` run every method, fold and seed in one), features are
computed once per (encoder weights, split items) and reused: the key digests the encoder's class,
options and state_dict and the split's labels and metadata, so a different fold, seed-drawn split or
encoder never reuses another's vectors.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dataset import Sample, Splits
from .errors import ConfigError
from .progress import ProgressReporter

FEATURES_KEY = "_features"  # in a modality's collated batch: precomputed encoder outputs [B, dim]


@dataclass(frozen=True)
class FrozenFeature:
    """An item's precomputed pooled encoder output for one modality: [dim]."""

    vector: Tensor


def frozen_modalities(encoders: Mapping[str, nn.Module]) -> list[str]:
    """The modalities whose encoder has parameters and none of them trainable."""
    return [m for m, enc in encoders.items()
            if any(True for _ in enc.parameters()) and not any(p.requires_grad for p in enc.parameters())]


class FeatureSplit(Sequence[Sample]):
    """``split`` with modality inputs replaced by their precomputed features ({m: [N, dim]}, row i =
    item i; rows of items that lack m are unused). When every modality is precomputed and the split
    knows its labels and metadata without loading (LazySplit), nothing is read from disk."""

    def __init__(self, split: Sequence[Sample], features: Mapping[str, Tensor], present: Mapping[str, Tensor], all_modalities: bool):
        self.split, self.features, self.present = split, dict(features), dict(present)
        self._light = all_modalities and hasattr(split, "labels") and hasattr(split, "meta")

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> Sample:
        if self._light:
            inputs = {m: FrozenFeature(f[i]) if bool(self.present[m][i]) else None for m, f in self.features.items()}
            return Sample(inputs=inputs, label=self.split.labels[i], meta=self.split.meta[i])
        s = self.split[i]
        inputs = dict(s.inputs)
        for m, f in self.features.items():
            if inputs.get(m) is not None:
                inputs[m] = FrozenFeature(f[i])
        return Sample(inputs=inputs, label=s.label, meta=s.meta)


@torch.no_grad()
def compute_features(encoder: nn.Module, split: Sequence[Sample], modality: str, device: torch.device,
                     batch_size: int, progress: ProgressReporter) -> tuple[Tensor, Tensor]:
    """The encoder's eval-mode output for every item of ``split``: ([N, dim] on the CPU, present bool [N])."""
    was_training = encoder.training
    encoder.eval()
    rows: list[Tensor | None] = []
    try:
        for start in range(0, len(split), batch_size):
            raw = [split[i].inputs.get(modality) for i in range(start, min(start + batch_size, len(split)))]
            have = [r for r in raw if r is not None]
            out = iter(())
            if have:
                batch = {k: t.to(device) for k, t in encoder.collate(have).items()}
                out = iter(encoder(batch).float().cpu())
            rows += [next(out) if r is not None else None for r in raw]
            progress.advance()
    finally:
        encoder.train(was_training)
    dim = next((r.shape[0] for r in rows if r is not None), 1)
    present = torch.tensor([r is not None for r in rows], dtype=torch.bool)
    return torch.stack([r if r is not None else torch.zeros(dim) for r in rows]) if rows else torch.zeros(0, dim), present


_MEMO: dict[str, tuple[Tensor, Tensor]] = {}  # key -> (features [N, dim], present [N]); this process only
_MEMO_LIMIT = 64


def _digest_module(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__qualname__.encode())
    options = getattr(module, "options", None)
    if options is not None and hasattr(options, "model_dump_json"):
        h.update(options.model_dump_json().encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _digest_split(split: Sequence[Sample]) -> str:
    if hasattr(split, "labels") and hasattr(split, "meta"):
        items = list(zip(split.labels, split.meta))
    else:
        items = [(s.label, s.meta) for s in split]
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def cache_frozen_features(splits: Splits, encoders: Mapping[str, nn.Module], mode: str, device: torch.device,
                          batch_size: int, progress: ProgressReporter, label: str = "") -> Splits:
    """``splits`` with the frozen modalities' inputs replaced by their features (mode ``cache``), or
    unchanged (``recompute``). A ConfigError, before any training, when ``cache`` finds no frozen encoder."""
    if mode != "cache":
        return splits
    frozen = frozen_modalities(encoders)
    if not frozen:
        raise ConfigError([
            "train.frozen_features: cache needs a modality whose encoder is fully frozen (no trainable parameter), "
            f"but every encoder of {list(encoders)} trains. Set `freeze: all` in an encoder's options, or set "
            "train.frozen_features: recompute."
        ])
    everything = len(frozen) == len(encoders)
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        features, present = {}, {}
        split_key = _digest_split(split)
        for m in frozen:
            key = f"{m}|{_digest_module(encoders[m])}|{split_key}"
            if key in _MEMO:
                features[m], present[m] = _MEMO[key]
                progress.log(f"{label}{m}: frozen encoder features of {len(split)} {name} items reused from an earlier run of this process")
                continue
            start = time.perf_counter()
            progress.start(f"{label}{m}: frozen features of {name}", total=(len(split) + batch_size - 1) // batch_size)
            features[m], present[m] = compute_features(encoders[m], split, m, device, batch_size, progress)
            progress.log(f"{label}{m}: frozen encoder features of {len(split)} {name} items computed once "
                         f"({time.perf_counter() - start:.1f} s)")
            if len(_MEMO) >= _MEMO_LIMIT:
                _MEMO.pop(next(iter(_MEMO)))
            _MEMO[key] = (features[m], present[m])
        out[name] = FeatureSplit(split, features, present, everything)
    return Splits(**out)
