"""Contract tests of the built-in small encoders (logmel_cnn, hashed_transformer, small_cnn)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from multiturbo.encoder import Encoder
from multiturbo.errors import DataError
from multiturbo_basic_encoders import HashedTransformer, LogMelCNN, SmallCNN
from multiturbo_basic_encoders.audio import mel_filterbank
from multiturbo_basic_encoders.text import hash_token, tokenize

RNG = np.random.default_rng(0)

# Small options so the tests run in a blink; every encoder is built as Cls(Cls.Options(**options)).
CASES = {
    "logmel_cnn": (
        LogMelCNN,
        {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 32, "channels": 8, "output_dim": 24},
        # a short item and a longer one (lengths not multiples of the hop)
        (RNG.standard_normal(1203).astype(np.float32), torch.randn(4001)),
    ),
    "hashed_transformer": (
        HashedTransformer,
        {"vocab_size": 512, "dim": 32, "layers": 2, "heads": 4},
        ("Hello, world!", "a much longer sentence that needs a lot more padding around the short one"),
    ),
    "small_cnn": (
        SmallCNN,
        {"image_size": 16, "width": 8, "output_dim": 24},
        (RNG.integers(0, 256, (16, 16), dtype=np.uint8), RNG.random((20, 12, 3)).astype(np.float32)),
    ),
}


def build(name: str, **overrides) -> Encoder:
    cls, options, _ = CASES[name]
    torch.manual_seed(0)
    return cls(cls.Options(**{**options, **overrides}))


def short_and_long(name: str) -> tuple:
    return CASES[name][2]


@pytest.mark.parametrize("name", CASES)
def test_output_shape_and_batch_dims(name):
    enc = build(name)
    short, long = short_and_long(name)
    batch = enc.collate([short, long, short])
    assert all(t.shape[0] == 3 for t in batch.values())
    out = enc(batch)
    assert out.shape == (3, enc.output_dim)
    assert torch.isfinite(out).all()
    out.sum().backward()  # gradients flow
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("name", CASES)
def test_item_vector_does_not_depend_on_its_batch(name):
    """Padding an item (or putting it beside others) does not change its pooled vector."""
    enc = build(name).eval()
    short, long = short_and_long(name)
    with torch.no_grad():
        alone = enc(enc.collate([short]))[0]
        in_batch = enc(enc.collate([long, short, long]))[1]
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_dropout_on_in_training_off_in_eval(name):
    enc = build(name)
    batch = enc.collate(list(short_and_long(name)))
    enc.train()
    assert not torch.allclose(enc(batch), enc(batch))
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(batch), enc(batch))


@pytest.mark.parametrize("name", CASES)
def test_repeating_the_batch_gives_independent_dropout_views(name):
    """The engine repeats a batch K times along dim 0: in eval the copies agree, in training they differ."""
    enc = build(name)
    batch = enc.collate(list(short_and_long(name)))
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    enc.eval()
    with torch.no_grad():
        out = enc(doubled)
    torch.testing.assert_close(out[:2], out[2:], atol=1e-5, rtol=1e-5)
    enc.train()
    out = enc(doubled)
    assert not torch.allclose(out[:2], out[2:])


@pytest.mark.parametrize("name", CASES)
def test_options_reject_unknown_keys(name):
    cls = CASES[name][0]
    with pytest.raises(pydantic.ValidationError, match="not_an_option"):
        cls.Options(not_an_option=1)


@pytest.mark.parametrize("name", CASES)
def test_defaults_build(name):
    cls = CASES[name][0]
    enc = cls(cls.Options())
    assert isinstance(enc, Encoder) and enc.output_dim > 0


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("logmel_cnn", "not audio", "expects a 1-D waveform"),
        ("logmel_cnn", np.zeros(0, dtype=np.float32), "empty waveform"),
        ("logmel_cnn", np.zeros((2, 100), dtype=np.float32), "mono"),
        ("logmel_cnn", np.full(100, np.nan, dtype=np.float32), "NaN"),
        ("hashed_transformer", 42, "expects a string"),
        ("hashed_transformer", b"bytes", "expects a string"),
        ("small_cnn", [[0, 1], [1, 0]], "expects an image"),
        ("small_cnn", np.zeros((8, 8, 2), dtype=np.float32), "channels"),
        ("small_cnn", np.zeros(8, dtype=np.float32), r"\[H, W\]"),
    ],
)
def test_bad_inputs_raise_data_error(name, bad, match):
    enc = build(name)
    good = short_and_long(name)[0]
    with pytest.raises(DataError, match=match):
        enc.collate([good, bad])


@pytest.mark.parametrize("name", CASES)
def test_empty_batch_is_an_error(name):
    with pytest.raises(DataError, match="empty batch"):
        build(name).collate([])


# -- logmel_cnn specifics ---------------------------------------------------------------


def test_logmel_cuts_long_waveforms_and_pads_short_ones():
    enc = build("logmel_cnn", max_seconds=0.25)  # 2000 samples at 8 kHz
    batch = enc.collate([np.ones(5000, dtype=np.float32), np.ones(300, dtype=np.float32)])
    assert batch["waveform"].shape == (2, 2000)
    assert batch["lengths"].tolist() == [2000, 300]
    assert batch["waveform"][1, 300:].abs().sum() == 0


def test_logmel_accepts_channel_axis_of_one_and_very_short_waveforms():
    enc = build("logmel_cnn").eval()
    batch = enc.collate([np.zeros((1, 500), dtype=np.float32), np.zeros(3, dtype=np.float32)])
    assert batch["lengths"].tolist() == [500, 3]
    assert torch.isfinite(enc(batch)).all()


def test_mel_filterbank_is_triangular_and_covers_every_band():
    fb = mel_filterbank(n_freqs=129, n_mels=32, sample_rate=8000)
    assert fb.shape == (129, 32)
    assert (fb >= 0).all() and (fb <= 1).all()
    assert (fb.sum(0) > 0).all()  # no empty band
    assert (fb.argmax(0).diff() >= 0).all()  # centres rise with the band index


# -- hashed_transformer specifics -------------------------------------------------------


def test_tokenize_and_stable_hash():
    assert tokenize("Hello, World! it's 2x") == ["hello", "world", "it", "s", "2x"]
    # CRC-32 is fixed, unlike Python's salted hash(): this value must never change.
    assert hash_token("hello", 1000) == 2 + 907060870 % 998
    assert all(2 <= hash_token(w, 10) < 10 for w in ["a", "b", "zebra", "émigré"])


def test_text_collate_lowercases_caps_and_handles_empty_strings():
    enc = build("hashed_transformer", max_tokens=4)
    batch = enc.collate(["One two THREE four five six", "", "one"])
    assert batch["tokens"].shape == (3, 4)
    assert batch["mask"].sum(1).tolist() == [4, 1, 1]
    assert batch["tokens"][0, 0] == batch["tokens"][2, 0]  # "One" == "one"
    assert batch["tokens"][1, 0] == 1  # the empty-text token
    assert torch.isfinite(enc.eval()(batch)).all()


def test_text_options_check_heads_divide_dim():
    with pytest.raises(pydantic.ValidationError, match="must divide"):
        HashedTransformer.Options(dim=30, heads=4)


# -- small_cnn specifics ----------------------------------------------------------------


def test_image_collate_converts_scales_and_resizes():
    enc = build("small_cnn", channels=3)
    batch = enc.collate([np.full((16, 16), 255, dtype=np.uint8), np.ones((32, 8, 3), dtype=np.float32)])
    image = batch["image"]
    assert image.shape == (2, 3, 16, 16) and image.dtype == torch.float32
    # uint8 255 and float 1.0 are the same pixel value; grayscale is repeated on every channel.
    torch.testing.assert_close(image[0], image[1])
    opts = enc.options
    torch.testing.assert_close(image[0], torch.full((3, 16, 16), (1.0 - opts.mean) / opts.std))


def test_logmel_cnn_resamples_a_loaded_waveform():
    import numpy as np

    from multiturbo.audio import Waveform
    from multiturbo_basic_encoders import LogMelCNN

    enc = LogMelCNN(LogMelCNN.Options(sample_rate=8000))
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)  # 1 s at 16 kHz
    batch = enc.collate([Waveform(tone, 16000), tone[:8000]])
    assert batch["lengths"].tolist() == [8000, 8000]  # resampled to 8 kHz; the bare array is taken as 8 kHz


def test_channel_norm_equals_layer_norm_over_the_channels():
    from multiturbo_basic_encoders._layers import ChannelNorm

    torch.manual_seed(0)
    norm = ChannelNorm(8)
    with torch.no_grad():
        norm.norm.weight.normal_()
        norm.norm.bias.normal_()
    x = torch.randn(3, 8, 5, 7) * 4 + 2
    expected = norm.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # nn.LayerNorm over C at every position
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert list(dict(norm.named_parameters())) == ["norm.weight", "norm.bias"]  # saved weights keep their names


def test_a_forward_does_not_import_torch_onnx():
    """The encoders ask whether an ONNX export is running without importing torch.onnx (about 0.1 s
    of CPU in every DataLoader worker of an inference pass); test_export covers the export itself."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, torch\n"
        "from multiturbo_basic_encoders import HashedTransformer, LogMelCNN\n"
        "a = LogMelCNN(LogMelCNN.Options(sample_rate=8000)).eval()\n"
        "t = HashedTransformer(HashedTransformer.Options()).eval()\n"
        "a(a.collate([np.zeros(800, np.float32)])); t(t.collate(['hello there']))\n"
        "assert 'torch.onnx' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_logmel_stft_in_groups_of_items_gives_the_batch_values(monkeypatch):
    """On the CPU the STFT runs on a few items at a time (STFT_CHUNK_SAMPLES): the log-mel of one STFT
    over the whole batch up to float rounding, for any grouping (one item per group, groups of 3)."""
    import multiturbo_basic_encoders.audio as audio

    enc = build("logmel_cnn").eval()
    rng = np.random.default_rng(0)
    batch = enc.collate([rng.standard_normal(n).astype(np.float32) for n in (4000, 3999, 2500, 1200, 1201, 777, 300)])
    whole = {}
    for chunk in (1 << 40, 1, 3 * 4000):  # the whole batch, one item per group, 3 items per group
        monkeypatch.setattr(audio, "STFT_CHUNK_SAMPLES", chunk)
        with torch.no_grad():
            whole[chunk] = enc.log_mel(batch["waveform"], batch["lengths"])[0]
    torch.testing.assert_close(whole[1], whole[1 << 40], rtol=1e-5, atol=1e-5)  # standardised values of order 1; the mel matmul may sum in another order
    torch.testing.assert_close(whole[3 * 4000], whole[1 << 40], rtol=1e-5, atol=1e-5)


def test_logmel_pads_batches_to_a_ladder_of_frame_counts():
    """A batch is padded to a frame count on the ladder (multiples of 8 frames, FRAME_LADDER_STEPS
    rungs per octave), never below its longest item nor above max_seconds: batches of nearby lengths
    share one shape, and the padding adds at most 7 frames or 1/FRAME_LADDER_STEPS of them."""
    from multiturbo_basic_encoders.audio import FRAME_LADDER_STEPS

    enc = build("logmel_cnn", sample_rate=8000, hop_length=128, n_fft=256, max_seconds=10.0)
    widths = {}
    for longest in range(1, 80_001, 13):
        width = enc.padded_width(longest)
        frames, padded = longest // 128 + 1, width // 128 + 1
        assert longest <= width <= max(longest, 80_000)
        if width < 80_000:
            assert padded % 8 == 0 and padded - frames <= max(7, frames / FRAME_LADDER_STEPS)
        widths.setdefault(padded, []).append(longest)
    assert len(widths) < 80  # 6,154 lengths, a few dozen shapes
    batch = enc.collate([np.ones(36_000, dtype=np.float32), np.ones(500, dtype=np.float32)])
    assert batch["waveform"].shape == (2, enc.padded_width(36_000)) and batch["lengths"].tolist() == [36_000, 500]
    assert batch["waveform"][0, 36_000:].abs().sum() == 0
    assert enc.max_input_seconds() == 10.0 and build("hashed_transformer").max_input_seconds() is None
