"""``logmel_cnn``: a small log-mel CNN audio encoder, trained from scratch.

Raw input: a 1-D float waveform (numpy array or tensor) at ``sample_rate``.

    collate:  list of B waveforms -> {"waveform": [B, T] float, "lengths": [B] long}
    forward:  waveform [B, T]
              -> |STFT|^2 @ mel filterbank, log           [B, n_mels, F]   (F frames)
              -> per-item standardisation over valid frames
              -> 3 conv blocks (stride 2), channel LayerNorm, GELU, dropout, masked
                                                          [B, 2*channels, n_mels/8, F/8]
              -> mean over frequency, masked mean over valid frames   [B, 2*channels]
              -> dropout, linear                          [B, output_dim]

Padding never changes an item's vector: the STFT is centred with zero padding (so a
frame only sees the item's samples or zeros), padded frames are zeroed after every
block (so 'same' convolutions see zeros there, as they would at the item's own end),
the normalisation is per position or per item over valid frames only, and the pooling
is a masked mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
import torch.nn.functional as F
from torch import Tensor, nn

from multiturbo.audio import Waveform, to_rate
from multiturbo.encoder import Encoder, EncoderOptions
from multiturbo.errors import DataError
from multiturbo.pooling import masked_mean

from ._layers import ChannelNorm, as_float_array, in_onnx_export


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular HTK-style mel filters: [n_freqs, n_mels], n_freqs = n_fft // 2 + 1."""
    f_max = sample_rate / 2 if f_max is None else f_max

    def hz_to_mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: Tensor) -> Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)  # [n_freqs]
    lo, hi = hz_to_mel(torch.tensor(f_min, dtype=torch.float64)), hz_to_mel(torch.tensor(f_max, dtype=torch.float64))
    mels = torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)  # [n_mels + 2]: left, centre, right of each triangle
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - left) / (centre - left)  # [n_freqs, n_mels]
    down = (right - freqs[:, None]) / (right - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


# On the CPU the STFT runs on groups of items of about this many (padded) samples, so that their
# frames, spectrum and power stay in the cache instead of streaming through memory: measured with
# the demo's 8 kHz encoder on IEMOCAP-like lengths in batches of 32, 0.20 -> 0.155 ms of CPU per
# item (STFT, power, mel), the same values.
STFT_CHUNK_SAMPLES = 1 << 17

# Batches are padded to a frame count on a ladder of this many rungs per octave (LogMelCNN.padded_width).
FRAME_LADDER_STEPS = 32


class LogMelCNNOptions(EncoderOptions):
    sample_rate: int = Field(16000, gt=0, description="Sample rate (Hz) of the input waveforms.")
    n_fft: int = Field(400, ge=16, description="STFT window and FFT size, in samples (400 = 25 ms at 16 kHz).")
    hop_length: int = Field(160, ge=1, description="STFT hop, in samples (160 = 10 ms at 16 kHz).")
    n_mels: int = Field(64, ge=8, description="Number of mel bands.")
    channels: int = Field(32, ge=1, description="Width of the first conv block (the next ones use 2x).")
    output_dim: int = Field(128, ge=1, description="Size of the pooled output vector.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout in the conv blocks and before the output layer.")
    max_seconds: float = Field(10.0, gt=0.0, description="Longer waveforms are cut to this length in collate.")

    @model_validator(mode="after")
    def _check(self) -> "LogMelCNNOptions":
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        return self


def _conv_block(c_in: int, c_out: int, dropout: float) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "conv": nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1),
            "norm": ChannelNorm(c_out),
            "act": nn.GELU(),
            "drop": nn.Dropout(dropout),
        }
    )


class LogMelCNN(Encoder):
    """Log-mel spectrogram + small 2-D CNN + masked mean pooling over frames."""

    Options = LogMelCNNOptions

    def __init__(self, options: LogMelCNNOptions):
        super().__init__(options)
        o = options
        self.output_dim = o.output_dim
        self.input_sample_rate = o.sample_rate  # Waveforms are resampled to it (train.audio_cache stores them so)
        self.max_samples = max(1, int(round(o.max_seconds * o.sample_rate)))
        self.register_buffer("window", torch.hann_window(o.n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(o.n_fft // 2 + 1, o.n_mels, o.sample_rate), persistent=False)
        widths = [1, o.channels, 2 * o.channels, 2 * o.channels]
        self.blocks = nn.ModuleList(_conv_block(a, b, o.dropout) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(o.dropout)
        self.out = nn.Linear(widths[-1], o.output_dim)

    def max_input_seconds(self) -> float:
        """Waveforms are cut to ``max_seconds`` in collate (see Encoder.max_input_seconds)."""
        return self.options.max_seconds

    # -- preprocessing -------------------------------------------------------------

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B waveforms -> {"waveform": [B, T] float32 zero-padded, "lengths": [B] long}.

        Items are multiturbo.audio.Waveform (resampled to ``sample_rate``) or 1-D arrays taken as
        already at ``sample_rate``. Waveforms longer than ``max_seconds`` are cut to it.
        """
        if len(raw) == 0:
            raise DataError("The logmel_cnn encoder got an empty batch. Pass at least one waveform.")
        waves = []
        for i, item in enumerate(raw):
            if isinstance(item, Waveform):  # a loaded file at its own rate -> this encoder's rate
                item = to_rate(item, self.options.sample_rate)
            w = as_float_array(item, what="a 1-D waveform", encoder="logmel_cnn")
            if w.dim() == 2 and 1 in w.shape:  # [1, T] or [T, 1]: a mono waveform with a channel axis
                w = w.reshape(-1)
            if w.dim() != 1:
                raise DataError(
                    f"The logmel_cnn encoder expects 1-D mono waveforms, but item {i} of the batch has shape "
                    f"{tuple(w.shape)}. Mix multi-channel audio down to mono (e.g. average the channels) in the "
                    f"data set's loader."
                )
            if w.numel() == 0:
                raise DataError(
                    f"The logmel_cnn encoder got an empty waveform (item {i} of the batch). Drop empty recordings "
                    f"from the data set, or check that the audio files were read correctly."
                )
            if not np.isfinite(w.numpy()).all():  # numpy's check: ~8x faster than torch.isfinite on one thread
                raise DataError(
                    f"The logmel_cnn encoder got a waveform with NaN or infinite samples (item {i} of the batch). "
                    f"Check the audio file or the loader that produced it."
                )
            waves.append(w[: self.max_samples])
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        batch = torch.zeros(len(waves), self.padded_width(int(lengths.max())), dtype=torch.float32)
        for i, w in enumerate(waves):
            batch[i, : w.numel()] = w
        return {"waveform": batch, "lengths": lengths}

    def padded_width(self, longest: int) -> int:
        """The width in samples of a batch whose longest waveform has ``longest`` samples: at least
        ``longest``, with its STFT frame count rounded up to a ladder of FRAME_LADDER_STEPS steps per
        octave (multiples of 8 frames at least, the conv blocks' total stride), at most ``max_seconds``.

        Padding never changes an item's vector, and the ladder adds at most 7 frames or
        1/FRAME_LADDER_STEPS of them (about 1.5% on average on IEMOCAP-like lengths); in exchange,
        batches of nearby lengths share their conv shapes, and the CPU's convolution kernels, built
        per input shape, are built once per rung instead of once per batch (measured with the demo's
        encoder on IEMOCAP-like lengths in sorted batches of 32: 292 shapes -> 68, about 0.06 ms of
        CPU per item less, 15% of the encoder's forward)."""
        hop = self.options.hop_length
        frames = longest // hop + 1
        octave = 1 << (frames.bit_length() - 1)  # the power of two at or below frames
        step = max(8, octave // FRAME_LADDER_STEPS)  # the rungs of [octave, 2 x octave)
        rounded = -(-frames // step) * step
        return max(longest, min(longest + (rounded - frames) * hop, self.max_samples))

    # -- network ---------------------------------------------------------------------

    def power_dft(self, waveform: Tensor) -> Tensor:
        """|STFT|^2 of waveform [B, T] as torch.stft(center=True, zero padding) gives it, computed as a
        strided convolution with the windowed DFT basis (cos and sin rows) -> [B, n_fft/2+1, F]. Used
        in ONNX export (multiturbo export), which has no complex STFT; equal to the FFT up to rounding."""
        n_fft, hop = self.options.n_fft, self.options.hop_length
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * torch.pi * k[:, None] * n[None, :] / n_fft  # [K, n_fft]
        w = self.window.to(torch.float64)
        basis = torch.cat([torch.cos(angle) * w, -torch.sin(angle) * w]).to(waveform.dtype)[:, None, :]  # [2K, 1, n_fft]
        x = F.pad(waveform[:, None, :], (n_fft // 2, n_fft // 2))  # [B, 1, T + n_fft]
        spec = F.conv1d(x, basis.to(waveform.device), stride=hop)  # [B, 2K, F]
        re, im = spec.chunk(2, dim=1)
        return re.square() + im.square()

    def mel_power(self, waveform: Tensor) -> Tensor:
        """waveform [B, T] -> |STFT|^2 through the mel filterbank [B, n_mels, F]. On the CPU the items go
        through in groups of about STFT_CHUNK_SAMPLES samples, whose frames and spectra stay in the
        cache; an item's values are the same whichever group it is in."""
        o = self.options
        if in_onnx_export():  # ONNX has no complex STFT: the same power spectrum as real convolutions
            return torch.einsum("bkf,km->bmf", self.power_dft(waveform), self.mel)
        step = max(1, STFT_CHUNK_SAMPLES // waveform.shape[1]) if waveform.device.type == "cpu" else len(waveform)
        parts = []
        for chunk in waveform.split(step):
            spec = torch.stft(
                chunk, o.n_fft, o.hop_length, window=self.window, center=True, pad_mode="constant", return_complex=True
            )  # [b, n_fft/2+1, F]; frame f covers samples f*hop -/+ n_fft/2, zeros outside the signal
            parts.append(torch.einsum("bkf,km->bmf", spec.real.square() + spec.imag.square(), self.mel))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def log_mel(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waveform [B, T] -> (standardised log-mel [B, n_mels, F], valid-frame mask [B, F])."""
        o = self.options
        logmel = torch.log(self.mel_power(waveform) + 1e-6)  # [B, n_mels, F]
        frames = lengths // o.hop_length + 1  # frames whose centre lies inside the item
        mask = torch.arange(logmel.shape[-1], device=logmel.device)[None, :] < frames[:, None]  # [B, F]
        m = mask[:, None, :]
        mean = masked_mean(logmel, m, dim=(1, 2))[:, None, None]
        std = masked_mean((logmel - mean).square(), m, dim=(1, 2)).add(1e-5).sqrt()[:, None, None]
        return ((logmel - mean) / std) * m, mask

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """{"waveform": [B, T], "lengths": [B]} -> [B, output_dim]."""
        x, mask = self.log_mel(batch["waveform"], batch["lengths"].to(batch["waveform"].device))
        x = x[:, None]  # [B, 1, n_mels, F]
        frames = mask.sum(-1)  # [B]
        for block in self.blocks:
            x = block["drop"](block["act"](block["norm"](block["conv"](x))))
            frames = (frames + 1) // 2  # conv k=3, s=2, p=1: ceil(F / 2) output frames
            mask = torch.arange(x.shape[-1], device=x.device)[None, :] < frames[:, None]  # [B, F']
            x = x.mul_(mask[:, None, None, :])  # zero the padded frames before the next conv sees them (in place: no block saves its output for backward)
        pooled = masked_mean(x.mean(dim=2), mask[:, None, :], dim=-1)  # [B, C]
        return self.out(self.dropout(pooled))
