"""Shared pieces of the Hugging Face encoders: pooling, options, loading, dropout, freezing and
the choice of hidden states (``layers``, ``freeze_layers``: :class:`HiddenStates`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    freeze_layers: int | None = Field(None, ge=0, description="Freeze the embeddings / feature front end and the first N transformer layers (0: the embeddings only); the layers above N train. None: see freeze.")
    layers: Literal["last", "weighted"] | int = Field(
        "last",
        description="Which hidden states are pooled: 'last' (the model's output), an index i (0 = the embeddings' output, i = layer i's output, negative counts from the end), or 'weighted': a learnt softmax-weighted sum of all of them (SUPERB).",
    )
    output_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the chosen (or weighted) hidden states before pooling, on top of the model's own dropout.")


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


@contextmanager
def no_loading_bar() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights") off while a model loads: a fraction of a
    second from a local directory, and in a log file a line of carriage returns before the run's own
    output. Downloads keep their bars (they are the hub client's, not transformers'); any tqdm hook of
    the user's still sees every bar, and is put back after."""
    from transformers.utils import logging as hf_logging

    def quiet(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(quiet)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


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
        with no_loading_bar():
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


# Root-level names (relative to the transformers model) of what comes after the last layer.
TOP_PREFIXES = ("pooler.", "ln_f.", "norm.", "final_layer_norm.", "layer_norm.")
BLOCK_LISTS = ("layer", "layers", "h", "block", "blocks")


def find_blocks(model: nn.Module) -> tuple[str, int] | None:
    """(path, count) of the model's list of transformer layers (the longest nn.ModuleList named
    layer / layers / h / block / blocks), or None."""
    found = [(name, len(m)) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) and name.rsplit(".", 1)[-1] in BLOCK_LISTS]
    return max(found, key=lambda f: f[1]) if found else None


class LayerMix(nn.Module):
    """SUPERB's weighted sum: softmax(w) over S hidden states, w learnt (starts uniform).

    forward: S tensors [B, L, D] -> [B, L, D]."""

    def __init__(self, n_states: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_states))

    def forward(self, states: Sequence[Tensor]) -> Tensor:
        w = self.weights.softmax(0)  # [S]
        return torch.einsum("s,sbld->bld", w.to(states[0].dtype), torch.stack(list(states)))


class HiddenStates(nn.Module):
    """The ``layers``, ``freeze_layers`` and ``output_dropout`` options of an HF encoder.

    Finds the model's stack of N layers, places each parameter in it (:meth:`layer_id`: 0 for
    the embeddings / front end, i for layer i, None after the last layer), freezes the front end
    and the first ``freeze_layers`` layers (with ``layers: i`` also what lies above layer i, which
    never reaches the loss), and turns the model's hidden states into the
    sequence that is pooled: :meth:`select` (the N + 1 hidden states of ``output_hidden_states``
    are the embeddings' output and every layer's output; the last one is the model's output,
    ``last_hidden_state``, with any final LayerNorm).

    Dropout and frozen encoders: ``freeze`` / ``freeze_layers`` only stop gradients
    (requires_grad = False); the model stays in train mode during training, so its own dropout
    (``dropout``) still draws a new mask per element and the K copies of a batch get different
    hidden states even with ``freeze: all``. On top of that the projection's dropout
    (``model.dropout``) and ``output_dropout`` (here, after the choice or the weighted sum) act
    on every view; a model in eval mode (inference) gives identical hidden states for all copies.
    """

    def __init__(self, model: nn.Module, options: HFOptions, encoder: str, top: tuple[str, ...] = ()):
        super().__init__()
        blocks = find_blocks(model)
        self.encoder_name = encoder
        self.path, self.num_layers = blocks if blocks else (None, None)
        self.top = TOP_PREFIXES + top
        self.choice = options.layers
        self.dropout = nn.Dropout(options.output_dropout)
        n = self.num_layers
        if options.layers != "last" or options.freeze_layers is not None:
            if n is None:
                raise ConfigError([f"layers / freeze_layers: the {encoder} model {type(model).__name__} has no list of transformer layers that multiturbo can find; use layers: last and freeze instead."])
        if isinstance(options.layers, int) and not -(n + 1) <= options.layers <= n:
            raise ConfigError([f"layers: {options.layers} is out of range: the {encoder} model {type(model).__name__} has {n} layers, "
                               f"so its hidden states are 0 (the embeddings' output) to {n} (the last layer), or -1 to -{n + 1} from the end."])
        if options.freeze_layers is not None:
            if options.freeze_layers > n:
                raise ConfigError([f"freeze_layers: {options.freeze_layers} is more than the {n} layers of the {encoder} model "
                                   f"{type(model).__name__}. Use at most {n}, or freeze: all."])
            for name, p in model.named_parameters():
                lid = self.layer_id(name)
                if lid is not None and lid <= options.freeze_layers:
                    p.requires_grad_(False)
        if isinstance(options.layers, int) and options.layers % (n + 1) < n:
            # the layers above the chosen one (and a final norm) do not reach the loss: without
            # requires_grad they get no optimiser state, and DDP finds no unused parameter
            chosen = options.layers % (n + 1)
            for name, p in model.named_parameters():
                lid = self.layer_id(name)
                if lid is None or lid > chosen:
                    p.requires_grad_(False)
        self.mix = LayerMix(n + 1) if options.layers == "weighted" else None

    @property
    def wants_all(self) -> bool:
        """Whether the model must return every hidden state (output_hidden_states=True)."""
        return self.choice != "last"

    def layer_id(self, name: str) -> int | None:
        """0 (embeddings / front end), i (layer i, 1-based) or None (after the last layer) for a
        parameter name relative to the transformers model."""
        if self.path is not None and name.startswith(self.path + "."):
            return int(name[len(self.path) + 1 :].split(".", 1)[0]) + 1
        if name.startswith(self.top):
            return None
        return 0

    def above(self, model: nn.Module, x: Tensor, mask: Any, start: int, *, final_norm: nn.Module | None = None,
              layerdrop: float = 0.0, training: bool = False, call: LayerCall | None = None) -> Tensor:
        """The model above layer ``start`` (the frozen part's end, cached): x [B, S, D] the hidden state after
        layer ``start`` -> layers start+1..N (:func:`run_layers`; ``mask``: the attention mask as the layers take
        it; ``call``: see :func:`run_layers`), then ``final_norm`` (a LayerNorm after the layers), then :meth:`select` -> [B, S, D] to pool. The
        hidden states of layers < ``start`` are not at hand: with ``start`` > 0 only ``layers: last`` or an index
        >= ``start`` can be chosen (below it every weight is frozen; ``weighted`` needs them all)."""
        if start and (self.mix is not None or (isinstance(self.choice, int) and self.choice % (self.num_layers + 1) < start)):
            raise RuntimeError(f"{self.encoder_name}: layers: {self.choice} needs a hidden state at or below the cached layer {start}")
        states: list[Tensor | None] | None = [None] * start if self.wants_all else None
        x = run_layers(model.get_submodule(self.path)[start:], x, mask, layerdrop=layerdrop, training=training, states=states,
                       start=start, call=call)
        if states is not None:
            states.append(x)
        return self.select(final_norm(x) if final_norm is not None else x, states)

    def select(self, last: Tensor, states: Sequence[Tensor | None] | None) -> Tensor:
        """last: the model's output [B, L, D]; states: its N + 1 hidden states (with wants_all)
        -> [B, L, D] to pool: the chosen state or the weighted sum, then output_dropout."""
        if self.wants_all:
            if states is None or len(states) != self.num_layers + 1:
                got = "none" if states is None else len(states)
                raise RuntimeError(f"{self.encoder_name}: expected {self.num_layers + 1} hidden states, got {got}")
            # the last state is the model's output (transformers versions differ on whether a
            # final LayerNorm is applied to hidden_states[-1]; last_hidden_state always has it)
            states = (*states[:-1], last)
            last = self.mix(states) if self.mix is not None else states[self.choice]
        return self.dropout(last)


class LayeredEncoder:
    """Mixin for the HF encoders: ``num_layers`` and ``layer_id`` (multiturbo.encoder.Encoder's
    contract for layer-wise lr decay) from ``self.hidden``, a :class:`HiddenStates`; and
    ``describe_frozen_part`` from ``self._part_note`` (set by the encoders that split off a frozen part)."""

    hidden: HiddenStates
    _part_note: str = ""

    def describe_frozen_part(self) -> str:
        """What ``frozen_part`` caches, and why no more (one log line of the feature cache)."""
        return self._part_note

    @property
    def num_layers(self) -> int | None:  # type: ignore[override]
        return self.hidden.num_layers

    def layer_id(self, name: str) -> int | None:
        """Parameters of the transformers model (``model.*``) by depth; the layer weights and
        anything else of the encoder count as after the last layer (None)."""
        if name.startswith("model."):
            return self.hidden.layer_id(name[len("model."):])
        return None


# -- train.frozen_features: cache with freeze_layers: N (the frozen part is everything up to layer N)
@contextmanager
def first_layers(model: nn.Module, path: str, n: int, skip: Sequence[str] = ()) -> Iterator[None]:
    """Inside, ``model``'s list of layers at ``path`` (:attr:`HiddenStates.path`) holds only its first
    ``n`` layers (the same modules, nothing copied), and the modules at the paths ``skip`` (a final
    LayerNorm after the layers) are identities: the model's own forward then returns the hidden state
    after layer ``n``. Everything is put back on leaving."""
    swaps = [(path, nn.ModuleList(list(model.get_submodule(path))[:n])), *[(name, nn.Identity()) for name in skip]]
    saved = []
    try:
        for name, stand_in in swaps:
            owner_path, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_path) if owner_path else model
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, stand_in)
        yield
    finally:
        for owner, attr, module in reversed(saved):
            setattr(owner, attr, module)


LayerCall = Callable[[nn.Module, int, Tensor, Any], Tensor]  # (layer, its 0-based index, x [B, S, D], mask) -> [B, S, D]


def run_layers(layers: Sequence[nn.Module], x: Tensor, mask: Any, *, layerdrop: float = 0.0, training: bool = False,
               states: list[Tensor | None] | None = None, start: int = 0, call: LayerCall | None = None) -> Tensor:
    """x [B, S, D] through ``layers`` (the model's layers ``start``, ``start`` + 1...), each called as
    ``layer(x, mask)`` (``mask``: the attention mask in the form the layers take), or as ``call(layer, index,
    x, mask)`` for layers that take more (WavLM's position bias) -> [B, S, D]. LayerDrop as transformers does
    it: in training each layer is skipped with probability ``layerdrop`` (one ``torch.rand([])`` draw per
    layer). ``states``, when given, gets each layer's input appended (output_hidden_states; a skipped
    layer's is its input again)."""
    for index, layer in enumerate(layers, start):
        if states is not None:
            states.append(x)
        if training and layerdrop > 0.0 and torch.rand([]) < layerdrop:
            continue
        x = call(layer, index, x, mask) if call is not None else layer(x, mask)
    return x


def bidirectional_mask(model: nn.Module, x: Tensor, valid: Tensor) -> Any:
    """The attention mask a transformers encoder builds from a [B, S] bool key padding mask, for the
    attention implementation of its config (an additive [B, 1, S, S] mask, a bool one, or None when
    nothing is padded), as the model's own forward does. x: [B, S, D] (dtype and device)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=x, attention_mask=valid)


# why layers: weighted caches no transformer layer (hf_audio, hf_whisper, hf_text)
WEIGHTED_NOT_CACHED = "layers: weighted mixes every hidden state, and caching the frozen ones too would multiply the cache's size by N + 1"


def valid_mask(x: Tensor, lengths: Tensor) -> Tensor:
    """[B, S, ...] padded states, [B] valid lengths -> [B, S] bool: the positions within each item."""
    return torch.arange(x.shape[1], device=x.device)[None] < lengths.to(x.device)[:, None]


def pad_items(items: Sequence[dict[str, Tensor]], key: str) -> tuple[Tensor, Tensor]:
    """Items' ``key`` tensors [S_i, D] -> ([B, S, D] zero-padded to the longest, [B] lengths S_i)."""
    lengths = [int(it[key].shape[0]) for it in items]
    out = items[0][key].new_zeros(len(items), max(lengths), *items[0][key].shape[1:])
    for i, it in enumerate(items):
        out[i, : lengths[i]] = it[key]
    return out, torch.tensor(lengths)


def noisy_config_keys(config: Any, keys: Sequence[str]) -> list[str]:
    """The entries of ``keys`` that the model config sets to a non-zero value (dropout, LayerDrop, SpecAugment)."""
    return [k for k in keys if isinstance(getattr(config, k, None), (int, float)) and getattr(config, k) > 0]
