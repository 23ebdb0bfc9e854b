"""Audio reading and resampling."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from multiturbo.audio import Waveform, load_audio, resample, to_rate
from multiturbo.errors import DataError


def test_stereo_is_mixed_down_and_rate_kept(tmp_path):
    path = tmp_path / "a.wav"
    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.1)], axis=1)
    sf.write(path, stereo, 8000)
    w = load_audio(path)
    assert w.sample_rate == 8000 and w.samples.shape == (800,) and w.seconds == 0.1
    np.testing.assert_allclose(w.samples, 0.2, atol=1e-4)


def test_resample_keeps_a_tone_and_changes_length():
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, 8000, 16000)
    assert abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 2
    assert to_rate(Waveform(tone, 8000), 8000) is not None and len(to_rate(tone, 16000)) == 8000  # bare arrays untouched


def test_missing_corrupt_and_empty_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.wav does not exist"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00not audio at all")
    with pytest.raises(DataError, match="bad.wav cannot be read"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 8000)
    with pytest.raises(DataError, match="empty.wav has no samples"):
        load_audio(empty)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24")])
@pytest.mark.parametrize("channels", [1, 2])
def test_files_read_as_libsndfile_converts_them(tmp_path, fmt, subtype, channels):
    """16-bit PCM is read as int16 and scaled here (faster): the samples are bit for bit those of
    sf.read(dtype="float32"), mixed down as before; other subtypes are read by libsndfile (FLAC has
    no float subtype)."""
    rng = np.random.default_rng(channels)
    x = np.clip(rng.standard_normal((3000, channels)) * 0.4, -1, 1)
    x[:3] = [[-1.0] * channels, [32767 / 32768] * channels, [1 / 32768] * channels]  # the extremes and the smallest step
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 16000, subtype=subtype, format=fmt)
    reference, rate = sf.read(path, dtype="float32", always_2d=True)
    w = load_audio(path)
    assert w.sample_rate == rate == 16000 and w.samples.dtype == np.float32
    np.testing.assert_array_equal(w.samples, reference.mean(axis=1))


def test_audio_problems_names_each_bad_file_and_reports_progress_on_long_checks(tmp_path, monkeypatch, capsys):
    import multiturbo.audio as audio

    good, empty, junk = tmp_path / "good.wav", tmp_path / "empty.wav", tmp_path / "junk.wav"
    sf.write(good, np.zeros(800, dtype=np.float32), 8000, subtype="PCM_16")
    sf.write(empty, np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")
    junk.write_bytes(b"not audio at all")
    clock = iter(range(0, 1000, 3))  # every reading of the clock 3 s later: a line every other file
    monkeypatch.setattr(audio.time, "monotonic", lambda: float(next(clock)))
    bad = audio.audio_problems([good, empty, good, junk], "m.csv")
    assert set(bad) == {1, 3} and "no samples" in bad[1] and "cannot be read" in bad[3]
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("multiturbo: checking the audio files of m.csv: ") for line in lines)
    assert lines[-1].split(": ")[2].startswith("4 of 4")


@pytest.mark.parametrize("frames", [1, 2, 3001])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_plain_16_bit_wav_is_read_without_libsndfile_bit_for_bit(tmp_path, frames, channels):
    """Plain 16-bit PCM WAV files are parsed without libsndfile (odd lengths, any channel count, from
    a path or from bytes): the float32 samples are those of sf.read, bit for bit."""
    from multiturbo.audio import _read_pcm16_wav

    rng = np.random.default_rng(frames + channels)
    x = rng.integers(-32768, 32768, (frames, channels)).astype(np.int16)
    x[0] = -32768
    path = tmp_path / "a.wav"
    sf.write(path, x, 22050, subtype="PCM_16")
    reference, rate = sf.read(path, dtype="float32", always_2d=True)
    for source in (path, path.read_bytes()):
        fast = _read_pcm16_wav(source)
        assert fast is not None and fast[1] == rate == 22050 and fast[0].dtype == np.float32
        np.testing.assert_array_equal(fast[0], reference)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_24"), ("WAV", "FLOAT"), ("WAV", "PCM_U8"), ("FLAC", "PCM_16"), ("WAVEX", "PCM_16")])
def test_other_formats_and_damaged_wav_files_are_left_to_libsndfile(tmp_path, fmt, subtype):
    """Anything but a 16-bit PCM WAV file (other widths, float, FLAC) goes to libsndfile; a 16-bit
    PCM WAV file with an extensible header is parsed here. Either way: the same samples as sf.read."""
    from multiturbo.audio import _read_pcm16_wav

    x = np.random.default_rng(0).uniform(-1, 1, (1001, 2))
    path = tmp_path / "a.wav"
    sf.write(path, x, 16000, subtype=subtype, format=fmt)
    reference, _ = sf.read(path, dtype="float32", always_2d=True)
    fast = _read_pcm16_wav(path)
    if subtype == "PCM_16" and fmt in ("WAV", "WAVEX"):
        assert fast is not None
        np.testing.assert_array_equal(fast[0], reference)
    else:
        assert fast is None
    np.testing.assert_array_equal(load_audio(path).samples, reference.mean(axis=1))


def _chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)


def test_wav_chunks_around_the_samples_are_skipped_and_a_data_chunk_before_its_format_is_left_to_libsndfile(tmp_path):
    """A RIFF file may hold other chunks (LIST, fact...; odd-sized ones padded to even) before and
    after the samples: the parser skips them and gives sf.read's values. A data chunk before the fmt
    chunk is not for the parser: libsndfile decides."""
    from multiturbo.audio import _read_pcm16_wav

    pcm = np.array([[0, 1], [-32768, 32767], [1234, -1234]], dtype="<i2")
    fmt = _chunk(b"fmt ", struct.pack("<HHIIHH", 1, 2, 8000, 8000 * 4, 4, 16))
    data = _chunk(b"data", pcm.tobytes())

    def riff(*chunks: bytes) -> bytes:
        body = b"WAVE" + b"".join(chunks)
        return b"RIFF" + struct.pack("<I", len(body)) + body

    path = tmp_path / "a.wav"
    path.write_bytes(riff(_chunk(b"LIST", b"abc"), fmt, _chunk(b"fact", b"12345"), data, _chunk(b"id3 ", b"x")))
    reference, rate = sf.read(path, dtype="float32", always_2d=True)
    fast = _read_pcm16_wav(path)
    assert fast is not None and fast[1] == rate == 8000
    np.testing.assert_array_equal(fast[0], reference)
    np.testing.assert_array_equal(fast[0], pcm / 32768)
    assert _read_pcm16_wav(riff(data, fmt)) is None


def test_a_truncated_16_bit_wav_is_read_as_libsndfile_reads_it(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.random.default_rng(1).uniform(-1, 1, 2000), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-501])  # the data chunk is shorter than its header says (and odd)
    from multiturbo.audio import _read_pcm16_wav

    assert _read_pcm16_wav(path) is None
    reference, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(load_audio(path).samples, reference[:, 0])
