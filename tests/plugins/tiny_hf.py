"""Tiny Hugging Face models built from configs and saved to a directory (no hub access).

Shared by the HF encoder tests and the encoder contract test; every model loads back through an
encoder's ``model`` option exactly as a user's local directory would.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import transformers

RATE = 16000
WORDS = ["hello", "world", "the", "a", "short", "long", "sentence", "text", "is", "this", "much", "more", "padding", "one", "two"]

# wav2vec2-family tiny config. feat_extract_norm="layer" (per-frame LayerNorm, wav2vec2-large-lv60,
# WavLM); build_group_norm_models makes the "group" variant (wav2vec2-base, HuBERT-base).
CONV = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
    conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True, layerdrop=0.0,
)


def _save_audio(path: Path, config_cls, model_cls, return_attention_mask=True, **extra) -> str:
    torch.manual_seed(0)
    model_cls(config_cls(**{**CONV, **extra})).save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True, return_attention_mask=return_attention_mask
    ).save_pretrained(path)
    return str(path)


def _save_whisper(path: Path) -> str:
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=80, max_source_positions=1500, max_target_positions=32,
        vocab_size=100, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    transformers.WhisperModel(config).save_pretrained(path)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return str(path)


def save_whisper_asr(path: Path) -> str:
    """A tiny random Whisper speech recogniser (WhisperForConditionalGeneration + WhisperProcessor
    with a byte-level tokenizer of 256 symbols): it transcribes garbage, or nothing."""
    import json

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(bytes_to_unicode().values())}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    end = "<|endoftext|>"
    tok = transformers.WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), unk_token=end, bos_token=end, eos_token=end, pad_token=end)
    tok.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]})
    eos, start = tok.convert_tokens_to_ids([end, "<|startoftranscript|>"])
    config = transformers.WhisperConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=80, max_source_positions=1500, max_target_positions=32,
        vocab_size=len(tok), decoder_start_token_id=start, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
    )
    model = transformers.WhisperForConditionalGeneration(config)
    model.generation_config.update(decoder_start_token_id=start, eos_token_id=eos, pad_token_id=eos, max_length=16)
    model.save_pretrained(path)
    transformers.WhisperProcessor(feature_extractor=transformers.WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(path)
    return str(path)


def _save_bert(path: Path) -> str:
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ",", ".", "!"]
    tok = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})  # (transformers 5 ignores vocab_file=)
    assert len(tok) == len(vocab)
    tok.save_pretrained(path)
    config = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(path)
    return str(path)


def _save_gpt2(path: Path) -> str:
    """A tiny byte-level BPE trained in memory (GPT-2's tokenizer type) and a tiny GPT-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([" ".join(WORDS)] * 10, trainer)
    eos = "<|endoftext|>"
    tok = transformers.GPT2TokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos, unk_token=eos)
    assert tok.pad_token is None  # like the real GPT-2
    tok.save_pretrained(path)
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    transformers.GPT2Model(config).save_pretrained(path)
    return str(path)


# wav2vec2-base / HuBERT-base style: GroupNorm over time in the first conv layer, post-LayerNorm
# Transformer, and a feature extractor that does not ask for an attention mask.
GROUP = dict(feat_extract_norm="group", do_stable_layer_norm=False)


def build_group_norm_models(root: Path, audio_overrides: dict | None = None) -> dict[str, str]:
    """Tiny feat_extract_norm="group" wav2vec2 and HuBERT models under ``root``, by family."""
    t = transformers
    a = {**GROUP, **(audio_overrides or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "wav2vec2_group": _save_audio(root / "wav2vec2_group", t.Wav2Vec2Config, t.Wav2Vec2Model, return_attention_mask=False, **a),
            "hubert_group": _save_audio(root / "hubert_group", t.HubertConfig, t.HubertModel, return_attention_mask=False, **a),
        }


def build_tiny_models(root: Path, audio_overrides: dict | None = None) -> dict[str, str]:
    """Save every tiny model under ``root``; returns their directories by family.

    ``audio_overrides`` replace entries of CONV for the wav2vec2-family models (e.g. the real
    7-layer conv stack with 320x downsampling, for benchmarks)."""
    t = transformers
    a = audio_overrides or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "wav2vec2": _save_audio(root / "wav2vec2", t.Wav2Vec2Config, t.Wav2Vec2Model, **a),
            "hubert": _save_audio(root / "hubert", t.HubertConfig, t.HubertModel, **a),
            "wavlm": _save_audio(root / "wavlm", t.WavLMConfig, t.WavLMModel, num_buckets=16, max_bucket_distance=32, **a),
            "whisper": _save_whisper(root / "whisper"),
            "bert": _save_bert(root / "bert"),
            "gpt2": _save_gpt2(root / "gpt2"),
        }
