"""The encoder contract.

An encoder turns one modality's raw inputs into one pooled vector per item. It owns
its preprocessing: :meth:`Encoder.collate` turns a list of raw inputs (waveforms,
strings, images...) into a padded batch of tensors, and :meth:`Encoder.forward` maps
that batch to ``[B, output_dim]``.

Every tensor in a collated batch has the batch on dimension 0, so the engine can
repeat a batch K times along it (one forward for all K dropout passes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from .options import StrictModel

Batch = dict[str, Tensor]


class EncoderOptions(StrictModel):
    """Options every encoder accepts. Subclass it to add an encoder's own options."""


class Encoder(nn.Module):
    """Base class of encoder plugins.

    Subclasses set ``Options`` (a subclass of :class:`EncoderOptions`), set
    ``self.output_dim`` in ``__init__``, and implement ``collate`` and ``forward``.
    Dropout inside the encoder stays on in training: Turbo's K views come from it.
    """

    Options: ClassVar[type[EncoderOptions]] = EncoderOptions
    output_dim: int
    #: Audio encoders: the sample rate (Hz) their ``collate`` resamples a
    #: :class:`multiturbo.audio.Waveform` to (with :func:`multiturbo.audio.to_rate`); None for
    #: encoders of other inputs. ``train.audio_cache`` uses it to store each item's audio already
    #: at this rate (multiturbo.audio_cache); an audio encoder that leaves it None is not cached.
    input_sample_rate: int | None = None
    #: Encoders with a stack of layers (transformers): how many. With it, :meth:`layer_id` places
    #: each parameter in the stack, for layer-wise learning-rate decay (``train.layer_decay``,
    #: multiturbo.optim). None: the encoder has no layers in that sense (no layer decay).
    num_layers: int | None = None

    def __init__(self, options: EncoderOptions):
        super().__init__()
        self.options = options

    def collate(self, raw: Sequence[Any]) -> Batch:
        """Turn B raw inputs into a padded batch: a dict of tensors, each [B, ...]."""
        raise NotImplementedError

    def max_input_seconds(self) -> float | None:
        """Audio encoders whose ``collate`` cuts longer audio: the seconds they keep (their
        ``max_seconds``); None when nothing is cut. Length-aware batching (``train.batching:
        bucket``, ``train.max_batch_seconds``) and the logged padding count a longer item at this
        length, since that is all the encoder sees of it."""
        return None

    def forward(self, batch: Batch) -> Tensor:
        """Map a collated batch to pooled vectors [B, output_dim]."""
        raise NotImplementedError

    #: Whether dropout (or other training-time noise) acts inside :meth:`frozen_part` in training
    #: mode. Caching the frozen part computes it once in eval mode, so such noise would be lost: the
    #: core then refuses the partial cache unless ``train.frozen_part_dropout: eval`` opts in.
    frozen_part_dropout: bool = False

    # -- optional: a frozen lower part, cached by train.frozen_features: cache (multiturbo.feature_cache)
    def has_frozen_part(self) -> bool:
        """True when this encoder, as configured, splits into a frozen lower part and a trainable
        upper part (e.g. ``freeze: feature_encoder``: a frozen convolutional front end under trainable
        transformer layers), so that ``forward(batch) == trainable_part(collate_frozen(frozen_part(batch)))``
        in eval mode. The default: no split (then a partly frozen encoder is not cached)."""
        return False

    def frozen_part(self, batch: Batch) -> list[dict[str, Tensor]]:
        """The frozen lower part's output for each item of a collated batch, unpadded: one
        {name: tensor} per item (e.g. {"conv": [frames_i, channels]}). Called in eval mode without
        gradient, once per item; the result must not depend on the other items of the batch."""
        raise NotImplementedError

    def collate_frozen(self, items: Sequence[dict[str, Tensor]]) -> Batch:
        """Items' :meth:`frozen_part` outputs -> a padded batch (every tensor [B, ...])."""
        raise NotImplementedError

    def trainable_part(self, batch: Batch) -> Tensor:
        """A :meth:`collate_frozen` batch -> pooled vectors [B, output_dim], through the trainable part only."""
        raise NotImplementedError

    def exact_frozen_part(self) -> bool:
        """Shrink the frozen part to a lower one in which no dropout acts, when the encoder has one (e.g.
        the conv front end below frozen transformer layers), and return True; :attr:`frozen_part_dropout`
        is then False and the cache gives the same results as recomputing. Called by the core when
        :attr:`frozen_part_dropout` is True and ``train.frozen_part_dropout`` is ``refuse``. The default:
        False (no smaller part: the core refuses the config and names the opt-in)."""
        return False

    def describe_frozen_part(self) -> str:
        """What :meth:`frozen_part` computes, in a few words, and why it stops where it does when that is
        less than the configuration freezes (e.g. "the conv feature encoder's output (not the first 8
        layers: ...)"). The feature cache logs it once per run; the default says nothing."""
        return ""

    def layer_id(self, name: str) -> int | None:
        """Where the parameter ``name`` (relative to this encoder) sits in the stack of
        :attr:`num_layers` layers: 0 for the embeddings / front end, i for layer i (1-based), None
        for what comes after the last layer (final norm, layer weights...). Used only when
        ``num_layers`` is set; the default says "after the last layer" for every parameter."""
        return None

    def export_assets(self, directory: Path) -> dict[str, Any]:
        """Save what this encoder needs to be rebuilt offline; return option overrides.

        Optional (the default saves nothing and returns ``{}``: the encoder's options alone
        rebuild it, e.g. encoders with no pretrained files). Called once per run, at its
        start, with an empty directory inside the run directory (``assets/<modality>/``).
        An encoder whose options name something that may be gone at inference time (a hub
        id, a local model directory) saves it there (configs, tokenizers, feature
        extractors; the trained weights are in ``best.safetensors`` already) and returns
        the options that point at the copy, e.g. ``{"model": directory, "local_files_only": True}``.
        ``pathlib.Path`` values must lie inside ``directory``; they are recorded relative
        to the run directory, so the run directory can be moved. Loading the run
        (:func:`multiturbo.rundir.load_run`) applies the overrides to the saved options.
        """
        return {}
