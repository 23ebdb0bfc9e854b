"""The ``iemocap`` data set: IEMOCAP read from the official release layout.

IEMOCAP is licensed; users bring their own copy and point ``root`` at the directory
that holds ``Session1`` ... ``Session5``. Per session the loader reads::

    SessionN/dialog/EmoEvaluation/<dialog>.txt     labels:  [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5, 2.5, 2.5]
    SessionN/dialog/transcriptions/<dialog>.txt    text:    Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
    SessionN/sentences/wav/<dialog>/<utterance>.wav

Labels: ``merge`` (default ``{"exc": "hap"}``) renames labels first, then utterances whose
label is not in ``classes`` (default neu, hap, ang, sad) are dropped and counted in
``dropped``. The full release gives 5,531 utterances (hap 1,636, neu 1,708, ang 1,103,
sad 1,084).

Speakers: ``Ses01F`` is session 1's female speaker. An utterance's speaker is its
session prefix plus the first letter of the last ``_`` part of its name, so
``Ses01F_impro01_M012`` is spoken by ``Ses01M``. Speakers are ordered Ses01F, Ses01M,
Ses02F, ... Ses05M.

Protocols (``num_folds`` folds, ``splits(fold)``, fold 0 by default):

- ``speaker10`` (the paper's): fold f tests speaker f, validates on speaker
  (f + 1) % n and trains on the others (n = 10 speakers: 8 train / 1 val / 1 test).
- ``session5`` (leave one session out): fold s tests both speakers of session s,
  validates on the female speaker of the next session (cyclically) and trains on the
  rest (3 sessions + the male speaker of the next session).

With a subset of sessions (option ``sessions``), folds run over the speakers (or
sessions) present: n = 2 x len(sessions) speakers, and fold f is the f-th present
speaker in the order above; a fold beyond them is an error.

Every check that can fail (missing session, transcription file, wav directory or wav
file, an utterance without a transcript) fails when the data set is built, so no error
waits for the middle of training. Audio is read lazily in ``__getitem__`` (in the
DataLoader's workers) with :func:`multiturbo.audio.load_audio`. ``meta`` holds
``utterance``, ``speaker``, ``session``, ``gender``, ``dialog``, ``emotion`` (the label
before merging), ``start`` and ``end`` (seconds).
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Sequence
from functools import partial
from operator import attrgetter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from multiturbo.audio import audio_problems, audio_seconds, load_audio
from multiturbo.dataset import Dataset, DatasetOptions, LazySplit, Sample, Splits
from multiturbo.errors import DataError
from multiturbo.hookspecs import Register, hookimpl

from .fixture import write_mini_iemocap

__all__ = ["IemocapDataset", "IemocapOptions", "iemocap_split", "speaker_of", "write_mini_iemocap"]

# [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
LABEL_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[")
# Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
TEXT_LINE = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s?(.*)$")
SHOW_MAX = 5  # how many missing files an error lists


def speaker_of(utterance: str) -> str:
    """``Ses01F_impro01_M012`` -> ``Ses01M``: session prefix + gender letter of the last ``_`` part."""
    return utterance[:5] + utterance.rsplit("_", 1)[-1][:1]


class IemocapOptions(DatasetOptions):
    root: Path = Field(description="Directory holding Session1 ... Session5 of the IEMOCAP release.")
    protocol: Literal["speaker10", "session5"] = Field(
        "speaker10", description="Folds by speaker (paper, 10 folds) or leave-one-session-out (5 folds)."
    )
    classes: list[str] = Field(
        default_factory=lambda: ["neu", "hap", "ang", "sad"], min_length=2, description="Labels kept, in label order."
    )
    merge: dict[str, str] = Field(
        default_factory=lambda: {"exc": "hap"}, description="Labels renamed before filtering (exc -> hap by default)."
    )
    modalities: list[Literal["audio", "text"]] = Field(
        default_factory=lambda: ["audio", "text"], min_length=1, description="Inputs per item."
    )
    sessions: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5], min_length=1, description="Sessions to read (a subset: fewer folds)."
    )
    bad_items: Literal["error", "drop"] = Field(
        "error", description="error: utterances whose wav file is missing or unusable (cannot be read, no samples, "
        "truncated, NaN / inf) or whose transcript is empty stop the run with one message naming each file; drop: they "
        "are left out, named in run.json (dropped_items) and counted in a warning.")

    @field_validator("classes", "modalities", "sessions")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat a value, got {v}")
        return v

    @field_validator("sessions")
    @classmethod
    def _session_numbers(cls, v: list[int]) -> list[int]:
        if any(not 1 <= s <= 5 for s in v):
            raise ValueError(f"IEMOCAP has sessions 1 to 5, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _merge_targets(self) -> "IemocapOptions":
        bad = {k: t for k, t in self.merge.items() if t not in self.classes}
        if bad:
            raise ValueError(f"merge maps labels to classes that are not in `classes` {self.classes}: {bad}")
        return self


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance, everything but its audio."""

    wav: Path
    text: str
    label: int
    meta: dict[str, Any]


def _load_utterance(modalities: tuple[str, ...], u: "Utterance") -> Sample:
    """The sample of one utterance: audio read from its wav file, text its transcript."""
    return Sample(inputs={m: load_audio(u.wav) if m == "audio" else u.text for m in modalities}, label=u.label, meta=u.meta)


def _utterance_lengths(modalities: tuple[str, ...], u: "Utterance") -> dict[str, float]:
    """An utterance's audio seconds (from the wav header) and transcript words."""
    return {m: audio_seconds(u.wav) if m == "audio" else float(len(u.text.split())) for m in modalities}


def iemocap_split(items: Sequence["Utterance"], modalities: Sequence[str]) -> LazySplit:
    """A lazy split of utterances: audio is read on access, labels and meta are known up front."""
    return LazySplit(items, partial(_load_utterance, tuple(modalities)), attrgetter("label"), attrgetter("meta"),
                     partial(_utterance_lengths, tuple(modalities)))


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"Cannot read IEMOCAP file {path} ({exc}). Check its permissions.") from None


def _listing(paths: Sequence[Any], total: int) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOW_MAX])
    return shown + (f" ... ({total} in all)" if total > SHOW_MAX else f" ({total} in all)")


class IemocapDataset(Dataset):
    """IEMOCAP emotion classification (audio + text) with speaker or session folds (see the module docstring)."""

    Options = IemocapOptions

    group_key = "speaker"  # folds keep a speaker in one split

    def __init__(self, options: IemocapOptions, *, seed: int = 0):
        super().__init__(options, seed=seed)
        self.classes = list(options.classes)
        self.modalities = tuple(options.modalities)
        self.dropped: Counter[str] = Counter()  # labels (as written) of the utterances left out
        self.utterances: list[Utterance] = self._scan()
        self.counts: Counter[str] = Counter(self.classes[u.label] for u in self.utterances)
        self.speakers: list[str] = [f"Ses0{s}{g}" for s in options.sessions for g in "FM"]
        if options.protocol == "speaker10":
            self.num_folds = len(self.speakers)
            needed, what = 3, "speakers"
        else:
            self.num_folds = len(options.sessions)
            needed, what = 2, "sessions"
        if self.num_folds < needed:
            raise DataError(
                f"The IEMOCAP protocol {options.protocol!r} needs at least {needed} {what} (train, validation and "
                f"test must be disjoint), but `sessions` is {options.sessions}. Add sessions."
            )
        self._cache: dict[int, Splits] = {}

    # -- reading the release ------------------------------------------------------------------
    def _scan(self) -> list[Utterance]:
        o = self.options
        root = Path(o.root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"The IEMOCAP root {root} does not exist or is not a directory. Set the data set option `root` "
                f"to the directory that holds Session1 ... Session5 of your IEMOCAP copy."
            )
        need_text, need_audio = "text" in o.modalities, "audio" in o.modalities
        merge, keep = o.merge, {c: i for i, c in enumerate(self.classes)}
        out: list[Utterance] = []
        missing_wavs: set[Path] = set()
        for s in o.sessions:
            session = root / f"Session{s}"
            if not session.is_dir():
                present = sorted(p.name for p in root.glob("Session*") if p.is_dir())
                raise DataError(
                    f"The IEMOCAP session directory {session} does not exist (found: {present or 'none'}). "
                    f"Restore it, or set the option `sessions` to the sessions you have."
                )
            emo_dir = session / "dialog" / "EmoEvaluation"
            label_files = sorted(p for p in emo_dir.glob("*.txt") if not p.name.startswith("."))
            if not label_files:
                raise DataError(
                    f"No label files {emo_dir}/*.txt in IEMOCAP session {s}. Check that {root} is an unpacked "
                    f"IEMOCAP release (SessionN/dialog/EmoEvaluation/*.txt)."
                )
            for label_file in label_files:
                dialog = label_file.stem
                texts: dict[str, str] = {}
                if need_text:
                    text_file = session / "dialog" / "transcriptions" / f"{dialog}.txt"
                    if not text_file.is_file():
                        raise DataError(
                            f"The IEMOCAP label file {label_file} has no matching transcription file {text_file}. "
                            f"Restore the file, or drop the text modality (option `modalities`)."
                        )
                    for line in _read(text_file):
                        m = TEXT_LINE.match(line.strip())
                        if m:
                            texts[m.group(1)] = m.group(2).strip()
                wav_dir = session / "sentences" / "wav" / dialog
                if need_audio and not wav_dir.is_dir():
                    raise DataError(
                        f"The IEMOCAP label file {label_file} has no matching wav directory {wav_dir}. "
                        f"Restore the directory, or drop the audio modality (option `modalities`)."
                    )
                for line in _read(label_file):
                    m = LABEL_LINE.match(line.strip())
                    if not m:
                        continue
                    start, end, name, emotion = m.groups()
                    label = merge.get(emotion, emotion)
                    if label not in keep:
                        self.dropped[emotion] += 1
                        continue
                    if need_text and name not in texts:
                        raise DataError(
                            f"The IEMOCAP utterance {name} has a label in {label_file} but no transcript line in "
                            f"{session / 'dialog' / 'transcriptions' / f'{dialog}.txt'}. Restore the line, or drop "
                            f"the text modality (option `modalities`)."
                        )
                    wav = wav_dir / f"{name}.wav"
                    if need_audio and not wav.is_file():
                        missing_wavs.add(wav)
                    speaker = speaker_of(name)
                    meta = {
                        "utterance": name,
                        "speaker": speaker,
                        "session": s,
                        "gender": speaker[-1],
                        "dialog": dialog,
                        "emotion": emotion,
                        "start": float(start),
                        "end": float(end),
                    }
                    out.append(Utterance(wav=wav, text=texts.get(name, ""), label=keep[label], meta=meta))
        out = self._usable(out, missing_wavs)
        if not out:
            raise DataError(
                f"No IEMOCAP utterance under {root} has a label in `classes` {self.classes} (after merge "
                f"{dict(merge)}); labels seen: {dict(self.dropped)}. Check `classes` and `merge`."
            )
        out.sort(key=lambda u: u.meta["utterance"])
        return out

    def _usable(self, utterances: list[Utterance], missing_wavs: set[Path]) -> list[Utterance]:
        """The utterances whose inputs can be used: every wav file and transcript checked up front
        (:func:`multiturbo.audio.audio_problems`, by file); the others are one DataError naming each, or,
        with ``bad_items: drop``, left out and named in ``self.dropped_items``."""
        need_text, need_audio = "text" in self.modalities, "audio" in self.modalities
        problems: dict[int, str] = {}
        if need_audio:
            present = [i for i, u in enumerate(utterances) if u.wav not in missing_wavs]
            bad = audio_problems([utterances[i].wav for i in present], f"IEMOCAP under {self.options.root}")
            problems.update({present[k]: f"{utterances[present[k]].wav} {p}" for k, p in bad.items()})
            problems.update({i: f"{u.wav} does not exist" for i, u in enumerate(utterances) if u.wav in missing_wavs})
        if need_text:
            for i, u in enumerate(utterances):
                if not u.text.strip():
                    problems.setdefault(i, f"{u.meta['utterance']} has an empty transcript")
        if not problems:
            return utterances
        listed = [problems[i] for i in sorted(problems)]
        if self.options.bad_items == "error":
            raise DataError(
                f"{len(listed)} labelled IEMOCAP utterance(s) cannot be used: {_listing(listed, len(listed))}. Restore the "
                f"files from your IEMOCAP copy, set `bad_items: drop` in data.options to leave them out (counted in "
                f"run.json), or drop the modality (option `modalities`)."
            )
        self.dropped_items = listed
        return [u for i, u in enumerate(utterances) if i not in problems]

    # -- folds -------------------------------------------------------------------------------
    def fold_speakers(self, fold: int) -> tuple[list[str], list[str], list[str]]:
        """(train, val, test) speaker lists of ``fold``."""
        o, asked = self.options, fold
        try:
            fold = operator.index(fold)
        except TypeError:
            fold = -1  # reported below
        if not 0 <= fold < self.num_folds:
            units = self.speakers if o.protocol == "speaker10" else [f"Session{s}" for s in o.sessions]
            raise DataError(
                f"IEMOCAP fold {asked!r} does not exist: protocol {o.protocol!r} with sessions {o.sessions} has "
                f"{self.num_folds} folds (0 to {self.num_folds - 1}; fold f tests {units[0]}, {units[1]}, ... in "
                f"this order). Ask for a fold in range, or add sessions."
            )
        if o.protocol == "speaker10":
            n = len(self.speakers)
            test, val = [self.speakers[fold]], [self.speakers[(fold + 1) % n]]
        else:
            sessions = o.sessions
            s, nxt = sessions[fold], sessions[(fold + 1) % len(sessions)]
            test, val = [f"Ses0{s}F", f"Ses0{s}M"], [f"Ses0{nxt}F"]
        train = [sp for sp in self.speakers if sp not in test and sp not in val]
        return train, val, test

    def splits(self, fold: int | None = None) -> Splits:
        """Train / validation / test of ``fold`` (default 0), speaker-disjoint; cached per fold."""
        fold = 0 if fold is None else fold
        train, val, test = self.fold_speakers(fold)
        fold = operator.index(fold)
        if fold not in self._cache:
            parts = []
            for speakers in (train, val, test):
                chosen = set(speakers)
                parts.append(iemocap_split([u for u in self.utterances if u.meta["speaker"] in chosen], self.modalities))
            for name, part, speakers in zip(("train", "validation", "test"), parts, (train, val, test)):
                if len(part) == 0:
                    raise DataError(
                        f"IEMOCAP fold {fold}: the {name} split (speakers {speakers}) has no utterance with a label "
                        f"in {self.classes}. Check the data under {self.options.root}."
                    )
            self._cache[fold] = Splits(train=parts[0], val=parts[1], test=parts[2])
        return self._cache[fold]


@hookimpl
def register_datasets(register: Register) -> None:
    register("iemocap", IemocapDataset)
