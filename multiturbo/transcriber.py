"""The transcriber contract: speech recognition that fills a missing text modality.

``multiturbo predict / evaluate --transcribe MODEL`` (and ``run.predict(..., transcribe=MODEL)``)
turn the audio of an item into the text a model trained on audio + transcripts expects, where
only the audio exists. Transcribers are plugins, registered by name through the
``register_transcribers`` hook (:mod:`multiturbo.hookspecs`); ``--transcribe`` uses the one that
sets ``default = True`` (the first-party one runs Whisper with transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np


class Transcriber:
    """Speech -> text with one speech-recognition model.

    - ``__init__(model, *, device, local_files_only)``: ``model`` is a hub id or a local
      directory; a model the transcriber cannot run raises a
      :class:`~multiturbo.errors.MultiturboError` naming the model and the fix;
    - :attr:`sample_rate`: the rate (Hz) :meth:`transcribe` takes its samples at;
    - :attr:`model_id`: identifies the model in the transcript cache (a resolved local path or
      the hub id): two transcribers with the same id give the same text;
    - :meth:`transcribe`: B mono waveforms (float32 [T_i] at :attr:`sample_rate`) -> B strings
      (the empty string when nothing was recognised).
    """

    default: ClassVar[bool] = False
    sample_rate: ClassVar[int] = 16000
    model_id: str = ""

    def __init__(self, model: str, *, device: str = "cpu", local_files_only: bool = False):
        self.model_id = str(model)

    def transcribe(self, audio: Sequence[np.ndarray]) -> list[str]:
        raise NotImplementedError
