"""``hf_audio`` (wav2vec2, HuBERT, WavLM) and ``hf_whisper`` (the Whisper encoder).

Raw input: a :class:`multiturbo.audio.Waveform` (resampled to the feature extractor's rate) or
a bare 1-D float array already at that rate. Items longer than ``max_seconds`` are cut; the
encoder counts them (``cut_items``, over its lifetime) and warns once per batch that had cuts.

hf_audio
    collate:  B waveforms -> the feature extractor on EACH ITEM ALONE (its normalisation to zero
              mean and unit variance over the item's own samples), zero padding to the longest
              -> {"input_values": [B, T], "attention_mask": [B, T]}
    forward:  AutoModel(input_values, attention_mask) -> last_hidden_state [B, F, hidden]; the
              valid frames of each item come from its sample count through the model's conv
              arithmetic (``_get_feat_extract_output_lengths``) -> pooling over valid frames
              [B, hidden]

    The model always gets the sample mask, so padded frames are masked out of its Transformer.
    Models whose first conv layer uses GroupNorm over time (``feat_extract_norm="group"``:
    wav2vec2-base, HuBERT-base, WavLM-base) would otherwise normalise over the padded length:
    for them that first layer runs per item on the item's own samples (the padded tail of its
    output is zeros), and the later conv layers, which are local and unnormalised, run batched;
    each valid output frame sees only the item's samples. With both, an item's vector is the
    vector the model computes for the item alone, whatever the batch around it (tested, for
    "group" and "layer" models). Cost: one small conv call per item; measured on the tiny
    wav2vec2 "group" model with the real 7-layer conv stack (benchmarks/bench_encoders.py) it
    is within the noise of the batched call (see docs/encoders.md).

    train.frozen_features: cache: the frozen part cached per item is the conv stack's output
    (freeze: feature_encoder), or with freeze_layers: N (N >= 1) the hidden state after layer N: the
    model's own forward on the item alone with its layer list cut to N (``first_layers``), and the K
    passes run layers N+1..L with the model's attention mask (``HiddenStates.above``). For wav2vec2,
    HuBERT and WavLM only (LAYER_CACHE_TYPES; WavLM's layers above N get the relative position bias
    that its first layer computes, ``_wavlm_layer_call``; SEW and the conformer put more between their
    layers) and not with layers: weighted: the others cache the conv stack, and say why
    (describe_frozen_part).
    SpecAugment acts after the feature projection, below layer 1, so with layers cached it is lost
    like their dropout (frozen_part_dropout: with the opt-in; without it the conv stack alone is cached,
    exact_frozen_part).

    Training-time noise besides dropout comes with the model's config and is kept: SpecAugment
    (``mask_time_prob``, drawn per item) and LayerDrop (``layerdrop``, drawn once per forward,
    so the K repeated copies of a batch share it; set ``layerdrop`` to 0 in the saved config
    if the views should differ by dropout only).

hf_whisper
    collate:  B waveforms -> WhisperFeatureExtractor PER ITEM without padding to 30 s
              (log-mel, its clamp at max - 8 dB computed over the item's own frames)
              -> zero-pad the mel frames to the longest item, rounded up to an even count
              -> {"input_features": [B, n_mels, F], "frame_mask": [B, F]}
    forward:  conv1 + GELU, padded frames zeroed -> conv2 (stride 2) + GELU
              -> + embed_positions.weight[:F/2] -> the encoder layers with a key padding mask
              -> final LayerNorm -> pooling over valid frames [B, hidden]

    Whisper was trained on 30 s windows (3000 mel frames, 1500 positions) and transformers'
    WhisperEncoder.forward refuses any other length. We run its modules ourselves on the
    frames we have and slice the positional table to them (positions 0..F/2-1, the ones a
    short utterance padded to 30 s would get). This is not bit-identical to the 30 s padded encoder (there the valid frames
    also attend to the padding, which the model saw in training), but it is padding-invariant and
    much faster: attention is quadratic in frames and everything else linear. Measured here
    (CPU, 2 threads, eval, no grad; 3 s utterances, so 300 frames instead of 3000):

        config                                 batch   unpadded   padded to 30 s   speed-up
        tiny (d_model 32, 2 layers)              1      3.1 ms      16.2 ms          5x
        tiny                                     8      6.3 ms      83.5 ms         13x
        whisper-tiny size (384, 4 layers)        1     28.0 ms     318.7 ms         11x
        whisper-tiny size                        8    174.5 ms    3182.3 ms         18x

    On a full 30 s item the result equals transformers' WhisperEncoder (tested).

    train.frozen_features: cache: the frozen part cached per item is conv1/conv2's output (freeze:
    feature_encoder), or with freeze_layers: N (N >= 1) the state after layer N (positions and layers
    1..N too); the K passes run the rest (_above).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from multiturbo.audio import to_rate
from multiturbo.encoder import Encoder
from multiturbo.errors import ConfigError, DataError

from . import assets
from ._common import (
    WEIGHTED_NOT_CACHED, HFOptions, HiddenStates, LayerCall, LayeredEncoder, bidirectional_mask, enable_gradient_checkpointing, first_layers,
    freeze, load, load_config, noisy_config_keys, pad_items, pool, run_layers, valid_mask, warn_cut,
)

# model types whose first layers can be cached with freeze_layers (layers called as layer(hidden_states, attention_mask),
# a plain bidirectional mask, nothing between the layers but the layers; WavLM's also take a position bias)
LAYER_CACHE_TYPES = ("wav2vec2", "hubert", "wavlm")


def _noise_below_layers(config: Any) -> list[str]:
    """The config keys of the wav2vec2 family that put training-time noise at or below a transformer layer
    (dropout after the feature projection, after the positional conv and in the layers; LayerDrop; SpecAugment,
    which masks the projected features before the positional conv), among those set non-zero."""
    spec = ("mask_time_prob", "mask_feature_prob") if getattr(config, "apply_spec_augment", True) else ()
    return noisy_config_keys(config, ("feat_proj_dropout", "hidden_dropout", "attention_dropout", "activation_dropout", "layerdrop", *spec))


class HFAudioOptions(HFOptions):
    max_seconds: float = Field(15.0, gt=0.0, description="Longer audio is cut to this length in collate.")


def _waveform(item: Any, i: int, rate: int, encoder: str) -> np.ndarray:
    """One raw item -> float32 [T] at ``rate``, or a DataError naming the item."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    try:
        w = to_rate(item, rate)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"The {encoder} encoder expects a Waveform or a 1-D float array for every item, but item {i} of the "
            f"batch is a {type(item).__name__} ({exc})."
        ) from None
    if w.ndim == 2 and 1 in w.shape:
        w = w.reshape(-1)
    if w.ndim != 1:
        raise DataError(
            f"The {encoder} encoder expects 1-D mono audio, but item {i} of the batch has shape {w.shape}. "
            f"Mix it down to mono in the data set's loader."
        )
    if w.size == 0:
        raise DataError(f"The {encoder} encoder got empty audio (item {i} of the batch). Drop empty recordings.")
    if not np.isfinite(w).all():
        raise DataError(f"The {encoder} encoder got audio with NaN or infinite samples (item {i} of the batch).")
    return w


class _AudioBase(LayeredEncoder, Encoder):
    Options = HFAudioOptions
    name = "hf_audio"

    cached_layers: int  # with freeze_layers: N, the frozen part cached ends after layer N (0: after the conv front end)
    frozen_part_dropout: bool
    _conv_note: str  # what the conv-only cache keeps and what the K passes run (describe_frozen_part)

    def __init__(self, options: HFAudioOptions):
        super().__init__(options)
        if options.pooling == "cls":
            raise ConfigError(["pooling: 'cls' is not defined for audio models (they have no class token); use 'mean' or 'last'."])
        self.cut_items = 0  # items cut to max_seconds, over this encoder's lifetime

    def exact_frozen_part(self) -> bool:
        """With freeze_layers: N and dropout, LayerDrop or SpecAugment at or below layer N: cache the conv front
        end only (no dropout acts there, so results equal recomputing), saying so. The core calls this without
        ``train.frozen_part_dropout: eval``; True when done."""
        if not self.frozen_part_dropout:
            return False
        n, self.cached_layers, self.frozen_part_dropout = self.cached_layers, 0, False
        self._part_note = (f"{self._conv_note} (not the first {n} layers of freeze_layers: dropout acts in them, which one cached "
                           f"pass would drop from Turbo's views; train.frozen_part_dropout: eval caches them too)")
        return True

    @property
    def input_sample_rate(self) -> int:
        """The feature extractor's rate, which Waveforms are resampled to (see Encoder.input_sample_rate)."""
        return self.rate

    def max_input_seconds(self) -> float:
        """Audio is cut to ``max_seconds`` in collate (see Encoder.max_input_seconds)."""
        return self.options.max_seconds

    def _cut(self, raw: Sequence[Any], rate: int, min_samples: int = 1) -> list[np.ndarray]:
        if len(raw) == 0:
            raise DataError(f"The {self.name} encoder got an empty batch. Pass at least one waveform.")
        limit = int(round(self.options.max_seconds * rate))
        waves = [_waveform(item, i, rate, self.name) for i, item in enumerate(raw)]
        cut = sum(len(w) > limit for w in waves)
        self.cut_items += cut
        warn_cut(self.name, cut, len(waves), f"max_seconds = {self.options.max_seconds}")
        waves = [w[:limit] for w in waves]
        if min_samples > 1:
            for i, w in enumerate(waves):
                if len(w) < min_samples:
                    raise DataError(
                        f"The {self.name} encoder needs at least {min_samples} samples ({min_samples / rate * 1000:.0f} ms) "
                        f"per item, but item {i} of the batch has {len(w)}. Drop such short recordings or pad them."
                    )
        return waves


class HFAudio(_AudioBase):
    """wav2vec2 / HuBERT / WavLM: AutoFeatureExtractor + AutoModel + pooling over valid frames."""

    export_assets = assets.export_assets  # config + preprocessor into the run directory (no weights)
    _conv_note = "the conv feature encoder's output per item; the K passes run the feature projection, SpecAugment and every layer"

    def __init__(self, options: HFAudioOptions):
        super().__init__(options)
        from transformers import AutoFeatureExtractor, AutoModel

        config = load_config("hf_audio", options)
        self.extractor = load("feature extractor", "hf_audio", options, AutoFeatureExtractor)
        self.model = load("weights", "hf_audio", options, AutoModel, config=config)
        if self.model.main_input_name != "input_values" or not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise ConfigError(
                [f"model: {options.model!r} is a {type(self.model).__name__}, not a wav2vec2-style audio model "
                 f"(wav2vec2, HuBERT, WavLM). Use hf_whisper for Whisper and hf_text for text models."]
            )
        self.rate = int(self.extractor.sampling_rate)
        self.output_dim = int(config.hidden_size)
        # feat_extract_norm="group": the first conv layer normalises over time, so it runs per item
        layers = getattr(getattr(self.model, "feature_extractor", None), "conv_layers", None)
        self.first_conv_per_item = bool(layers) and isinstance(getattr(layers[0], "layer_norm", None), nn.GroupNorm)
        # the shortest input the conv stack accepts: one output frame
        self.min_samples = 1
        while int(self.model._get_feat_extract_output_lengths(torch.tensor(self.min_samples))) < 1:
            self.min_samples *= 2
        lo, hi = self.min_samples // 2, self.min_samples
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if int(self.model._get_feat_extract_output_lengths(torch.tensor(mid))) >= 1 else (mid, hi)
        self.min_samples = hi
        fe = getattr(self.model, "feature_extractor", None)
        freeze(self.model, options.freeze, "hf_audio", [fe] if fe is not None else None)
        # stable-layer-norm models (wav2vec2-large, WavLM) put the encoder's LayerNorm after the layers
        top = ("encoder.layer_norm.",) if getattr(config, "do_stable_layer_norm", False) else ()
        self.hidden = HiddenStates(self.model, options, "hf_audio", top)
        enable_gradient_checkpointing(self.model, options, "hf_audio")
        self._final_norm = tuple(t.rstrip(".") for t in top)  # applied after the last layer
        self.cached_layers, self._part_note = self._plan_frozen_part(options, config)
        # with layers cached, dropout, LayerDrop and SpecAugment (which acts after the feature projection,
        # below layer 1) in the frozen part are lost: the core asks for the opt-in
        self.frozen_part_dropout = bool(self.cached_layers) and bool(_noise_below_layers(config))

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B waveforms -> {"input_values": [B, T] float, "attention_mask": [B, T] long}."""
        waves = self._cut(raw, self.rate, self.min_samples)
        # each item alone: the extractor's normalisation sees only the item's own samples
        values = [self.extractor(w, sampling_rate=self.rate, return_tensors="np")["input_values"][0] for w in waves]
        lengths = [len(v) for v in values]
        batch = torch.zeros(len(values), max(lengths), dtype=torch.float32)
        mask = torch.zeros(len(values), max(lengths), dtype=torch.long)
        for i, v in enumerate(values):
            batch[i, : len(v)] = torch.from_numpy(np.asarray(v, dtype=np.float32))
            mask[i, : len(v)] = 1
        return {"input_values": batch, "attention_mask": mask}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """{"input_values": [B, T], "attention_mask": [B, T]} -> [B, hidden]."""
        values, mask = batch["input_values"], batch["attention_mask"]
        lengths = mask.sum(1)  # [B] samples
        with self._first_conv_per_item(lengths):
            out = self.model(values, attention_mask=mask, output_hidden_states=self.hidden.wants_all)
        return self._pool(out.last_hidden_state, out.hidden_states, lengths)

    # -- train.frozen_features: cache. The frozen part is the conv feature encoder (freeze: feature_encoder,
    # or freeze_layers where the first N layers cannot be cached, see _plan_frozen_part), or with
    # freeze_layers: N everything up to layer N: {"conv": ...} or {"hidden": ...} items.
    def has_frozen_part(self) -> bool:
        """The conv feature encoder is frozen (freeze: feature_encoder, or freeze_layers) while layers above train."""
        fe = getattr(self.model, "feature_extractor", None)
        params = list(fe.parameters()) if fe is not None else []
        return bool(params) and not any(p.requires_grad for p in params) and any(p.requires_grad for p in self.parameters())

    def _plan_frozen_part(self, options: HFAudioOptions, config: Any) -> tuple[int, str]:
        """(N, note): the frozen part ends after layer N (0: after the conv feature encoder) and what is cached, and why."""
        n, total = options.freeze_layers or 0, self.hidden.num_layers
        conv = self._conv_note
        if n == 0:
            return 0, conv
        kind = getattr(config, "model_type", "?")
        why = (
            WEIGHTED_NOT_CACHED if options.layers == "weighted"
            else f"the first layers are cached for {' and '.join(LAYER_CACHE_TYPES)} models only (their layers take the hidden "
                 f"states and the attention mask alone), not {kind}"
            if kind not in LAYER_CACHE_TYPES
            else "the model has an adapter after its layers" if getattr(self.model, "adapter", None) is not None
            else None
        )
        if why is not None:
            return 0, f"{conv} (not the first {n} layers of freeze_layers: {why})"
        return n, (f"each item's hidden state after layer {n} of {total} (conv stack, feature projection, positional conv, "
                   f"layers 1..{n}, in eval mode); the K passes run layers {n + 1}..{total} only")

    def frozen_part(self, batch: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Each item alone through the frozen part (eval mode, no grad), unpadded: {"conv": [frames_i, channels],
        "samples": [] its sample count} (the conv feature encoder), or with freeze_layers: N {"hidden": [frames_i,
        hidden]} (the state after layer N). An item alone equals its valid frames in a padded batch (see the
        module docstring; the model zeroes padded frames before its positional conv and masks them out of
        attention), so the trainable part on these gives what forward gives."""
        values, mask = batch["input_values"], batch["attention_mask"]
        out = []
        for i, n in enumerate(mask.sum(1).tolist()):
            item = values[i : i + 1, : int(n)]  # [1, T_i]
            if self.cached_layers:
                with first_layers(self.model, self.hidden.path, self.cached_layers, self._final_norm):
                    out.append({"hidden": self.model(item, attention_mask=mask[i : i + 1, : int(n)]).last_hidden_state[0]})
            else:
                out.append({"conv": self.model.feature_extractor(item)[0].transpose(0, 1), "samples": mask[i].sum().reshape(())})
        return out

    def collate_frozen(self, items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """{"conv": [B, C, F] zero-padded to the longest item, "samples": [B] sample counts}, or
        {"hidden": [B, F, hidden] zero-padded, "frames": [B] valid frames}."""
        if "hidden" in items[0]:
            hidden, frames = pad_items(items, "hidden")
            return {"hidden": hidden, "frames": frames}
        conv, _ = pad_items(items, "conv")  # [B, F, C]
        return {"conv": conv.transpose(1, 2), "samples": torch.stack([it["samples"].long() for it in items])}

    def trainable_part(self, batch: dict[str, Tensor]) -> Tensor:
        """A :meth:`collate_frozen` batch -> [B, hidden], as :meth:`forward`: the layers above N (+ the final
        LayerNorm of stable-layer-norm models) on cached hidden states, or the model above its feature encoder
        (projection, SpecAugment, transformer) on cached conv frames."""
        if "hidden" in batch:
            x, frames = batch["hidden"], batch["frames"]
            return self._above_layer(x, valid_mask(x, frames))
        conv, lengths = batch["conv"], batch["samples"]
        mask = torch.arange(int(lengths.max()), device=conv.device)[None] < lengths[:, None]  # [B, T]
        encoder = self.model.feature_extractor
        encoder.forward = lambda input_values: conv  # an instance attribute, removed below
        try:
            out = self.model(conv.new_zeros(conv.shape[0], 1), attention_mask=mask, output_hidden_states=self.hidden.wants_all)
        finally:
            del encoder.forward
        return self._pool(out.last_hidden_state, out.hidden_states, lengths)

    def _pool(self, last: Tensor, states: Sequence[Tensor] | None, samples: Tensor) -> Tensor:
        """The model's output [B, F, hidden] (and its hidden states), [B] sample counts -> the pooling over valid frames [B, hidden]."""
        hidden = self.hidden.select(last, states)  # [B, F, hidden] (options layers, output_dropout)
        frames = self.model._get_feat_extract_output_lengths(samples).long()  # [B]
        return pool(hidden, valid_mask(hidden, frames), self.options.pooling)

    def _above_layer(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        """Hidden states after layer N [B, F, hidden] (N = cached_layers), frame mask [B, F] bool -> [B, hidden]:
        layers N+1..L with the model's own attention mask and LayerDrop, the final LayerNorm (stable-layer-norm
        models), the hidden-state choice and the pooling."""
        norm = self.model.get_submodule(self._final_norm[0]) if self._final_norm else None
        if self.model.config.model_type == "wavlm":
            mask, call = frame_mask, _wavlm_layer_call(self.model, x)  # its layers take the frame mask itself
        else:
            mask, call = bidirectional_mask(self.model, x, frame_mask), None
        hidden = self.hidden.above(self.model, x, mask, self.cached_layers, final_norm=norm,
                                   layerdrop=self.model.config.layerdrop, training=self.training, call=call)
        return pool(hidden, frame_mask, self.options.pooling)

    @contextmanager
    def _first_conv_per_item(self, lengths: Tensor) -> Iterator[None]:
        """For "group" models, let the model's feature encoder run its first layer per item while inside."""
        if not self.first_conv_per_item:
            yield
            return
        encoder = self.model.feature_extractor
        encoder.forward = partial(_conv_features_per_item, encoder.conv_layers, lengths)  # an instance attribute
        try:
            yield
        finally:
            del encoder.forward  # back to the class's forward


def _wavlm_layer_call(model: nn.Module, x: Tensor) -> LayerCall:
    """How WavLM's layers above a cached one are called on x [B, S, D]: with the [B, S] frame mask itself and
    the relative position bias [B * heads, S, S] that its first layer computes from the length alone (each
    layer returns the bias it was given, gated inside it by its own input, so it is the same for every layer)."""
    attention = model.encoder.layers[0].attention
    batch, steps = x.shape[:2]
    bias = attention.compute_bias(steps, steps).unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * attention.num_heads, steps, steps)
    return lambda layer, index, h, mask: layer(h, attention_mask=mask, position_bias=bias, index=index)[0]


def _conv_features_per_item(layers: nn.ModuleList, lengths: Tensor, input_values: Tensor) -> Tensor:
    """The wav2vec2 feature encoder, [B, T] samples -> [B, C, F] frames, with its first layer
    (conv + GroupNorm over time + activation) applied to each item's own samples only.

    The first layer's output for item i is what the item alone gives, followed by zeros; the
    remaining layers are plain strided convs, so every frame within the item's length
    (``_get_feat_extract_output_lengths``) depends only on the item's samples."""
    first = layers[0]
    x = input_values[:, None]  # [B, 1, T]
    items = [first(x[i : i + 1, :, : int(n)]) for i, n in enumerate(lengths.tolist())]  # [1, C, F0_i] each
    conv = first.conv  # the frame count the whole padded length gives, as in the batched encoder
    frames = (x.shape[-1] + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    hidden = torch.cat([nn.functional.pad(h, (0, frames - h.shape[-1])) for h in items])  # [B, C, F0]
    for layer in layers[1:]:
        hidden = layer(hidden)
    return hidden


class HFWhisperOptions(HFAudioOptions):
    max_seconds: float = Field(15.0, gt=0.0, le=30.0, description="Longer audio is cut to this length (Whisper's limit is 30 s).")


class HFWhisper(_AudioBase):
    """The Whisper encoder on unpadded log-mel frames, with a key padding mask and pooling over valid frames."""

    Options = HFWhisperOptions
    name = "hf_whisper"
    _conv_note = "the conv front end's output (conv1, conv2) per item; the K passes run the positions, dropout and every layer"

    def __init__(self, options: HFWhisperOptions):
        super().__init__(options)
        from transformers import AutoFeatureExtractor, AutoModel

        config = load_config("hf_whisper", options)
        self.extractor = load("feature extractor", "hf_whisper", options, AutoFeatureExtractor)
        model = load("weights", "hf_whisper", options, AutoModel, config=config)
        if not hasattr(model, "get_encoder") or not hasattr(model.get_encoder(), "embed_positions"):
            raise ConfigError([f"model: {options.model!r} is a {type(model).__name__}, not a Whisper model. Use hf_audio or hf_text."])
        self.model = model.get_encoder()  # the decoder is dropped
        self.rate = int(self.extractor.sampling_rate)
        self.hop = int(self.extractor.hop_length)
        self.max_frames = 2 * self.model.embed_positions.num_embeddings
        self.output_dim = int(config.d_model)
        freeze(self.model, options.freeze, "hf_whisper", [self.model.conv1, self.model.conv2])
        self.hidden = HiddenStates(self.model, options, "hf_whisper")
        enable_gradient_checkpointing(self.model, options, "hf_whisper")
        self.cached_layers, self._part_note = self._plan_frozen_part(options)
        # with layers cached, the dropout after the positions and in layers 1..N (and LayerDrop) is lost: opt-in
        self.frozen_part_dropout = bool(self.cached_layers) and bool(
            noisy_config_keys(config, ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")))

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B waveforms -> {"input_features": [B, n_mels, F] log-mel, "frame_mask": [B, F] long}, F even."""
        waves = self._cut(raw, self.rate, min_samples=self.hop)
        mels = [
            self.extractor(w, sampling_rate=self.rate, padding="longest", return_tensors="np")["input_features"][0][:, : self.max_frames]
            for w in waves
        ]  # each [n_mels, F_i], computed on the item alone
        lengths = [m.shape[1] for m in mels]
        frames = max(lengths) + max(lengths) % 2
        features = torch.zeros(len(mels), mels[0].shape[0], frames, dtype=torch.float32)
        mask = torch.zeros(len(mels), frames, dtype=torch.long)
        for i, m in enumerate(mels):
            features[i, :, : m.shape[1]] = torch.from_numpy(m)
            mask[i, : m.shape[1]] = 1
        return {"input_features": features, "frame_mask": mask}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """{"input_features": [B, n_mels, F], "frame_mask": [B, F]} -> [B, d_model]."""
        mask = batch["frame_mask"]
        return self._above_convs(self._convs(batch["input_features"], mask), (mask.sum(1) + 1) // 2)

    def _convs(self, x: Tensor, mask: Tensor) -> Tensor:
        """The conv front end: [B, n_mels, F] log-mel, [B, F] frame mask -> [B, F/2, d_model] (no dropout here)."""
        enc = self.model
        x = x * mask[:, None].to(x.dtype)
        x = nn.functional.gelu(enc.conv1(x))  # [B, D, F]
        x = x * mask[:, None].to(x.dtype)  # so conv2 sees zeros after an item's end, as at a lone item's edge
        # contiguous: dropout draws its mask in memory order, so a permuted layout would mask other elements than
        # the cached (contiguous) conv outputs get from the same random state
        return nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1).contiguous()  # [B, F/2, D]

    def _positions(self, x: Tensor) -> Tensor:
        """[B, S, D] conv output -> + the positional table's first S rows, then the encoder's dropout: [B, S, D]."""
        x = x + self.model.embed_positions.weight[: x.shape[1]]
        return nn.functional.dropout(x, p=self.model.dropout, training=self.training)

    def _above_convs(self, x: Tensor, valid_steps: Tensor) -> Tensor:
        """Positions, dropout, the transformer layers, the layer norm and the pooling: [B, S, D] conv
        output, [B] valid steps per item -> [B, d_model]."""
        return self._above(self._positions(x), valid_mask(x, valid_steps), 0)

    def _above(self, x: Tensor, step_mask: Tensor, start: int) -> Tensor:
        """The layers above layer ``start``, the final LayerNorm, the hidden-state choice and the pooling:
        [B, S, D] hidden state after layer ``start`` (0: the positions' output), [B, S] bool valid steps -> [B, d_model]."""
        enc = self.model
        hidden = self.hidden.above(enc, x, _key_padding_bias(step_mask, x.dtype), start, final_norm=enc.layer_norm,
                                   layerdrop=enc.layerdrop, training=self.training)
        return pool(hidden, step_mask, self.options.pooling)

    # -- train.frozen_features: cache. The frozen part is the conv front end (freeze: feature_encoder), or with
    # freeze_layers: N the front end, the positions and layers 1..N: {"conv": ...} or {"hidden": ...} items.
    def has_frozen_part(self) -> bool:
        """conv1 and conv2 are frozen (freeze: feature_encoder, or freeze_layers) while layers above train."""
        convs = [*self.model.conv1.parameters(), *self.model.conv2.parameters()]
        return not any(p.requires_grad for p in convs) and any(p.requires_grad for p in self.parameters())

    def _plan_frozen_part(self, options: HFWhisperOptions) -> tuple[int, str]:
        """(N, note): the frozen part ends after layer N (0: after conv2) and what is cached, and why."""
        n, total = options.freeze_layers or 0, self.hidden.num_layers
        conv = self._conv_note
        if n and options.layers == "weighted":
            return 0, f"{conv} (not the first {n} layers of freeze_layers: {WEIGHTED_NOT_CACHED})"
        if n == 0:
            return 0, conv
        return n, (f"each item's hidden state after layer {n} of {total} (conv front end, positions, layers 1..{n}, in eval "
                   f"mode); the K passes run layers {n + 1}..{total} and the final LayerNorm only")

    def frozen_part(self, batch: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Each item alone through the frozen part, unpadded: {"conv": [(F_i + 1) // 2, d_model]} (conv1/conv2), or
        with freeze_layers: N {"hidden": [(F_i + 1) // 2, d_model]} (after layer N). Alone, an item's edge is zero
        padding; in a padded batch :meth:`_convs` zeroes the frames after it and the layers mask the steps
        after it: the same values."""
        x, mask = batch["input_features"], batch["frame_mask"]
        out = []
        for i, n in enumerate(mask.sum(1).tolist()):
            conv = self._convs(x[i : i + 1, :, :n], mask[i : i + 1, :n])  # [1, S_i, D]
            if not self.cached_layers:
                out.append({"conv": conv[0]})
                continue
            h = self._positions(conv)
            bias = _key_padding_bias(torch.ones(h.shape[:2], dtype=torch.bool, device=h.device), h.dtype)
            out.append({"hidden": run_layers(self.model.layers[: self.cached_layers], h, bias)[0]})
        return out

    def collate_frozen(self, items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """{"conv" or "hidden": [B, S, d_model] zero-padded to the longest item, "steps": [B] valid steps}."""
        key = "hidden" if "hidden" in items[0] else "conv"
        padded, steps = pad_items(items, key)
        return {key: padded, "steps": steps}

    def trainable_part(self, batch: dict[str, Tensor]) -> Tensor:
        """The encoder above its frozen part on cached outputs: [B, d_model], as :meth:`forward`."""
        if "hidden" in batch:
            x = batch["hidden"]
            return self._above(x, valid_mask(x, batch["steps"]), self.cached_layers)
        return self._above_convs(batch["conv"], batch["steps"])


def _key_padding_bias(step_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, S] bool valid steps -> the additive attention bias of Whisper's layers [B, 1, S, S]: 0 for valid keys,
    the dtype's minimum for padded ones."""
    bias = torch.zeros(step_mask.shape, dtype=dtype, device=step_mask.device)
    bias = bias.masked_fill(~step_mask, torch.finfo(dtype).min)[:, None, None, :]  # [B, 1, 1, S] keys
    return bias.expand(-1, 1, step_mask.shape[1], -1)
