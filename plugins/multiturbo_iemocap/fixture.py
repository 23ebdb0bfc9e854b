"""A miniature IEMOCAP release with the official layout, for tests and for trying the pipeline.

``write_mini_iemocap(root)`` writes, per session N::

    SessionN/dialog/EmoEvaluation/<dialog>.txt      (the real format, with C-E/A-E annotator lines)
    SessionN/dialog/transcriptions/<dialog>.txt
    SessionN/sentences/wav/<dialog>/<utterance>.wav (short 16 kHz sines, pitch by label)

Each dialog has ``utterances_per_dialog`` turns alternating female / male speakers; turn j
has label ``LABEL_CYCLE[j % 7]`` (neu, hap, ang, sad, exc, xxx, fru), so the merge
(exc -> hap) and the dropped labels (xxx, fru) are exercised. With the defaults
(14 turns, 2 dialogs per session) every speaker has each label twice, which gives per
session 20 kept utterances with the 4-class set: neu 4, hap 8, ang 4, sad 4, and 8 dropped.
The data carry no emotion: the audio's pitch and the transcript's words follow the label
so that a model can learn something, nothing more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

LABEL_CYCLE = ("neu", "hap", "ang", "sad", "exc", "xxx", "fru")
PITCH = {"neu": 220.0, "hap": 330.0, "exc": 350.0, "ang": 440.0, "sad": 165.0, "xxx": 260.0, "fru": 390.0}
WORDS = {
    "neu": "okay I will be there at noon",
    "hap": "that is wonderful news I love it",
    "exc": "wow this is amazing let us go",
    "ang": "stop it I am sick of this",
    "sad": "I miss her so much it hurts",
    "xxx": "well I do not know really",
    "fru": "why does this never work for me",
}
VAD = {"neu": "2.5000, 2.5000, 2.5000", "hap": "4.0000, 3.5000, 3.0000", "ang": "1.5000, 4.0000, 4.0000"}


def write_mini_iemocap(
    root: str | Path,
    sessions: Iterable[int] = (1, 2),
    *,
    dialogs_per_session: int = 2,
    utterances_per_dialog: int = 14,
    seconds: float = 0.2,
    sample_rate: int = 16000,
) -> Counter[str]:
    """Write a miniature IEMOCAP release under ``root``; return the counts of the labels written."""
    root = Path(root)
    written: Counter[str] = Counter()
    t = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    for s in sessions:
        session = root / f"Session{s}"
        emo_dir, text_dir = session / "dialog" / "EmoEvaluation", session / "dialog" / "transcriptions"
        emo_dir.mkdir(parents=True, exist_ok=True)
        text_dir.mkdir(parents=True, exist_ok=True)
        for d in range(dialogs_per_session):
            # Alternate improvised and scripted dialogs, and which speaker's side the name gives.
            dialog = f"Ses0{s}{'FM'[d % 2]}_impro0{d + 1}" if d % 2 == 0 else f"Ses0{s}{'FM'[d % 2]}_script0{d}_1"
            wav_dir = session / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True, exist_ok=True)
            label_lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            text_lines = []
            turn = Counter()
            clock = 1.0
            for j in range(utterances_per_dialog):
                gender = "FM"[j % 2]
                label = LABEL_CYCLE[j % len(LABEL_CYCLE)]
                name = f"{dialog}_{gender}{turn[gender]:03d}"
                turn[gender] += 1
                start, end = clock, clock + 1.5 + 0.25 * (j % 3)
                clock = end + 0.3
                label_lines += [
                    f"[{start:.4f} - {end:.4f}]\t{name}\t{label}\t[{VAD.get(label, '3.0000, 3.0000, 3.0000')}]",
                    f"C-E1:\t{label.capitalize()};\t()",
                    "A-E1:\tval 3; act 3; dom  3;\t()",
                    "",
                ]
                text_lines.append(f"{name} [{start:08.4f}-{end:08.4f}]: {WORDS[label].capitalize()}.")
                wave = 0.3 * np.sin(2 * np.pi * PITCH[label] * (1 + 0.01 * (j % 5)) * t)
                sf.write(str(wav_dir / f"{name}.wav"), wave.astype(np.float32), sample_rate, subtype="PCM_16")
                written[label] += 1
            # An unlabelled overlap turn, as the real transcriptions have.
            text_lines.append(f"{dialog}_MXX0 [{clock:08.4f}-{clock + 0.5:08.4f}]: [LAUGHTER]")
            (emo_dir / f"{dialog}.txt").write_text("\n".join(label_lines) + "\n")
            (text_dir / f"{dialog}.txt").write_text("\n".join(text_lines) + "\n")
    return written
