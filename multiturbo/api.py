"""The Python API of a trained run, mirroring ``multiturbo predict / evaluate / embed``::

    import multiturbo

    run = multiturbo.load("runs/demo")                 # no training data, no network needed
    run.classes                                         # ['ang', 'hap', 'neu', 'sad']
    run.predict([{"audio": (samples, 16000), "text": "hello"}])
    # [{'id': '0', 'class': 'neu', 'probabilities': {'ang': 0.1, ...}}]
    run.predict("new_items.csv")                        # a manifest (labels optional)
    run.embed(items)                                    # {'audio': Tensor [N, d], 'text': Tensor [N, d]}
    run.evaluate("labelled.csv")                        # wa, ua, f1, (eer), confusion, loss, retrieval
    run.predict([{"audio": "clip.wav"}], transcribe="whisper-dir")   # text from speech recognition
    run.evaluate("labelled.csv", transcribe="whisper-dir")  # gold vs ASR text side by side, and the WER

Items are ``{modality: input}`` mappings; see :mod:`multiturbo.inference` for what an input
may be (audio: a path, ``(samples, sample_rate)`` or a Waveform, resampled by the encoder;
text: a string; image: a path or an array). Everything runs in eval mode (dropout off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .inference import Inputs, Outputs, evaluate_outputs, predictions, read_inputs, run_inputs
from .retrieval import DEFAULT_KS, cross_modal_retrieval
from .rundir import LoadedRun, load_run
from .runtime import resolve_device
from .transcribe import (
    TranscriptCache, default_cache_path, evaluate_transcribed, load_transcriber, transcript_modalities, with_transcripts,
)
from .transcriber import Transcriber

__all__ = ["TrainedRun", "load"]


class TrainedRun:
    """A trained run directory, ready for inference (see the module docstring)."""

    def __init__(
        self, loaded: LoadedRun, *, batch_size: int | None = None, kinds: Mapping[str, str] | None = None,
        transcript_cache: str | Path | None = None, workers: int | None = None,
    ):
        self.loaded = loaded
        self.batch_size = batch_size
        self.workers = workers
        self.kinds = dict(kinds or {})
        self.transcript_cache = Path(transcript_cache) if transcript_cache is not None else default_cache_path(loaded)
        self._transcribers: dict[str, Transcriber] = {}

    # -- what the run is -----------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.loaded.run_dir

    @property
    def classes(self) -> list[str]:
        return list(self.loaded.classes)

    @property
    def modalities(self) -> list[str]:
        return list(self.loaded.modalities)

    @property
    def config(self):
        return self.loaded.config

    @property
    def model(self):
        """The :class:`~multiturbo.model.TurboModel` with the best weights, in eval mode."""
        return self.loaded.model

    def __repr__(self) -> str:
        return f"TrainedRun({str(self.run_dir)!r}, classes={self.classes}, modalities={self.modalities})"

    # -- running it ----------------------------------------------------------------------------
    def inputs(self, data: Any, *, labels: str = "optional", split: str = "test", optional: Sequence[str] = ()) -> Inputs:
        """Items from a manifest path, a data set config (.yaml or mapping), or a list of item mappings
        (``optional``: modalities a manifest may lack a column for, filled later: see :meth:`transcribed`)."""
        extra = {"kinds": self.kinds, "optional": tuple(optional)} if self._is_manifest(data) else {}
        return read_inputs(self.loaded, data, labels=labels, split=split, **extra)

    def fillable(self, transcribe: Any) -> tuple[str, ...]:
        """(the modality ``transcribe`` fills: the text one,), or () without ``transcribe``; an error
        naming the run's modalities when it has no text or no audio modality."""
        return () if transcribe is None else (transcript_modalities(self.loaded, self.kinds)[1],)

    @staticmethod
    def _is_manifest(data: Any) -> bool:
        return isinstance(data, (str, Path)) and Path(data).suffix.lower() not in (".yaml", ".yml")

    def transcriber(self, model: str | Path | Transcriber) -> Transcriber:
        """The speech recogniser for ``transcribe=`` (a directory or hub id, loaded once, offline)."""
        if isinstance(model, Transcriber):
            return model
        if str(model) not in self._transcribers:
            self._transcribers[str(model)] = load_transcriber(model, device=str(self.loaded.device))
        return self._transcribers[str(model)]

    def transcribed(self, inputs: Inputs, transcribe: str | Path | Transcriber | None) -> Inputs:
        """``inputs`` with the text of items that have none filled from their audio (``transcribe``:
        a Whisper directory / hub id or a Transcriber; None: ``inputs`` unchanged)."""
        if transcribe is None:
            return inputs
        filled, _ = with_transcripts(self.loaded, inputs, self.transcriber(transcribe), kinds=self.kinds, cache=TranscriptCache(self.transcript_cache))
        return filled

    def outputs(self, data: Any, *, labels: str = "optional", split: str = "test", transcribe: str | Path | Transcriber | None = None) -> Outputs:
        """One pass over ``data``: probabilities, views, presence masks, ids and labels."""
        inputs = self.transcribed(self.inputs(data, labels=labels, split=split, optional=self.fillable(transcribe)), transcribe)
        return run_inputs(self.loaded, inputs, batch_size=self.batch_size, kinds=self.kinds, workers=self.workers)

    def predict(self, data: Any, *, transcribe: str | Path | Transcriber | None = None) -> list[dict[str, Any]]:
        """Per item: ``{"id", "class", "probabilities": {class: p}}`` (plus ``"label"`` when the input has one).
        ``transcribe``: fill a missing text from the audio with this speech recogniser."""
        return predictions(self.loaded, self.outputs(data, transcribe=transcribe))

    def predict_proba(self, data: Any, *, transcribe: str | Path | Transcriber | None = None) -> Tensor:
        """Class probabilities [N, C] (columns in the order of :attr:`classes`)."""
        return self.outputs(data, transcribe=transcribe).probs

    def embed(self, data: Any, *, normalize: bool = True, transcribe: str | Path | Transcriber | None = None) -> dict[str, Tensor]:
        """Projected views {modality: [N, d]} of one pass; L2-normalised unless ``normalize=False``.
        An item that misses a modality has a zero row there."""
        out = self.outputs(data, transcribe=transcribe)
        return out.normalized() if normalize else out.views

    def evaluate(
        self, data: Any, *, split: str = "test", ks: Sequence[int] = DEFAULT_KS, transcribe: str | Path | Transcriber | None = None,
    ) -> dict[str, Any]:
        """On a labelled manifest (or a data set config's ``split``): wa, ua, f1 (eer for two
        classes), confusion, loss, n_items, classes and ``retrieval`` (recall@k per modality pair).
        With ``transcribe``: also ``asr`` (the same metrics with the audio's transcripts as the
        text) and ``transcription`` (``wer`` against the gold text, the model, counts)."""
        inputs = self.inputs(data, labels="required", split=split, optional=self.fillable(transcribe))
        if transcribe is None:
            return evaluate_outputs(self.loaded, run_inputs(self.loaded, inputs, batch_size=self.batch_size, kinds=self.kinds, workers=self.workers), ks)
        return evaluate_transcribed(
            self.loaded, inputs, self.transcriber(transcribe), batch_size=self.batch_size, kinds=self.kinds,
            cache=TranscriptCache(self.transcript_cache), ks=ks, workers=self.workers,
        )

    def retrieval(self, data: Any, *, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
        """Cross-modal recall@k for every ordered modality pair (labels not needed)."""
        out = self.outputs(data, labels="ignore")
        return cross_modal_retrieval(out.normalized(), out.present, ks)


def load(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    kinds: Mapping[str, str] | None = None,
    transcript_cache: str | Path | None = None,
    workers: int | None = None,
) -> TrainedRun:
    """Load a finished run directory for inference (``device``: cpu, cuda, cuda:N or auto).

    ``kinds`` ({modality: "audio" | "text" | "image"}) says how to read the inputs of
    modalities whose kind cannot be told from the training manifest or the modality's name.
    ``transcript_cache``: the JSON file caching ``transcribe=`` transcripts (default:
    ``transcripts.json`` in the run directory).
    ``workers``: DataLoader worker processes of each pass (0: this process; None:
    :func:`multiturbo.inference.auto_workers`, by the CPU cores and the device): on the CPU each
    reads, collates and runs the model on its batches; with a GPU they read and collate.
    Raises :class:`multiturbo.rundir.RunDirError` for a missing, incomplete, unfinished or
    incompatible run directory.
    """
    return TrainedRun(load_run(run_dir, device=resolve_device(device)), batch_size=batch_size, kinds=kinds, transcript_cache=transcript_cache,
                      workers=workers)
