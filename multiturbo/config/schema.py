"""The experiment config: pydantic models that reject unknown keys.

The ``method`` preset (vanilla | cross | turbo) fills the ``turbo`` section's K and
pair families (and the CE weight for vanilla) for every field the config does not set
itself; anything written explicitly wins over the preset.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


DEFAULT_SPLIT_SEED = 0  # the split of every run that sets no data.split_seed


class DataConfig(StrictModel):
    """Which data set plugin to use, its options, and which fold."""

    name: str = Field(description="Registered data set name (see `multiturbo plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The data set plugin's own options.")
    fold: int | None = Field(None, ge=0, description="Fold index for data sets with folds; None = the data set's default.")
    split_seed: int | None = Field(
        None, ge=0,
        description="Seed of the data set's random split (and of generated data): None = 0, the same for every training `seed`, so seeds change only initialisation, dropout and data order (docs/experiments.md).",
    )

    @property
    def data_seed(self) -> int:
        """The seed handed to the data set plugin: ``split_seed``, or DEFAULT_SPLIT_SEED when unset (never the training seed)."""
        return DEFAULT_SPLIT_SEED if self.split_seed is None else self.split_seed


class ModalityConfig(StrictModel):
    """One modality: its encoder plugin and the encoder's options."""

    encoder: str = Field(description="Registered encoder name (see `multiturbo plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The encoder plugin's own options.")


class ModelConfig(StrictModel):
    """Projections into the shared space and the classification head."""

    dim: int = Field(128, ge=1, description="Dimension d of the shared space (projection output).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before each modality's projection (paper: 0.2).")
    feature_norm: Literal["none", "batch", "layer"] = Field(
        "batch",
        description="Standardise each modality's pooled encoder output before its projection: batch (BatchNorm1d, the default: pooled encoder outputs are anisotropic, so without it the views start as one point and the contrastive terms at log(B)), layer (LayerNorm) or none (the paper's plain linear projection). docs/training-dynamics.md.",
    )
    contrastive_head: Literal["none", "mlp"] = Field(
        "none",
        description="none: the contrastive terms read the views the classifier reads (the paper); mlp: a small per-modality head (linear, GELU, linear) that only the contrastive terms read (SimCLR/SimCSE).",
    )
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


# Parts of the model that ``train.lr_groups`` / ``train.weight_decay_groups`` can name besides the
# modalities (each modality's encoder is the part named after the modality).
GROUP_PARTS = ("projections", "head", "temperature")

PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class ScheduleConfig(StrictModel):
    """Learning-rate schedule, stepped once per optimiser step: a linear warm-up (step t of W at
    (t + 1) / (W + 1) of the rate), then constant, linear decay to 0 or cosine decay to 0 at the
    end of ``train.epochs`` (torch.optim.lr_scheduler; see multiturbo.optim)."""

    decay: Literal["constant", "linear", "cosine"] = Field("linear", description="After the warm-up: constant, linear to 0, or cosine to 0 at the last step of train.epochs.")
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up length in optimiser steps (exclusive with warmup_fraction).")
    warmup_fraction: float | None = Field(None, ge=0.0, lt=1.0, description="Warm-up length as a fraction of all training steps (epochs x steps per epoch), e.g. 0.1.")

    @model_validator(mode="after")
    def _one_warmup(self) -> "ScheduleConfig":
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ValueError("give warmup_steps or warmup_fraction, not both")
        return self


class TrainConfig(StrictModel):
    """Optimisation, early stopping and the device."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0, description="Learning rate of every part that lr_groups does not name.")
    weight_decay: float = Field(0.0, ge=0.0, description="Weight decay of every part that weight_decay_groups does not name (never on biases, normalisation weights, 1-d parameters or the temperature).")
    lr_groups: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="Learning rate per part: a modality name (its encoder), projections, head, temperature; e.g. {audio: 1e-5, head: 1e-4}.",
    )
    weight_decay_groups: dict[str, NonNegativeFloat] = Field(default_factory=dict, description="Weight decay per part (names as lr_groups).")
    layer_decay: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Layer-wise learning-rate decay for encoders that expose layers: layer i of N gets lr x layer_decay^(N + 1 - i), the embeddings lr x layer_decay^(N + 1); None = off.",
    )
    schedule: ScheduleConfig | None = Field(None, description="Learning-rate schedule (warm-up, then constant / linear / cosine); None = the constant lr (paper).")
    class_weights: Literal["none", "balanced"] | dict[str, PositiveFloat] = Field(
        "none",
        description="Cross-entropy class weights: none, balanced (n / (C x count of the class) over the train split) or {class name: weight} (unnamed classes: 1).",
    )
    sampler: Literal["random", "balanced"] = Field(
        "random",
        description="Training order: random (a permutation per epoch) or balanced (items drawn with replacement, each class equally likely; deterministic from seed and epoch).",
    )
    batching: Literal["random", "bucket"] = Field(
        "random",
        description="How training items are grouped into batches: random, or bucket (items of similar length together: audio seconds, text words; the batches in random order, deterministic from seed and epoch, resumable), which cuts the padding; needs item lengths from the data set (else random, with a warning).",
    )
    bucket_jitter: float = Field(
        0.03, ge=0.0, le=1.0,
        description="With batching: bucket or max_batch_seconds: each item's length is scaled by exp(bucket_jitter x z), z ~ N(0, 1) drawn anew each epoch (from seed and epoch), before the items are sorted into batches, so that items of nearly the same length are batched with different companions from epoch to epoch (more varied InfoNCE negatives) for a little more padding. 0: the same batches every epoch when the data set fits one sorting pool (100 batches). docs/scaling.md.",
    )
    max_batch_seconds: float | None = Field(
        None, gt=0.0,
        description="Dynamic batch size: each training batch holds as many items as fit a budget of padded length, items x the longest item's length in the first modality, as the data set reports it (audio seconds for audio files, samples for plain arrays, words for text), grouped by length as bucket and deterministic from seed and epoch, resumable; overrides batching and batch_size for training (eval_batch_size still applies). Needs item lengths from the data set. None = fixed batch_size.",
    )
    min_batch_size: int = Field(
        8, ge=2,
        description="With max_batch_seconds: every batch holds at least this many items, even when that exceeds the budget (items longer than max_batch_seconds / min_batch_size), so every InfoNCE term keeps negatives; except that an item longer than max_batch_seconds by itself goes alone in its batch (the budget is a memory limit; in one process its contrastive terms then have no negatives and count zero). Both kinds of batches are counted in warnings.",
    )
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
        description="Cache each item's decoded audio, resampled to its encoder's rate, so later epochs read no audio file and run no resampler: off, memory (per process, shared by every run of one compare / cv / tune for data sets whose items can be keyed: manifest, IEMOCAP, hf_datasets; each DataLoader worker keeps its own copy) or disk (float32 files under audio_cache_dir, shared by workers, runs and folds). The results are bit-identical to off.",
    )
    frozen_features: Literal["recompute", "cache"] = Field(
        "recompute",
        description="Modalities whose encoder is fully frozen (freeze: all): recompute runs the encoder on every pass (its own dropout acts, so the K views differ inside the encoder too); cache computes each item's encoder output once before training, with the encoder in eval mode, and the K views then differ by the dropout before the projection only (the frozen-encoder protocol of SUPERB; many times faster). Partly frozen encoders that split off their frozen lower part get that part cached once per item (eval mode, unpadded) and run only their trainable part on the K passes. What is cached: hf_audio (wav2vec2, HuBERT) and hf_whisper with freeze: feature_encoder: the conv front end's frames (no dropout there: the same results as recompute); hf_audio, hf_whisper and hf_text (BERT, MiniLM, RoBERTa, XLM-R) with freeze_layers: N (N >= 1): each item's hidden state after layer N (front end / embeddings and layers 1..N), so the K passes run layers N+1..L only; the K views then differ only above layer N, and the dropout (and SpecAugment, LayerDrop) of the frozen layers is lost, hence the opt-in frozen_part_dropout: eval (without it, when those layers have dropout, hf_audio / hf_whisper cache the conv front end only and hf_text is a config error). With layers: weighted, with other wav2vec2-family types than wav2vec2, HuBERT and WavLM, or freeze_layers: 0, hf_audio / hf_whisper cache the conv front end only and hf_text nothing; the run log says what each encoder caches and why.",
    )
    frozen_part_dropout: Literal["refuse", "eval"] = Field(
        "refuse",
        description="With frozen_features=cache, for an encoder whose cached frozen lower part has dropout inside (the encoder says so; freeze_layers: N with dropout in those layers): refuse (a lower part without dropout is cached where the encoder has one, hf_audio / hf_whisper: the conv front end, with the same results as recompute; otherwise a config error) or eval (the frozen part runs once in eval mode, so Turbo's K views differ only by the dropout of the trainable part above it and after the encoder).",
    )
    frozen_features_store: Literal["memory", "disk"] = Field(
        "memory",
        description="With frozen_features=cache: memory (this process only; compare and cv share it across their runs) or disk (also one file per item under frozen_features_dir, keyed by the encoder's weights and options and the item's input, shared by processes: resumed cv / compare, sweeps, later runs). Results are identical either way.",
    )
    frozen_features_dir: str | None = Field(
        None, min_length=1,
        description="Directory of the disk feature cache; None = $XDG_CACHE_HOME/multiturbo/features (~/.cache/multiturbo/features).",
    )
    diagnostics: bool = Field(
        True,
        description="Every epoch, on the validation split: alignment, uniformity, cross-modal recall@1 and each contrastive term against log(B), logged in metrics.jsonl, with a warning when the contrastive space collapses (docs/training-dynamics.md). Costs one more pass over the validation split per epoch.",
    )
    audio_cache_dir: str | None = Field(
        None, min_length=1,
        description="Directory of the disk audio cache; None = $XDG_CACHE_HOME/multiturbo/audio (~/.cache/multiturbo/audio). Used with audio_cache=disk.",
    )
    tracking: Literal["none", "mlflow"] = Field(
        "none",
        description='Live experiment tracking: none, or mlflow (the optional extra: pip install "multiturbo[mlflow]"): the resolved config as parameters, every epoch\'s metrics.jsonl record as metrics while the run trains (each Turbo term, the temperature, the learning rates, validation metrics, diagnostics), then the test metrics and report.md, figures, config.yaml and run.json as artifacts; cv / compare runs tagged with method, fold and seed under a parent run (docs/tracking.md). Only rank 0 logs.',
    )
    tracking_uri: str | None = Field(
        None, min_length=1,
        description="MLflow tracking URI: a server (http://host:5000) or a database (sqlite:///path/mlflow.db); None = $MLFLOW_TRACKING_URI, else sqlite:///<the run directory's parent>/mlflow.db (cv / compare: <OUT>/mlflow.db).",
    )
    tracking_experiment: str | None = Field(
        None, min_length=1, description="MLflow experiment the runs go to; None = the config's name.",
    )


Scalar = bool | int | float | str | None


class SearchRange(StrictModel):
    """One tuned config value (``tune.space``): a range ``low``..``high`` (``log``: sampled on a log
    scale; ``step``: a grid) or a list of ``choices``. A range is of integers when ``low`` and
    ``high`` are both written as integers (``2``, not ``2.0``), else of floats; ``type`` says it
    explicitly."""

    low: int | float | None = Field(None, description="Lower end of the range (inclusive).")
    high: int | float | None = Field(None, description="Upper end of the range (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (low > 0), e.g. for learning rates and temperatures.")
    step: int | float | None = Field(None, gt=0, description="Sample on the grid low, low + step, ... (not with log).")
    type: Literal["int", "float"] | None = Field(None, description="int or float; None: int when low and high are both written as integers.")
    choices: list[Scalar] | None = Field(None, min_length=1, description="The values to choose from (numbers, strings, booleans, null), instead of a range.")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchRange":
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None or self.type is not None:
                raise ValueError("give choices, or a range (low, high, log, step, type), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list of values)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together (Optuna samples a log range continuously)")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError("type int needs integer low, high and step")
        return self

    @property
    def is_int(self) -> bool:
        """Whether the range is of integers (suggest_int) rather than floats."""
        if self.type is not None:
            return self.type == "int"
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))


class TuneConfig(StrictModel):
    """``multiturbo tune``: the search space, the objective and Optuna's sampler, pruner and storage
    (docs/experiments.md#tuning). Ignored by every other command."""

    space: dict[str, SearchRange] = Field(
        min_length=1,
        description="Dotted config path -> its range or choices, e.g. {turbo.temperature: {low: 0.03, high: 0.3, log: true}, turbo.passes: {choices: [2, 3]}}.",
    )
    metric: MetricName | None = Field(
        None,
        description="The validation metric to optimise (its direction from the metric registry); each trial monitors it (train.monitor), and the objective is its value at the trial's best epoch. None: train.monitor.",
    )
    trials: int = Field(20, ge=1, description="Trials each `multiturbo tune` process runs (--trials overrides).")
    folds: list[Annotated[int, Field(ge=0)]] | Literal["all"] | None = Field(
        None,
        description="Run every trial on these folds (a list, or all) and optimise the mean of the best-epoch values; None: the config's data.fold only.",
    )
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler: tpe (TPESampler) or random (RandomSampler).")
    sampler_seed: int | None = Field(None, description="Seed of the sampler (None: random). Leave unset when several processes share a study, or they propose the same values.")
    pruner: Literal["median", "hyperband", "threshold", "none"] = Field(
        "median",
        description="Optuna pruner judging each trial's per-epoch validation metric: median (MedianPruner), hyperband (HyperbandPruner), threshold (ThresholdPruner at `threshold`) or none.",
    )
    startup_trials: int = Field(5, ge=0, description="median: trials that finish before any trial is pruned.")
    warmup_epochs: int = Field(1, ge=0, description="median / threshold: epochs of every trial that are never pruned.")
    threshold: float | None = Field(None, description="threshold: prune a trial whose validation metric is worse than this (below it for a metric where higher is better).")
    storage: str | None = Field(
        None, min_length=1,
        description="Optuna storage URL (sqlite:///..., postgresql://..., mysql://...); None: sqlite:///OUT/study.db. A shared database lets several machines work on one study. --storage overrides.",
    )
    study_name: str | None = Field(None, min_length=1, description="The study's name in the storage; None: the experiment's name.")

    @model_validator(mode="after")
    def _threshold(self) -> "TuneConfig":
        if self.pruner == "threshold" and self.threshold is None:
            raise ValueError("pruner threshold needs tune.threshold (the value below which a trial is pruned)")
        return self


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
    tune: TuneConfig | None = Field(None, description="Hyperparameter search with `multiturbo tune` (Optuna); ignored by the other commands.")

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
