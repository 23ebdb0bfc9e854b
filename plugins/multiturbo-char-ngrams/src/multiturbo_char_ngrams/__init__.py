"""``char_ngrams``: a text encoder from hashed character n-grams (an example multiturbo plugin).

Raw input: a str.

    collate:  B texts -> " text " lower-cased -> character n-grams -> crc32 hash buckets 1..buckets
              -> {"ids": [B, L] long (0 = padding), "mask": [B, L] bool}
    forward:  embedding [B, L, dim] -> masked mean over valid n-grams [B, dim]
              -> dropout, linear, GELU, dropout -> [B, dim]

An item's vector depends only on its own n-grams (masked mean, no batch statistics), and the
dropout stays on in training, so Turbo's K passes give K different views.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from multiturbo import DataError, Encoder, EncoderOptions, hookimpl
from multiturbo.pooling import masked_mean

__all__ = ["CharNgramEncoder", "CharNgramOptions", "register_encoders"]


class CharNgramOptions(EncoderOptions):  # extra="forbid": a misspelt option is a config error
    n: int = Field(3, ge=1, le=8, description="n-gram length, in characters.")
    buckets: int = Field(4096, ge=16, description="Hash buckets (rows of the embedding table).")
    dim: int = Field(64, ge=1, description="Embedding and output size.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout in the MLP (Turbo's views come from it).")
    max_ngrams: int = Field(256, ge=1, description="Longer texts are cut to this many n-grams.")


class CharNgramEncoder(Encoder):
    """Hashed character n-grams -> embedding -> masked mean -> MLP."""

    Options = CharNgramOptions

    def __init__(self, options: CharNgramOptions):
        super().__init__(options)
        self.output_dim = options.dim  # the engine sizes the projection from it
        self.embed = nn.Embedding(options.buckets + 1, options.dim, padding_idx=0)
        self.mlp = nn.Sequential(
            nn.Dropout(options.dropout), nn.Linear(options.dim, options.dim), nn.GELU(), nn.Dropout(options.dropout)
        )

    def ngram_ids(self, text: str) -> list[int]:
        """The hash bucket (1..buckets) of every character n-gram of a text."""
        o, padded = self.options, f" {text.lower()} "
        grams = [padded[i : i + o.n] for i in range(max(1, len(padded) - o.n + 1))][: o.max_ngrams]
        return [1 + zlib.crc32(g.encode("utf-8")) % o.buckets for g in grams]

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B texts -> {"ids": [B, L], "mask": [B, L]}, zero-padded to the longest item."""
        if not raw:
            raise DataError("The char_ngrams encoder got an empty batch.")
        for i, text in enumerate(raw):
            if not isinstance(text, str):
                raise DataError(f"The char_ngrams encoder expects str inputs; item {i} of the batch is a {type(text).__name__}.")
        ids = [self.ngram_ids(text) for text in raw]
        batch = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = torch.tensor(row)
        return {"ids": batch, "mask": batch != 0}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """{"ids": [B, L], "mask": [B, L]} -> [B, dim]."""
        x = self.embed(batch["ids"])  # [B, L, dim]
        return self.mlp(masked_mean(x, batch["mask"][..., None], dim=1))  # [B, dim]


@hookimpl
def register_encoders(register) -> None:
    register("char_ngrams", CharNgramEncoder)
