"""Audio input shared by data sets and encoders: read with soundfile, mono, resample with soxr.

Data sets hand audio to encoders as :class:`Waveform` (samples and their rate) or as a bare
1-D array already at the encoder's rate; encoders call :func:`to_rate` to get the rate they need.
A source is a file path, or the bytes of an audio file (a Hugging Face data set's embedded audio);
``name`` says in errors where bytes came from.
"""

from __future__ import annotations

import io
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

from .errors import DataError


@dataclass(frozen=True)
class Waveform:
    """Mono samples [T] (float32) and their sample rate in Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


AudioSource = Union[str, Path, bytes]  # a file path, or an audio file's bytes


def in_memory(source: AudioSource) -> bool:
    """Whether ``source`` is an audio file's bytes (not a path)."""
    return isinstance(source, (bytes, bytearray, memoryview))


def _soundfile_arg(source: AudioSource) -> str | BinaryIO:
    """What soundfile reads: the path as a str, or the bytes as a file object."""
    return io.BytesIO(source) if in_memory(source) else str(source)


def load_audio(source: AudioSource, name: str | None = None) -> Waveform:
    """Read an audio file (a path, or its bytes) as mono float32 (channels averaged); a clear
    DataError names a bad file (``name``: what to call bytes in errors, e.g. a data set's row)."""
    if in_memory(source):
        what = f"The audio of {name}" if name else "Audio bytes"
    else:
        source = Path(source)
        what = f"Audio file {source}"
    try:
        samples, rate = _read_float32(source)  # [T, C]
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad files
        if not in_memory(source) and not source.is_file():  # checked only here: one stat call less per file read
            raise DataError(f"{what} does not exist. Check the path (relative paths are resolved against the data set's root or manifest).") from None
        raise DataError(f"{what} cannot be read ({type(exc).__name__}: {exc}). Replace it with a valid WAV/FLAC/OGG file or remove the item.") from None
    if samples.shape[0] == 0:
        raise DataError(f"{what} has no samples. Remove the item or replace the file.")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)  # one channel: its samples, as the mean of one value is
    return Waveform(mono, int(rate))


_INT16_SCALE = np.float32(1 / 32768)  # libsndfile's 16-bit PCM -> float normalisation (exact: a power of two)


def _read_float32(source: AudioSource) -> tuple[np.ndarray, int]:
    """The samples [T, C] as float32 in [-1, 1) and the rate, as ``sf.read(dtype="float32")`` gives
    them. 16-bit PCM (the usual WAV / FLAC of speech) is read as int16 and scaled here: the same
    values (x / 32768 is exact in float32), about 3x faster than libsndfile's own conversion; a plain
    16-bit PCM WAV file skips libsndfile altogether (:func:`_read_pcm16_wav`)."""
    plain = _read_pcm16_wav(source)
    if plain is not None:
        return plain
    with sf.SoundFile(_soundfile_arg(source)) as f:
        if f.subtype == "PCM_16":
            return _scaled(f.read(dtype="int16", always_2d=True)), f.samplerate
        return f.read(dtype="float32", always_2d=True), f.samplerate


def _scaled(pcm16: np.ndarray) -> np.ndarray:
    """16-bit PCM samples as float32 in [-1, 1), as libsndfile converts them (x / 32768)."""
    samples = pcm16.astype(np.float32)
    samples *= _INT16_SCALE
    return samples


_WAVE_FORMAT_PCM, _WAVE_FORMAT_EXTENSIBLE = 1, 0xFFFE
_KSDATAFORMAT_SUBTYPE_PCM = bytes.fromhex("0100000000001000800000aa00389b71")  # the extensible header's PCM GUID


def _read_pcm16_wav(source: AudioSource) -> tuple[np.ndarray, int] | None:
    """A plain 16-bit PCM WAV file (a path, or its bytes) read in one piece and parsed here (the RIFF
    chunks: ``fmt `` then ``data``): its samples [T, C] as float32 and its rate, the values libsndfile
    gives, in about half its time per file (no libsndfile handle to open, no ``wave`` module
    objects). None for anything else (not RIFF/WAVE, another format or sample width, no samples, a
    data chunk that is not the size its header announces): libsndfile reads those, and reports the
    bad ones."""
    try:
        if in_memory(source):
            data = bytes(source)
        else:
            with open(source, "rb") as f:
                data = f.read()
    except OSError:
        return None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, (size,) = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk == b"fmt ":
            fmt = _pcm16_format(data, body, size)
            if fmt is None:
                return None
        elif chunk == b"data":
            if fmt is None or body + size > len(data):  # no format yet, or truncated: libsndfile's way
                return None
            channels, rate = fmt
            frames = size // (2 * channels)
            if frames == 0:
                return None
            return _scaled(np.frombuffer(data, dtype="<i2", count=frames * channels, offset=body).reshape(frames, channels)), rate
        pos = body + size + (size & 1)  # chunks are padded to an even size
    return None


def _pcm16_format(data: bytes, body: int, size: int) -> tuple[int, int] | None:
    """(channels, rate) of a ``fmt `` chunk at ``body`` that describes 16-bit integer PCM (plain, or
    WAVE_FORMAT_EXTENSIBLE with the PCM subtype and 16 valid bits); None for any other format."""
    if size < 16 or body + size > len(data):
        return None
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if size < 40:
            return None
        (valid,) = struct.unpack_from("<H", data, body + 18)
        if valid != 16 or data[body + 24:body + 40] != _KSDATAFORMAT_SUBTYPE_PCM:
            return None
    elif tag != _WAVE_FORMAT_PCM:
        return None
    if bits != 16 or channels < 1 or rate < 1:
        return None
    return channels, rate


def audio_problem(source: AudioSource) -> str | None:
    """What is wrong with an existing audio file (a path, or its bytes), or None; cheap (the header,
    and for WAV the chunk sizes), decoding the samples only of float files (the only ones that can
    hold NaN / inf)."""
    try:
        info = sf.info(_soundfile_arg(source))
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError / RuntimeError / TypeError
        return f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    if info.frames <= 0:
        return "has no samples"
    truncated = _wav_truncated(source)
    if truncated:
        return truncated
    if info.subtype in ("FLOAT", "DOUBLE"):
        try:
            samples, _ = sf.read(_soundfile_arg(source), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001
            return f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        bad = ~np.isfinite(samples).all(axis=1)
        if bad.any():
            return f"holds non-finite samples (NaN or inf), {int(bad.sum())} of {len(bad)}, the first at sample {int(np.argmax(bad))}"
    return None


def audio_problems(files: Sequence[AudioSource], what: str) -> dict[int, str]:
    """index -> :func:`audio_problem` for every file of ``files`` that has one; a long check says how
    far it got on stderr every 5 s (``what`` names the data, e.g. the manifest's path)."""
    bad: dict[int, str] = {}
    start = shown = time.monotonic()
    for i, file in enumerate(files):
        problem = audio_problem(file)
        if problem:
            bad[i] = problem
        if time.monotonic() - shown > 5:
            shown = time.monotonic()
            print(f"multiturbo: checking the audio files of {what}: {i + 1} of {len(files)} ({shown - start:.0f} s)", file=sys.stderr, flush=True)
    return bad


def _wav_truncated(source: AudioSource) -> str | None:
    """For a RIFF/WAVE file (a path, or its bytes): a message when its data chunk is shorter than its
    header announces."""
    try:
        with io.BytesIO(source) if in_memory(source) else open(source, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = len(source) if in_memory(source) else Path(source).stat().st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, length = chunk[:4], int.from_bytes(chunk[4:8], "little")
                if cid == b"data":
                    available = size - f.tell()
                    if 0 < length < 0xFFFFFFFF and available < length:  # 0 / 0xFFFFFFFF: a stream's unknown length
                        return f"is truncated: its header announces {length} bytes of samples, the file holds {available}"
                    return None
                f.seek(length + (length & 1), 1)
    except OSError as exc:
        return f"cannot be read ({exc})"


def audio_seconds(source: AudioSource) -> float:
    """An audio file's duration (a path, or its bytes) from its header (soundfile.info: no samples decoded)."""
    try:
        info = sf.info(_soundfile_arg(source))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError for missing or bad files
        what = "Audio bytes" if in_memory(source) else f"Audio file {source}"
        raise DataError(f"{what} cannot be read ({type(exc).__name__}: {exc}). Replace it with a valid WAV/FLAC/OGG file or remove the item.") from None
    return info.frames / info.samplerate if info.samplerate else 0.0


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono samples [T] with soxr (high quality); a no-op when the rates agree."""
    if from_rate == to_rate:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(np.asarray(samples, dtype=np.float32), from_rate, to_rate).astype(np.float32, copy=False)


def to_rate(audio: "Waveform | np.ndarray", rate: int) -> np.ndarray:
    """Samples [T] at ``rate``: a Waveform is resampled, a bare array is taken as already at ``rate``."""
    if isinstance(audio, Waveform):
        return resample(audio.samples, audio.sample_rate, rate)
    return np.asarray(audio, dtype=np.float32)
