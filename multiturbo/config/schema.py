"""The experiment config: pydantic models that reject unknown keys.

The ``method`` preset (vanilla | cross | turbo) fills the ``turbo`` section's K and
pair families (and the CE weight for vanilla) for every field the config does not set
itself; anything written explicitly wins over the preset.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..metrics import METRICS
from ..options import StrictModel

Method = Literal["vanilla", "cross", "turbo"]
MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]  # the metric registry's names

# Paper, Table 1: vanilla = CE only; cross = CL_cross (CLAP-like), K = 1; turbo = K = 2, in + cross.
PRESETS: dict[str, dict[str, Any]] = {
    "vanilla": {"passes": 1, "in_modal": False, "cross_modal": False, "ce_weight": 1.0},
    "cross": {"passes": 1, "in_modal": False, "cross_modal": True},
    "turbo": {"passes": 2, "in_modal": True, "cross_modal": True},
}


class DataConfig(StrictModel):
    """Which data set plugin to use, its options, and which fold."""

    name: str = Field(description="Registered data set name (see `multiturbo plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The data set plugin's own options.")
    fold: int | None = Field(None, ge=0, description="Fold index for data sets with folds; None = the data set's default.")


class ModalityConfig(StrictModel):
    """One modality: its encoder plugin and the encoder's options."""

    encoder: str = Field(description="Registered encoder name (see `multiturbo plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The encoder plugin's own options.")


class ModelConfig(StrictModel):
    """Projections into the shared space and the classification head."""

    dim: int = Field(128, ge=1, description="Dimension d of the shared space (projection output).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before each modality's projection (paper: 0.2).")
    head: str | None = Field(None, description="Registered head name; None: the registered head marked as the default (the first-party concatenation head, paper eq. 5).")
    head_options: dict[str, Any] = Field(default_factory=dict, description="The head plugin's own options.")
    forward_mode: Literal["batched", "sequential"] = Field(
        "batched",
        description="batched: one forward over the batch repeated K times; sequential: K forwards (less memory).",
    )


class TurboConfig(StrictModel):
    """The objective: K passes, pair families, InfoNCE options and the CE weight (lambda, eq. 6)."""

    passes: int = Field(2, ge=1, description="K, forward passes with different dropout masks.")
    in_modal: bool = Field(True, description="In-modal terms: pass k vs pass l of one modality.")
    cross_modal: bool = Field(True, description="Cross-modal terms: modality m pass k vs modality n pass l.")
    symmetric: bool = Field(True, description="Symmetric InfoNCE (mean of X->Y and Y->X) or one-directional (paper's formula).")
    reduction: Literal["sum", "mean"] = Field("sum", description="Sum the terms (paper eq. 4) or average them.")
    in_modal_weight: float = Field(1.0, ge=0.0, description="Weight of the in-modal family.")
    cross_modal_weight: float = Field(1.0, ge=0.0, description="Weight of the cross-modal family.")
    temperature: float = Field(0.07, gt=0.0, description="InfoNCE temperature tau (initial value when learnable).")
    learn_temperature: bool = Field(False, description="Learn tau (log-parameterised, clamped at min_temperature).")
    min_temperature: float = Field(0.01, gt=0.0, description="Lower clamp of a learnable temperature.")
    ce_weight: float = Field(0.5, ge=0.0, le=1.0, description="lambda in lambda * CE + (1 - lambda) * Turbo (paper: 0.5).")
    ce_passes: Literal["first", "all"] = Field("first", description="CE on pass 1's views (paper) or averaged over all K passes.")

    @property
    def any_term(self) -> bool:
        """Whether a contrastive family is switched on (it may still have no terms: see config checks)."""
        return self.in_modal or self.cross_modal


class TrainConfig(StrictModel):
    """Optimisation, early stopping and the device."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1, description="Defaults to batch_size.")
    epochs: int = Field(10, ge=1)
    patience: int | None = Field(None, ge=1, description="Stop after this many epochs without improvement of `monitor`; None = never.")
    monitor: MetricName = Field("ua", description="Validation metric for early stopping and the best checkpoint.")
    grad_clip: float | None = Field(None, gt=0.0, description="Clip the gradient norm to this value.")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:1...")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    checkpoint_every: int | None = Field(
        200, ge=1,
        description="Write the resumable checkpoint every this many steps, besides every epoch end; None = at epoch ends only.",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss or gradient: stop the run (naming the step and term), or skip that step (no update).",
    )
    nonfinite_max_skips: int = Field(
        10, ge=1, description="With nonfinite=skip: stop after this many skipped steps in a row.",
    )
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="Mixed precision: autocast encoders, projections and head to bf16 or fp16 (fp16 with a gradient scaler, CUDA only); the contrastive logits and losses stay float32.",
    )
    grad_cache_chunk: int | None = Field(
        None, ge=1,
        description="Gradient caching: encode the batch in chunks of this many items (no-grad pass, full-batch loss, then a second pass per chunk with the dropout masks replayed), so a contrastive batch larger than memory keeps every negative; None = off.",
    )
    pin_memory: bool | None = Field(None, description="Pin loader memory for faster host-to-GPU copies; None = when CUDA is available.")
    prefetch_factor: int | None = Field(None, ge=1, description="Batches each loader worker prepares ahead (with num_workers > 0); None = PyTorch's default (2).")
    audio_cache: Literal["off", "memory", "disk"] = Field(
        "off",
        description="Cache each item's decoded audio, resampled to its encoder's rate, so later epochs read no audio file and run no resampler: off, memory (per process; each DataLoader worker keeps its own copy) or disk (float32 files under audio_cache_dir, shared by workers, runs and folds). The results are bit-identical to off.",
    )
    audio_cache_dir: str | None = Field(
        None, min_length=1,
        description="Directory of the disk audio cache; None = $XDG_CACHE_HOME/multiturbo/audio (~/.cache/multiturbo/audio). Used with audio_cache=disk.",
    )


class ExperimentConfig(StrictModel):
    """A whole experiment: data, modalities and encoders, model, objective, training."""

    name: str | None = Field(None, description="Experiment name (default: the config file's stem).")
    seed: int = 0
    method: Method = Field("turbo", description="Preset for K and the pair families: vanilla | cross | turbo.")
    data: DataConfig
    modalities: dict[str, ModalityConfig] = Field(min_length=1, description="Modality name -> encoder, in order.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    turbo: TurboConfig = Field(default_factory=TurboConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_method_preset(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        method = raw.get("method", "turbo")
        preset = PRESETS.get(method) if isinstance(method, str) else None
        turbo = raw.get("turbo", {})
        if preset is None or not isinstance(turbo, dict):
            return raw  # field validation reports the bad value
        return {**raw, "turbo": {**preset, **turbo}}
