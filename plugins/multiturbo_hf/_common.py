"""Shared pieces of the Hugging Face encoders: pooling, options, loading, dropout and freezing."""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from multiturbo.encoder import EncoderOptions
from multiturbo.errors import ConfigError
from multiturbo.pooling import masked_mean

# Config keys that hold dropout probabilities, across the families we support
# (BERT/RoBERTa/MiniLM, GPT-2, wav2vec2/HuBERT/WavLM, Whisper, DistilBERT...).
DROPOUT_KEYS = (
    "hidden_dropout_prob",  # BERT, RoBERTa, MiniLM
    "attention_probs_dropout_prob",
    "resid_pdrop",  # GPT-2
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout",  # wav2vec2, HuBERT, WavLM
    "activation_dropout",  # wav2vec2 family, Whisper
    "feat_proj_dropout",
    "attention_dropout",  # wav2vec2 family, Whisper, DistilBERT
    "dropout",  # Whisper, DistilBERT
)


class HFOptions(EncoderOptions):
    model: str = Field(description="Hugging Face hub id (e.g. 'bert-base-uncased') or a local directory saved with save_pretrained.")
    pooling: Literal["mean", "cls", "last"] = Field("mean", description="'mean': mean over valid positions; 'cls': first position; 'last': last valid position.")
    freeze: Literal["none", "feature_encoder", "all"] = Field("none", description="'feature_encoder': freeze the convolutional front end (audio); 'all': freeze every weight (dropout stays on).")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="Set the model's hidden and attention dropout to this value (paper: 0.2); None keeps the model's own.")
    local_files_only: bool = Field(False, description="Never contact the hub (set HF_HUB_OFFLINE=1 as well for a fully offline run).")
    gradient_checkpointing: bool = Field(False, description="Recompute the transformer layers' activations in the backward instead of storing them (less memory, about one more forward of time); dropout masks are replayed, so Turbo's views are unchanged.")


def enable_gradient_checkpointing(model: Any, options: HFOptions, encoder: str) -> None:
    """Turn on transformers' gradient checkpointing when ``options.gradient_checkpointing``."""
    if not options.gradient_checkpointing:
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError([f"gradient_checkpointing: the {encoder} model {type(model).__name__} does not support gradient checkpointing; set it to false."])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def last_valid(x: Tensor, mask: Tensor) -> Tensor:
    """x [B, L, D], mask [B, L] -> [B, D]: the last valid position (right or left padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    index = (mask.bool() * (positions + 1)).argmax(1)  # [B]; 0 when a row has no valid position
    return x[torch.arange(x.shape[0], device=x.device), index]


def pool(x: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool hidden states x [B, L, D] over valid positions (mask [B, L]) -> [B, D]."""
    if how == "mean":
        return masked_mean(x, mask[..., None], dim=1)
    if how == "cls":
        return x[:, 0]
    if how == "last":
        return last_valid(x, mask)
    raise ConfigError([f"pooling: unknown pooling {how!r}; use 'mean', 'cls' or 'last'."])


def _looks_like_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _not_available_locally(exc: BaseException) -> bool:
    """Whether the hub client failed because the files are not on disk and it could not (or must
    not) download them: offline mode, local_files_only, or no network."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def load(what: str, encoder: str, options: HFOptions, loader: Any, **kwargs: Any) -> Any:
    """``loader.from_pretrained(options.model, ...)`` with a ConfigError naming the model and the fix on failure."""
    from .assets import is_config_only  # lazy: assets imports this module

    if what == "weights" and is_config_only(options.model):  # a run directory's assets: best.safetensors holds the weights
        return loader.from_config(kwargs["config"])
    name = options.model
    if _looks_like_path(name) and not os.path.isdir(os.path.expanduser(name)):
        raise ConfigError(
            [
                f"model: the {encoder} encoder's model directory {name!r} does not exist. Give a directory written by "
                f"save_pretrained (config.json, weights, {what} files), or a Hugging Face hub id."
            ]
        )
    try:
        return loader.from_pretrained(os.path.expanduser(name), local_files_only=options.local_files_only, **kwargs)
    except Exception as exc:  # OSError, ValueError, HFValidationError, EnvironmentError... from the hub client
        if not os.path.isdir(os.path.expanduser(name)) and _not_available_locally(exc):
            why = (
                "downloads are off (HF_HUB_OFFLINE=1)" if _hub_offline()
                else "downloads are off (local_files_only: true)" if options.local_files_only
                else "it could not be downloaded (no network?)"
            )
            raise ConfigError(
                [
                    f"model: the {encoder} encoder cannot load {name!r}: it is not a local directory, the Hugging Face "
                    f"cache ({_hub_cache()}) does not hold its {what}, and {why}. Either download the model "
                    f"into that cache on a machine with network access (`hf download {name}`, or one run with "
                    f"HF_HUB_OFFLINE unset; HF_HUB_CACHE chooses the folder, which can be copied to an offline machine), "
                    f"or set `model` to a local directory written by save_pretrained."
                ]
            ) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            [
                f"model: the {encoder} encoder cannot load the {what} of {name!r} ({type(exc).__name__}: {reason}). "
                f"Give a local directory written by save_pretrained, or a hub id that is in the local cache "
                f"(offline: set local_files_only: true and HF_HUB_OFFLINE=1) or reachable over the network."
            ]
        ) from None


def load_config(encoder: str, options: HFOptions) -> Any:
    """The model's config with the dropout override applied (every known dropout key the config has)."""
    from transformers import AutoConfig

    config = load("config", encoder, options, AutoConfig)
    if options.dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key) and isinstance(getattr(config, key), (int, float)):
                setattr(config, key, options.dropout)
    return config


def freeze(model: nn.Module, how: str, encoder: str, feature_encoder: list[nn.Module] | None) -> None:
    """Apply the ``freeze`` option. ``feature_encoder``: the modules that make up the conv front end, if any."""
    if how == "all":
        model.requires_grad_(False)
    elif how == "feature_encoder":
        if not feature_encoder:
            raise ConfigError(
                [f"freeze: the {encoder} encoder's model has no convolutional feature encoder; use 'none' or 'all'."]
            )
        for module in feature_encoder:
            module.requires_grad_(False)


def warn_cut(encoder: str, cut: int, total: int, limit: str) -> None:
    if cut:
        warnings.warn(f"{encoder}: cut {cut} of {total} items of this batch to {limit}.", stacklevel=3)
