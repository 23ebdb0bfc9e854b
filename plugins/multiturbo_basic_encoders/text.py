"""``hashed_transformer``: a small Transformer text encoder over hashed word tokens.

Raw input: a string. No vocabulary file and no pretrained weights: words are hashed
into ``vocab_size`` buckets with CRC-32 (stable across processes and machines, unlike
Python's salted ``hash()``).

    collate:  list of B strings -> {"tokens": [B, L] long, "mask": [B, L] bool}
              lowercase, split on non-word characters, id = 2 + crc32(word) % (vocab_size - 2);
              0 is padding, 1 stands for an empty text; at most ``max_tokens`` words (the rest is cut)
    forward:  embedding + learned positions           [B, L, dim]
              -> TransformerEncoder (pre-norm, key padding mask, dropout)   [B, L, dim]
              -> masked mean over the valid tokens    [B, dim]   (output_dim = dim)
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, model_validator
import torch.nn.functional as F
from torch import Tensor, nn

from multiturbo.encoder import Encoder, EncoderOptions
from multiturbo.errors import DataError
from multiturbo.pooling import masked_mean

from ._layers import in_onnx_export

PAD, EMPTY = 0, 1
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase and split on non-word characters: "Hello, World!" -> ["hello", "world"]."""
    return _WORD.findall(text.lower())


def hash_token(word: str, vocab_size: int) -> int:
    """Stable bucket of a word in [2, vocab_size)."""
    return 2 + zlib.crc32(word.encode("utf-8")) % (vocab_size - 2)


class HashedTransformerOptions(EncoderOptions):
    vocab_size: int = Field(8192, ge=3, description="Number of hash buckets (ids 0 and 1 are reserved).")
    max_tokens: int = Field(64, ge=1, description="Words after this many are cut in collate.")
    dim: int = Field(128, ge=1, description="Model width, also the output size.")
    layers: int = Field(2, ge=1, description="Number of Transformer layers.")
    heads: int = Field(4, ge=1, description="Attention heads; must divide dim.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and feed-forward.")

    @model_validator(mode="after")
    def _check(self) -> "HashedTransformerOptions":
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


class HashedTransformer(Encoder):
    """Hashed word embeddings + small Transformer encoder + masked mean pooling."""

    Options = HashedTransformerOptions

    def __init__(self, options: HashedTransformerOptions):
        super().__init__(options)
        o = options
        self.output_dim = o.dim
        self.embed = nn.Embedding(o.vocab_size, o.dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(o.max_tokens, o.dim) * 0.02)
        self.dropout = nn.Dropout(o.dropout)
        layer = nn.TransformerEncoderLayer(
            o.dim, o.heads, 4 * o.dim, o.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, o.layers, norm=nn.LayerNorm(o.dim), enable_nested_tensor=False)

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B strings -> {"tokens": [B, L] long, "mask": [B, L] bool}, L = longest text (<= max_tokens)."""
        if len(raw) == 0:
            raise DataError("The hashed_transformer encoder got an empty batch. Pass at least one text.")
        ids = []
        for i, text in enumerate(raw):
            if not isinstance(text, str):
                raise DataError(
                    f"The hashed_transformer encoder expects a string for every item, but item {i} of the batch is "
                    f"a {type(text).__name__}. Make the data set return the transcript as text (decode bytes, join "
                    f"token lists with spaces), or pick an encoder for this kind of input."
                )
            words = tokenize(text)[: self.options.max_tokens]
            ids.append([hash_token(w, self.options.vocab_size) for w in words] or [EMPTY])
        length = max(len(x) for x in ids)
        tokens = torch.full((len(ids), length), PAD, dtype=torch.long)
        for i, x in enumerate(ids):
            tokens[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        return {"tokens": tokens, "mask": tokens != PAD}

    def _encoder_for_export(self, x: Tensor, mask: Tensor) -> Tensor:
        """self.encoder in eval mode (dropout off) with the same weights, written with reshapes that
        keep the batch and length dynamic in an ONNX export: x [B, L, dim], mask [B, L] -> [B, L, dim]."""
        heads = self.options.heads
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))[:, None, None, :]  # [B, 1, 1, L]
        for layer in self.encoder.layers:  # norm_first: x + SA(LN(x)), then x + FF(LN(x))
            attn = layer.self_attn
            q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # [B, L, dim] each
            q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, L, dim/H]
            w = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias  # [B, H, L, L]
            a = (w.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)  # [B, L, dim]
            x = x + attn.out_proj(a)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        return self.encoder.norm(x)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """{"tokens": [B, L], "mask": [B, L]} -> [B, dim]."""
        tokens, mask = batch["tokens"], batch["mask"].bool()
        x = self.embed(tokens) + self.position[: tokens.shape[1]]  # [B, L, dim]
        if in_onnx_export():  # nn.MultiheadAttention's traced reshapes fix the length: spell it out
            x = self._encoder_for_export(x, mask)
        else:
            x = self.encoder(self.dropout(x), src_key_padding_mask=~mask)  # [B, L, dim]
        return masked_mean(x, mask[..., None], dim=1)  # [B, dim]
