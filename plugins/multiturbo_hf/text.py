"""``hf_text``: a Hugging Face text encoder (BERT, RoBERTa, MiniLM, DistilBERT... and GPT-2).

Raw input: a string.

    collate:  list of B strings -> tokenizer (right padding, truncation to max_tokens; cut items
              are counted in ``cut_items`` over the encoder's lifetime, and a warning per batch
              says how many, as for audio cut to max_seconds)
              -> {"input_ids": [B, L], "attention_mask": [B, L], and "token_type_ids" [B, L] if the tokenizer makes them}
    forward:  AutoModel(**batch).last_hidden_state     [B, L, hidden]
              (layers: i -> hidden_states[i]; weighted -> softmax(w)-weighted sum of the N + 1
              hidden states; then output_dropout)
              -> pooling over valid tokens             [B, hidden]   (output_dim = hidden size)

Pooling: "mean" (masked mean; what sentence-transformers' MiniLM was trained with), "cls"
(first token; BERT-style models), "last" (last non-padding token; use it for GPT-2 and other
decoders, whose last token is the only one that has seen the whole text).

train.frozen_features: cache with freeze_layers: N (N >= 1; BERT, MiniLM, RoBERTa, XLM-R): each text's token states after layer N are computed once (the text alone, eval mode) and
the K passes run layers N+1..L under the model's own attention mask; the embeddings' and layers
1..N's dropout is then lost (the core asks for train.frozen_part_dropout: eval).

GPT-2 has no padding token: the end-of-text token is used for padding (it is masked out, so its
value does not matter). An empty string is valid: encoder tokenizers give [CLS] [SEP]; when a
tokenizer gives no token at all (GPT-2), the item gets one end-of-text token, so every item has
at least one valid position and pooling never divides by zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from multiturbo.encoder import Encoder
from multiturbo.errors import DataError

from . import assets
from ._common import (
    WEIGHTED_NOT_CACHED, HFOptions, HiddenStates, LayeredEncoder, bidirectional_mask, enable_gradient_checkpointing, first_layers,
    freeze, load, load_config, noisy_config_keys, pad_items, pool, valid_mask, warn_cut,
)

# model types whose layers are called as layer(hidden_states, attention_mask) under a bidirectional mask, with
# nothing between them (BERT and MiniLM: "bert"; RoBERTa; XLM-R, a copy of RoBERTa's code); the first N of
# them can be cached (freeze_layers: N). BERT and RoBERTa are tested.
LAYER_CACHE_TYPES = ("bert", "roberta", "xlm-roberta")


class HFTextOptions(HFOptions):
    max_tokens: int = Field(128, ge=1, description="Texts are cut to this many tokens (special tokens included).")


class HFText(LayeredEncoder, Encoder):
    """AutoTokenizer + AutoModel + pooling over valid tokens."""

    export_assets = assets.export_assets  # config + preprocessor into the run directory (no weights)

    Options = HFTextOptions

    def __init__(self, options: HFTextOptions):
        super().__init__(options)
        from transformers import AutoModel, AutoTokenizer

        config = load_config("hf_text", options)
        self.tokenizer = load("tokenizer", "hf_text", options, AutoTokenizer)
        self.model = load("weights", "hf_text", options, AutoModel, config=config)
        tok = self.tokenizer
        if tok.pad_token is None:  # GPT-2 and other decoders
            if tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            elif tok.unk_token is not None:
                tok.pad_token = tok.unk_token
            else:  # a new token: its embedding row is never used (padding is masked), but must exist
                tok.add_special_tokens({"pad_token": "<|pad|>"})
                self.model.resize_token_embeddings(len(tok))
        tok.padding_side = "right"
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = tok.pad_token_id
        # the id an empty text gets when the tokenizer makes no token for it
        self.empty_id = next(i for i in (tok.eos_token_id, tok.bos_token_id, tok.cls_token_id, tok.unk_token_id, tok.pad_token_id) if i is not None)
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_length = min(options.max_tokens, limit) if limit else options.max_tokens
        self.cut_items = 0  # texts cut to max_length tokens, over this encoder's lifetime
        self.output_dim = int(config.hidden_size)
        freeze(self.model, options.freeze, "hf_text", None)
        self.hidden = HiddenStates(self.model, options, "hf_text")
        enable_gradient_checkpointing(self.model, options, "hf_text")
        self.cached_layers, self._part_note = self._plan_frozen_part(options)
        # the embeddings' and the cached layers' dropout is lost when cached: the core asks for the opt-in
        self.frozen_part_dropout = bool(self.cached_layers) and bool(
            noisy_config_keys(config, ("hidden_dropout_prob", "attention_probs_dropout_prob")))

    def collate(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """B strings -> tokenizer output, each [B, L] (L = longest item, at most max_tokens)."""
        if len(raw) == 0:
            raise DataError("The hf_text encoder got an empty batch. Pass at least one text.")
        for i, text in enumerate(raw):
            if not isinstance(text, str):
                raise DataError(
                    f"The hf_text encoder expects a string for every item, but item {i} of the batch is a "
                    f"{type(text).__name__}. Make the data set return the transcript as text."
                )
        batch = dict(self.tokenizer(list(raw), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._count_cuts(raw, mask.sum(1))
        empty = mask.sum(1) == 0
        if empty.any():  # a tokenizer that gives no token for "" (GPT-2): one end-of-text token instead
            if ids.shape[1] == 0:
                batch = {k: torch.zeros(len(raw), 1, dtype=v.dtype) for k, v in batch.items()}
                batch["input_ids"].fill_(self.tokenizer.pad_token_id)
                ids, mask = batch["input_ids"], batch["attention_mask"]
            ids[empty, 0] = self.empty_id
            mask[empty, 0] = 1
        return batch

    def _count_cuts(self, raw: Sequence[str], lengths: Tensor) -> None:
        """Count and warn about the texts that truncation cut: those at the limit that have more tokens."""
        full = [text for text, n in zip(raw, lengths.tolist()) if n >= self.max_length]
        if full:  # one more token allowed tells whether a text at the limit was cut
            longer = self.tokenizer(full, truncation=True, max_length=self.max_length + 1)["input_ids"]
            cut = sum(len(ids) > self.max_length for ids in longer)
            self.cut_items += cut
            limit = f"max_tokens = {self.options.max_tokens}" if self.max_length == self.options.max_tokens else (
                f"{self.max_length} tokens (the model's position limit; max_tokens = {self.options.max_tokens})")
            warn_cut("hf_text", cut, len(raw), limit)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Tokenizer output [B, L] each -> [B, hidden]."""
        out = self.model(**batch, output_hidden_states=self.hidden.wants_all)
        hidden = self.hidden.select(out.last_hidden_state, out.hidden_states)  # [B, L, hidden] (options layers, output_dropout)
        return pool(hidden, batch["attention_mask"], self.options.pooling)

    # -- train.frozen_features: cache with freeze_layers: N (N >= 1): the embeddings and the first N layers per item
    def _plan_frozen_part(self, options: HFTextOptions) -> tuple[int, str]:
        """(N, note): the frozen part ends after layer N (0: no frozen part is cached) and what is cached, or why not."""
        n, total, kind = options.freeze_layers or 0, self.hidden.num_layers, getattr(self.model.config, "model_type", "?")
        why = (
            None if n == 0 else WEIGHTED_NOT_CACHED if options.layers == "weighted"
            else f"its layers ({kind}) are not of a kind whose cached states multiturbo can run on ({', '.join(LAYER_CACHE_TYPES)})"
            if kind not in LAYER_CACHE_TYPES or self.hidden.path != "encoder.layer" or getattr(self.model.config, "is_decoder", False)
            else None
        )
        if n == 0:
            return 0, ""
        if why is not None:
            return 0, f"nothing (freeze_layers: {n} of {total}, but {why}); the whole encoder runs on every pass"
        return n, (f"each item's token-level hidden states after layer {n} of {total} (embeddings and layers 1..{n}, "
                   f"in eval mode); the K passes run layers {n + 1}..{total} only")

    def has_frozen_part(self) -> bool:
        """freeze_layers: N (N >= 1) on a supported model with layers above N that train."""
        return self.cached_layers > 0 and any(p.requires_grad for p in self.parameters())

    def frozen_part(self, batch: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Each item alone (its valid tokens: right padding) through the embeddings and layers 1..N, in eval
        mode: {"hidden": [tokens_i, hidden]}. Alone, an item gets the positions and the (unmasked) keys it
        has in a padded batch, so its states equal its valid positions' states there."""
        out = []
        for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
            item = {k: v[i : i + 1, : int(n)] for k, v in batch.items()}
            with first_layers(self.model, self.hidden.path, self.cached_layers):
                out.append({"hidden": self.model(**item).last_hidden_state[0]})
        return out

    def collate_frozen(self, items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """{"hidden": [B, L, hidden] zero-padded to the longest item, "tokens": [B] valid tokens}."""
        hidden, tokens = pad_items(items, "hidden")
        return {"hidden": hidden, "tokens": tokens}

    def trainable_part(self, batch: dict[str, Tensor]) -> Tensor:
        """Cached states after layer N -> layers N+1..L under the model's own attention mask, the hidden-state
        choice, the pooling over valid tokens: [B, hidden], as :meth:`forward`."""
        x = batch["hidden"]
        valid = valid_mask(x, batch["tokens"])  # [B, L]
        hidden = self.hidden.above(self.model, x, bidirectional_mask(self.model, x, valid), self.cached_layers)
        return pool(hidden, valid, self.options.pooling)
