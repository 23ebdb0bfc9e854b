"""Filling a missing text modality from the audio: ``--transcribe MODEL`` (docs/using-a-trained-model.md).

A model trained on audio + gold transcripts, deployed where only the audio exists: each item's
audio is transcribed by a speech recogniser (a :class:`~multiturbo.transcriber.Transcriber`
plugin; ``--transcribe`` uses the registered default, Whisper) and the text goes where the
gold transcript went. ``predict`` fills the text of the items that have none;
``evaluate`` runs every item twice, with its gold text and with the ASR text, and reports both
and the word error rate of the ASR text against the gold one (jiwer).

Transcripts are cached in a JSON file (by default ``transcripts.json`` in the run directory),
keyed by the audio (a file: its resolved path, size and mtime; an array: a hash of its samples
and rate) and the recogniser's model id, so a second run over the same files decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .audio import Waveform, to_rate
from .checkpoint import write_json
from .errors import MultiturboError
from .inference import Inputs, evaluate_outputs, modality_kinds, modality_readers, run_inputs, to_raw
from .plugins import get_registries
from .retrieval import DEFAULT_KS
from .rundir import LoadedRun, layout
from .transcriber import Transcriber

AUDIO_KIND, TEXT_KIND = "audio", "text"  # input kinds (multiturbo.reader), not plugin names


def load_transcriber(model: str | Path, *, device: str = "cpu", local_files_only: bool = True) -> Transcriber:
    """The registered default transcriber (``default = True``) for ``model`` (a directory or hub id)."""
    registry = get_registries().transcribers
    if not len(registry.names()):
        raise MultiturboError(
            f"--transcribe {model}: no transcriber is registered. The first-party one comes with the Hugging Face "
            f"plugin (transformers); install transformers, or a plugin that registers a transcriber."
        )
    return registry.get(registry.default())(str(model), device=device, local_files_only=local_files_only)


def transcript_modalities(run: LoadedRun, kinds: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(the audio modality, the text modality) of ``run``: where ASR reads from and writes to."""
    found = modality_kinds(run, kinds)
    audio = [m for m, k in found.items() if k == AUDIO_KIND]
    text = [m for m, k in found.items() if k == TEXT_KIND]
    if not text or not audio:
        lacking = "text" if not text else "audio"
        raise MultiturboError(
            f"--transcribe: the run {run.run_dir} has no {lacking} modality (its modalities and their kinds: "
            f"{ {m: k for m, k in found.items()} }). Transcription fills a text modality from an audio one, so it "
            f"needs a run trained on both; drop --transcribe, or give the kinds with --kind MODALITY=audio / =text "
            f"if a modality's name does not tell them."
        )
    if len(audio) > 1 or len(text) > 1:
        raise MultiturboError(
            f"--transcribe: the run {run.run_dir} has several audio {audio} or text {text} modalities; "
            f"transcription needs exactly one of each to know which audio fills which text."
        )
    return audio[0], text[0]


class TranscriptCache:
    """``{key: transcript}`` in a JSON file; :meth:`save` writes it atomically."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self.entries: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = dict(json.loads(self.path.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                self.entries = {}  # a damaged cache is rebuilt

    @staticmethod
    def key(value: Any, model_id: str, base: Path | None = None) -> str:
        """A file path: resolved path + size + mtime; anything else: a hash of its samples and rate."""
        if isinstance(value, (str, Path)):
            path = Path(value).expanduser()
            path = (base / path if base is not None and not path.is_absolute() else path).resolve()
            st = os.stat(path)
            what = f"file:{path}:{st.st_size}:{st.st_mtime_ns}"
        else:
            wave = value if isinstance(value, Waveform) else None
            samples = np.ascontiguousarray(wave.samples if wave else (value[0] if isinstance(value, tuple) else value), dtype=np.float32)
            rate = wave.sample_rate if wave else (value[1] if isinstance(value, tuple) else "?")
            what = f"array:{hashlib.sha1(samples.tobytes()).hexdigest()}:{rate}"
        return hashlib.sha1(f"{what}|{model_id}".encode()).hexdigest()

    def save(self) -> None:
        """Write the cache; a cache that cannot be written (a read-only run directory) is a warning:
        the transcripts are used all the same, and made again next time."""
        if self.path is not None:
            try:
                write_json(self.path, self.entries)
            except (OSError, MultiturboError) as exc:  # the atomic writer reports a failed write as a MultiturboError
                warnings.warn(f"The transcript cache {self.path} cannot be written ({exc}); give another file with --transcript-cache.", stacklevel=2)


def default_cache_path(run: LoadedRun) -> Path:
    return layout.path(run.run_dir, layout.TRANSCRIPTS)


def transcribe_items(
    run: LoadedRun,
    inputs: Inputs,
    transcriber: Transcriber,
    *,
    which: Sequence[int],
    kinds: Mapping[str, str] | None = None,
    cache: TranscriptCache | None = None,
    batch_size: int = 8,
) -> dict[int, str]:
    """{item index: transcript of its audio} for the items ``which`` that have audio."""
    audio_m, _ = transcript_modalities(run, kinds)
    reader = modality_readers(run, kinds)[audio_m]
    encoder_rate = run.model.encoders[audio_m].input_sample_rate or transcriber.sample_rate
    cache = cache or TranscriptCache(None)
    out: dict[int, str] = {}
    todo: list[tuple[int, str, np.ndarray]] = []
    for i in which:
        value = inputs.items[i].get(audio_m)
        if value is None:
            continue
        key = TranscriptCache.key(value, transcriber.model_id, inputs.base)
        if key in cache.entries:
            out[i] = cache.entries[key]
            continue
        raw = to_raw(value, reader, inputs.base)
        wave = raw if isinstance(raw, Waveform) else Waveform(np.asarray(raw, dtype=np.float32), encoder_rate)  # bare array: the encoder's rate
        todo.append((i, key, to_rate(wave, transcriber.sample_rate)))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        texts = transcriber.transcribe([samples for _, _, samples in chunk])
        for (i, key, _), text in zip(chunk, texts):
            out[i] = cache.entries[key] = text or ""
    if todo:
        cache.save()
    return out


def with_transcripts(
    run: LoadedRun,
    inputs: Inputs,
    transcriber: Transcriber,
    *,
    replace_gold: bool = False,
    kinds: Mapping[str, str] | None = None,
    cache: TranscriptCache | None = None,
) -> tuple[Inputs, dict[int, str]]:
    """``inputs`` with the text modality set to the audio's transcript: for the items without
    text or with a blank one (``replace_gold=False``: predict), or for every item with audio (``True``: evaluate's
    ASR side). Returns the new inputs and {item index: transcript}. An empty transcript is
    valid text (the empty string), as an empty gold transcript is."""
    audio_m, text_m = transcript_modalities(run, kinds)
    which = [i for i, item in enumerate(inputs.items) if replace_gold or item.get(text_m) is None or not str(item[text_m]).strip()]
    texts = transcribe_items(run, inputs, transcriber, which=which, kinds=kinds, cache=cache)
    items = [{**item, text_m: texts[i]} if i in texts else dict(item) for i, item in enumerate(inputs.items)]
    return replace(inputs, items=items, labels=list(inputs.labels)), texts


def word_error_rate(gold: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """WER of ``hypotheses`` against ``gold`` (jiwer, over all words of the pairs whose gold text
    has a word; an empty hypothesis counts every gold word as deleted); None without such a pair."""
    try:
        import jiwer  # optional: the `asr` extra
    except ImportError:
        raise MultiturboError("The word error rate needs jiwer: pip install 'multiturbo[asr]' (or pip install jiwer).") from None
    pairs = [(g, h) for g, h in zip(gold, hypotheses) if isinstance(g, str) and g.split()]
    if not pairs:
        return None
    return float(jiwer.wer([g for g, _ in pairs], [h for _, h in pairs]))


def evaluate_transcribed(
    run: LoadedRun,
    inputs: Inputs,
    transcriber: Transcriber,
    *,
    batch_size: int | None = None,
    kinds: Mapping[str, str] | None = None,
    cache: TranscriptCache | None = None,
    ks: Sequence[int] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``inputs`` with their gold text (the usual metrics, at the top level) and with the
    audio's transcripts in place of the text (``metrics["asr"]``, the same keys), plus
    ``metrics["transcription"]``: the recogniser's model id, the word error rate against the gold
    text (``wer``; None when no item has gold text) and how many items were transcribed.
    ``workers``: as for :func:`~multiturbo.inference.run_inputs`."""
    ks = ks or DEFAULT_KS
    _, text_m = transcript_modalities(run, kinds)
    metrics = evaluate_outputs(run, run_inputs(run, inputs, batch_size=batch_size, kinds=kinds, workers=workers), ks)
    asr_inputs, texts = with_transcripts(run, inputs, transcriber, replace_gold=True, kinds=kinds, cache=cache)
    metrics["asr"] = evaluate_outputs(run, run_inputs(run, asr_inputs, batch_size=batch_size, kinds=kinds, workers=workers), ks)
    gold = [inputs.items[i].get(text_m) for i in sorted(texts)]
    hyp = [texts[i] for i in sorted(texts)]
    metrics["transcription"] = {
        "model": transcriber.model_id,
        "wer": word_error_rate(gold, hyp),
        "n_transcribed": len(texts),
        "n_with_gold_text": sum(isinstance(g, str) and bool(g.split()) for g in gold),
        "n_empty_transcripts": sum(not h.strip() for h in hyp),
    }
    return metrics
