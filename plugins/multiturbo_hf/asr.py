"""``whisper``: speech recognition with a Whisper model (transformers
WhisperForConditionalGeneration + WhisperProcessor), for ``--transcribe MODEL``.

``MODEL`` is a local directory written by ``save_pretrained`` (model, tokenizer and feature
extractor) or a hub id; with ``local_files_only`` (the default of ``--transcribe``, as for the
encoders of a run) nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from multiturbo.errors import MultiturboError
from multiturbo.transcriber import Transcriber

from ._common import no_loading_bar


def _fail(model: str, what: str) -> MultiturboError:
    return MultiturboError(
        f"--transcribe {model}: {what} The transcriber needs a Whisper speech-recognition model "
        f"(WhisperForConditionalGeneration with its WhisperProcessor: tokenizer and feature extractor), "
        f"as a local directory written by save_pretrained or a hub id already in the local cache, "
        f"e.g. --transcribe openai/whisper-tiny.en after downloading it once, or a directory."
    )


class WhisperTranscriber(Transcriber):
    """Whisper (transformers): greedy decoding of up to ``max_new_tokens`` tokens (at most half the
    decoder's positions) of the first 30 s of each item."""

    default: ClassVar[bool] = True
    sample_rate: ClassVar[int] = 16000
    max_new_tokens: ClassVar[int] = 128

    def __init__(self, model: str, *, device: str = "cpu", local_files_only: bool = True):
        super().__init__(model, device=device, local_files_only=local_files_only)
        import transformers  # here, not at the top: registering the plugin must not cost every command transformers' import (about 0.7 s)

        path = Path(model).expanduser()
        self.model_id = str(path.resolve()) if path.is_dir() else str(model)
        try:
            config = transformers.AutoConfig.from_pretrained(str(model), local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise _fail(model, f"no model config could be read ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}).") from None
        if getattr(config, "model_type", None) != "whisper":
            raise _fail(model, f"it is a {getattr(config, 'model_type', 'unknown')!r} model, not a Whisper one.")
        try:
            with no_loading_bar():
                self.processor = transformers.WhisperProcessor.from_pretrained(str(model), local_files_only=local_files_only)
                self.model = transformers.WhisperForConditionalGeneration.from_pretrained(str(model), local_files_only=local_files_only)
        except (OSError, ValueError, TypeError) as exc:
            raise _fail(model, f"it cannot be loaded as a Whisper recogniser ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}).") from None
        if len(self.processor.tokenizer) < 0.9 * config.vocab_size:  # transformers makes an empty tokenizer when its files are absent
            raise _fail(model, f"it has no usable tokenizer ({len(self.processor.tokenizer)} tokens for a vocabulary of {config.vocab_size}): "
                               f"add the tokenizer files (tokenizer.json, or vocab.json + merges.txt) of the same Whisper model to the directory.")
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def transcribe(self, audio: Sequence[np.ndarray]) -> list[str]:
        """B waveforms [T_i] at 16 kHz -> B transcripts (stripped; "" when nothing was recognised)."""
        if not audio:
            return []
        feats = self.processor.feature_extractor(
            [np.asarray(a, dtype=np.float32) for a in audio], sampling_rate=self.sample_rate, return_tensors="pt",
        )  # input_features [B, n_mels, 3000]: padded to Whisper's 30 s window
        import transformers

        limit = min(self.max_new_tokens, self.model.config.max_target_positions // 2)  # room for the prompt tokens
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # generate's notes on its defaults (no attention mask: Whisper pads to 30 s)
        try:
            ids = self.model.generate(feats.input_features.to(self.device), max_new_tokens=limit)  # [B, L]
        finally:
            transformers.logging.set_verbosity(level)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
