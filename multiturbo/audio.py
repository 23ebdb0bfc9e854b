"""Audio input shared by data sets and encoders: read with soundfile, mono, resample with soxr.

Data sets hand audio to encoders as :class:`Waveform` (samples and their rate) or as a bare
1-D array already at the encoder's rate; encoders call :func:`to_rate` to get the rate they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def load_audio(path: str | Path) -> Waveform:
    """Read an audio file as mono float32 (channels averaged); a clear DataError names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Audio file {path} does not exist. Check the path (relative paths are resolved against the data set's root or manifest).")
    try:
        samples, rate = _read_float32(path)  # [T, C]
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad files
        raise DataError(f"Audio file {path} cannot be read ({type(exc).__name__}: {exc}). Replace it with a valid WAV/FLAC/OGG file or remove the item.") from None
    if samples.shape[0] == 0:
        raise DataError(f"Audio file {path} has no samples. Remove the item or replace the file.")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)  # one channel: its samples, as the mean of one value is
    return Waveform(mono, int(rate))


_INT16_SCALE = np.float32(1 / 32768)  # libsndfile's 16-bit PCM -> float normalisation (exact: a power of two)


def _read_float32(path: Path) -> tuple[np.ndarray, int]:
    """The samples [T, C] as float32 in [-1, 1) and the rate, as ``sf.read(dtype="float32")`` gives
    them. 16-bit PCM (the usual WAV / FLAC of speech) is read as int16 and scaled here: the same
    values (x / 32768 is exact in float32), about 3x faster than libsndfile's own conversion."""
    with sf.SoundFile(str(path)) as f:
        if f.subtype == "PCM_16":
            samples = f.read(dtype="int16", always_2d=True).astype(np.float32)
            samples *= _INT16_SCALE
        else:
            samples = f.read(dtype="float32", always_2d=True)
        return samples, f.samplerate


def audio_problem(path: str | Path) -> str | None:
    """What is wrong with an existing audio file, or None; cheap (the header, and for WAV the chunk
    sizes), decoding the samples only of float files (the only ones that can hold NaN / inf)."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError / RuntimeError / TypeError
        return f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    if info.frames <= 0:
        return "has no samples"
    truncated = _wav_truncated(Path(path))
    if truncated:
        return truncated
    if info.subtype in ("FLOAT", "DOUBLE"):
        try:
            samples, _ = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001
            return f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        bad = ~np.isfinite(samples).all(axis=1)
        if bad.any():
            return f"holds non-finite samples (NaN or inf), {int(bad.sum())} of {len(bad)}, the first at sample {int(np.argmax(bad))}"
    return None


def _wav_truncated(path: Path) -> str | None:
    """For a RIFF/WAVE file: a message when its data chunk is shorter than its header announces."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
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


def audio_seconds(path: str | Path) -> float:
    """An audio file's duration from its header (soundfile.info: no samples decoded)."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError for missing or bad files
        raise DataError(f"Audio file {path} cannot be read ({type(exc).__name__}: {exc}). Replace it with a valid WAV/FLAC/OGG file or remove the item.") from None
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
