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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
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


def check_frozen_features(mode: str, encoders: Mapping[str, nn.Module]) -> list[str]:
    """The frozen modalities; with ``mode`` ``cache`` and none of them, a ConfigError (found when the
    experiment is built, before any training)."""
    frozen = frozen_modalities(encoders)
    if mode == "cache" and not frozen:
        raise ConfigError([
            "train.frozen_features: cache needs a modality whose encoder is fully frozen (no trainable parameter), "
            f"but every encoder of {list(encoders)} trains. Set `freeze: all` in an encoder's options, or set "
            "train.frozen_features: recompute."
        ])
    return frozen


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
        path = self.path(encoder, key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                header, vector = f.metadata() or {}, f.get_tensor("features")
            if header.get("encoder") != encoder or header.get("input") != key:
                raise ValueError("its header names another encoder or input")
            if vector.ndim != 1 or vector.dtype != torch.float32:
                raise ValueError(f"it holds a {vector.dtype} tensor of shape {list(vector.shape)}, not a float32 vector")
            return vector
        except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
            self.recomputed.append(f"{path} ({type(exc).__name__}: {exc})")
            return None

    def put(self, encoder: str, key: str, vector: Tensor) -> None:
        if self.write_failed:
            return
        path, tmp = self.path(encoder, key), None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
            os.close(fd)
            save_file({"features": vector.contiguous()}, tmp, metadata={"encoder": encoder, "input": key})
            os.replace(tmp, path)
        except OSError as exc:
            self.write_failed = True
            self.recomputed.append(f"cannot write to {self.directory} ({exc}); features are kept in memory only")
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


@torch.no_grad()
def compute_features(encoder: nn.Module, split: Sequence[Sample], modality: str, device: torch.device,
                     batch_size: int, progress: ProgressReporter, store: DiskStore | None = None) -> tuple[Tensor, Tensor, int]:
    """The encoder's eval-mode output for every item of ``split``: ([N, dim] on the CPU, present bool [N],
    how many items were reused from an earlier call of this process, or from ``store`` on disk, with
    the same encoder and input)."""
    was_training = encoder.training
    encoder.eval()
    encoder_digest = _digest_module(encoder)
    memo = _MEMO.setdefault(encoder_digest, {})
    while len(_MEMO) > _MEMO_ENCODERS:
        _MEMO.pop(next(iter(_MEMO)))
    rows: list[Tensor | None] = []
    reused = 0
    try:
        for start in range(0, len(split), batch_size):
            raw = [split[i].inputs.get(modality) for i in range(start, min(start + batch_size, len(split)))]
            keys = [_digest_input(r) if r is not None else None for r in raw]
            if store is not None:  # the disk's entries join the memo
                for k in keys:
                    if k is not None and k not in memo and (vector := store.get(encoder_digest, k)) is not None:
                        memo[k] = vector
            todo = [j for j, (r, k) in enumerate(zip(raw, keys)) if r is not None and (k is None or k not in memo)]
            done: dict[int, Tensor] = {}
            if todo:
                batch = {k: t.to(device) for k, t in encoder.collate([raw[j] for j in todo]).items()}
                done = dict(zip(todo, encoder(batch).float().cpu()))
                memo.update({keys[j]: v for j, v in done.items() if keys[j] is not None})
                if store is not None:
                    for j, v in done.items():
                        if keys[j] is not None:
                            store.put(encoder_digest, keys[j], v)
            reused += sum(1 for r in raw if r is not None) - len(todo)
            rows += [None if r is None else done[j] if j in done else memo[keys[j]] for j, r in enumerate(raw)]
            progress.advance()
    finally:
        encoder.train(was_training)
    dim = next((r.shape[0] for r in rows if r is not None), 1)
    present = torch.tensor([r is not None for r in rows], dtype=torch.bool)
    features = torch.stack([r if r is not None else torch.zeros(dim) for r in rows]) if rows else torch.zeros(0, dim)
    return features, present, reused


_MEMO: dict[str, dict[str, Tensor]] = {}  # encoder digest -> {raw input digest: features [dim]}; this process only
_MEMO_ENCODERS = 8  # encoders remembered (the oldest is forgotten first)


def _digest_module(module: nn.Module) -> str:
    """The encoder's class, options and weights, digested."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    options = getattr(module, "options", None)
    if options is not None and hasattr(options, "model_dump_json"):
        h.update(options.model_dump_json().encode())
    for name, t in module.state_dict().items():
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
                          store: str = "memory", directory: str | Path | None = None) -> Splits:
    """``splits`` with the frozen modalities' inputs replaced by their features (mode ``cache``), or
    unchanged (``recompute``). A ConfigError, before any training, when ``cache`` finds no frozen encoder.
    ``store``: ``memory`` (this process) or ``disk`` (also under ``directory``, shared by processes)."""
    if mode != "cache":
        return splits
    frozen = check_frozen_features(mode, encoders)
    everything = len(frozen) == len(encoders)
    disk = DiskStore(Path(directory) if directory else default_features_dir()) if store == "disk" else None
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        features, present = {}, {}
        for m in frozen:
            start = time.perf_counter()
            progress.start(f"{label}{m}: frozen features of {name}", total=(len(split) + batch_size - 1) // batch_size)
            features[m], present[m], reused = compute_features(encoders[m], split, m, device, batch_size, progress, disk)
            where = "earlier in this process or the disk cache" if disk is not None else "earlier in this process"
            progress.log(f"{label}{m}: frozen encoder features of {len(split)} {name} items ready "
                         f"({reused} reused from {where}; {time.perf_counter() - start:.1f} s)")
            if disk is not None and disk.recomputed:
                progress.log(f"{label}warning: train.frozen_features_store=disk: {len(disk.recomputed)} cache entr"
                             f"{'y' if len(disk.recomputed) == 1 else 'ies'} could not be used and were computed again, e.g. "
                             f"{disk.recomputed[0]}. Nothing to do unless this repeats (then delete {disk.directory}).")
                disk.recomputed.clear()
        out[name] = FeatureSplit(split, features, present, everything)
    return Splits(**out)
