"""Hugging Face encoders: pretrained transformers models loaded with ``from_pretrained``.

- ``hf_audio``: wav2vec2, HuBERT, WavLM (AutoFeatureExtractor + AutoModel), pooled over valid frames.
- ``hf_whisper``: the Whisper encoder on unpadded log-mel frames (no 30 s padding), pooled over valid frames.
- ``hf_text``: BERT, RoBERTa, MiniLM, DistilBERT, GPT-2... (AutoTokenizer + AutoModel), pooled over valid tokens.
- transcriber ``whisper``: Whisper speech recognition (WhisperForConditionalGeneration), for
  ``predict / evaluate --transcribe MODEL`` (docs/using-a-trained-model.md).

``model`` is a hub id or a local directory written by ``save_pretrained``. Offline, use a local
directory, or set ``local_files_only: true`` (and HF_HUB_OFFLINE=1) to use the local cache.
``dropout`` overrides the model's hidden and attention dropout (Turbo's K views come from it;
the paper uses 0.2). ``output_dim`` is the model's hidden size. ``layers`` (last | index |
weighted), ``freeze_layers`` and ``output_dropout`` choose and regularise the pooled hidden
states; ``num_layers`` / ``layer_id`` place each parameter for layer-wise lr decay
(``_common.HiddenStates``, docs/encoders.md).
"""

from __future__ import annotations

from multiturbo.hookspecs import Register, hookimpl

from .asr import WhisperTranscriber
from .audio import HFAudio, HFWhisper
from .text import HFText

__all__ = ["HFAudio", "HFWhisper", "HFText", "WhisperTranscriber", "register_encoders", "register_transcribers"]


@hookimpl
def register_encoders(register: Register) -> None:
    register("hf_audio", HFAudio)
    register("hf_whisper", HFWhisper)
    register("hf_text", HFText)


@hookimpl
def register_transcribers(register: Register) -> None:
    register("whisper", WhisperTranscriber)
