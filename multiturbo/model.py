"""The Turbo model: encoders keyed by modality, projections into a shared space, a head.

Shapes: B items, K passes, d shared dimension, C classes, M modalities.

    batch {m: encoder batch [B, ...]}
      -> repeat K times along dim 0 -> [K*B, ...]          (one forward, K dropout masks)
      -> encoder_m -> [K*B, dim_m] -> dropout + linear -> [K*B, d] -> views_m [K, B, d]
    head({m: views_m[0]}) -> logits [B, C]                   (paper eq. 5, pass 1)
    loss = lambda * CE + (1 - lambda) * turbo_loss(g_m(views))   (paper eq. 6)

Two options decide whether the contrastive terms can learn (docs/training-dynamics.md):

- ``feature_norm`` ("batch" by default): the encoder's pooled vector e_m [n, dim_m] is
  standardised per feature before its projection (BatchNorm1d; running statistics at
  inference). Pooled encoder outputs are anisotropic (from-scratch CNNs after GELU and mean
  pooling, and pretrained Whisper/BERT alike: pairwise cosines of 0.9 and more), so their
  projections start as one point, every InfoNCE term starts at log(B) and the classifier has
  no reason to spread them. "none" is the paper's plain linear projection.
- ``contrastive_head`` ("none" by default, the paper): "mlp" gives each modality a small
  head g_m (linear, GELU, linear: [.., d] -> [.., d]) that only the contrastive terms read, as
  SimCLR and SimCSE do; the classifier keeps reading h_m. Alignment, uniformity and retrieval are
  measured where the contrastive terms act (after g_m).

Missing modalities: when some items of a batch lack modality m, the collated batch of m holds
only the n present items plus ``batch[m][PRESENT_KEY]``, a bool mask [B]. The encoder runs on
the n items only; their views are scattered into [K, B, d] (zeros at the missing rows), the loss
leaves the missing items out of every term that involves m, and the head gets the masks
(heads declare ``handles_missing``; a head that does not is an error naming the modality and item).
A complete modality carries no mask and takes the plain path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import Batch, Encoder
from .distributed import GlobalBatchNorm1d, current_world
from .errors import DataError
from .feature_cache import FEATURES_KEY, FROZEN_PART_KEY
from .head import Head
from .loss import TurboLoss

PRESENT_KEY = "_present"  # in a modality's collated batch: bool [B], True = the item has this modality


@dataclass
class StepOutput:
    """What one training forward produces (scalars are 0-d tensors)."""

    loss: Tensor  # lambda * CE + (1 - lambda) * contrastive
    ce: Tensor
    contrastive: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)  # every contrastive pair's loss by name
    logits: Tensor | None = None  # [B, C] from pass 1


def repeat_batch(batch: Batch, passes: int) -> Batch:
    """Repeat every tensor K times along dim 0: row k*B + i is item i in pass k. [B, ...] -> [K*B, ...]."""
    if passes == 1:
        return batch
    return {key: t.repeat(passes, *([1] * (t.dim() - 1))) for key, t in batch.items()}


class TurboModel(nn.Module):
    """Encoders + projections + head + the contrastive objective.

    Args:
        encoders: modality -> encoder, in config order.
        head: maps {modality: [B, d]} to logits [B, C].
        contrastive: the Turbo loss module (owns the temperature), or None for vanilla.
        dim: shared dimension d. dropout: dropout before each projection.
        passes: K. forward_mode: "batched" (one forward on K copies) or "sequential".
        ce_weight: lambda of eq. 6. ce_passes: "first" (paper) or "all" (mean CE over K passes).
        class_weights: optional CE weight per class [C] (``train.class_weights``), held as a
            non-persistent buffer: it follows the model's device and is not in saved weights.
    """

    def __init__(  # the parts (encoders, head, loss) and the model's hyper-parameters, by keyword: built by build.build_model
        self,
        encoders: Mapping[str, Encoder],
        head: Head,
        contrastive: TurboLoss | None,
        *,
        dim: int,
        dropout: float,
        passes: int,
        forward_mode: Literal["batched", "sequential"] = "batched",
        ce_weight: float = 0.5,
        ce_passes: Literal["first", "all"] = "first",
        feature_norm: Literal["none", "batch", "layer"] = "none",
        contrastive_head: Literal["none", "mlp"] = "none",
        class_weights: Tensor | None = None,
    ):
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Dropout(dropout), nn.Linear(enc.output_dim, dim)) for m, enc in encoders.items()}
        )
        self.feature_norm = feature_norm
        if feature_norm != "none":  # only then, so the weights of runs without it keep their names
            norm = {"batch": GlobalBatchNorm1d, "layer": nn.LayerNorm}[feature_norm]  # batch: global statistics under torchrun
            self.feature_norms = nn.ModuleDict({m: norm(enc.output_dim) for m, enc in encoders.items()})
        if contrastive_head == "mlp":
            self.contrastive_heads = nn.ModuleDict(
                {m: nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)) for m in encoders}
            )
        self.contrastive_head = contrastive_head
        self.head = head
        self.contrastive = contrastive
        self.passes = passes
        self.forward_mode = forward_mode
        self.ce_weight = ce_weight
        self.ce_passes = ce_passes
        self.register_buffer("class_weights", class_weights, persistent=False)  # [C] or None

    @staticmethod
    def presence(batch: Mapping[str, Batch]) -> dict[str, Tensor] | None:
        """{m: bool [B]} for the modalities that miss some item of the batch; None when it is complete."""
        present = {m: b[PRESENT_KEY] for m, b in batch.items() if PRESENT_KEY in b}
        return present or None

    def views(self, batch: Mapping[str, Batch], passes: int | None = None) -> dict[str, Tensor]:
        """Projected views of every modality: {m: [K, B, d]} (not normalised; zeros for missing items)."""
        K = self.passes if passes is None else passes
        out = {}
        for m in self.modalities:
            b, mask = batch[m], batch[m].get(PRESENT_KEY)
            if mask is not None:
                b = {key: t for key, t in b.items() if key != PRESENT_KEY}  # n present items
            encode = lambda b, m=m: self.project(m, self.encode(m, b))  # [n, d]  # noqa: E731
            if mask is not None and not bool(mask.any()):  # nobody has m: nothing to encode
                w = self.projections[m][-1].weight
                out[m] = w.new_zeros(K, mask.numel(), w.shape[0])
                continue
            if self.forward_mode == "batched" or K == 1:
                h = encode(repeat_batch(b, K))  # [K*n, d]
                h = h.view(K, -1, h.shape[-1])  # [K, n, d]
            else:
                h = torch.stack([encode(b) for _ in range(K)])  # [K, n, d]
            if mask is not None:  # scatter the n present items into the batch: [K, B, d]
                idx = mask.nonzero().squeeze(1)
                h = h.new_zeros(K, mask.numel(), h.shape[-1]).index_copy(1, idx, h)
            out[m] = h
        return out

    def encode(self, m: str, b: Batch) -> Tensor:
        """Modality m's pooled encoder output [n, dim_m]: the encoder on a collated batch, or precomputed
        (train.frozen_features: cache): the features themselves, or the encoder's trainable part on its
        cached frozen part's outputs."""
        if FEATURES_KEY in b:
            return b[FEATURES_KEY]
        if FROZEN_PART_KEY in b:
            return self.encoders[m].trainable_part({k: t for k, t in b.items() if k != FROZEN_PART_KEY})
        return self.encoders[m](b)

    def project(self, m: str, features: Tensor) -> Tensor:
        """Modality m's pooled encoder output [n, dim_m] -> its view h_m [n, d] (feature norm, dropout, linear)."""
        if self.feature_norm != "none":
            norm = self.feature_norms[m]
            if isinstance(norm, nn.BatchNorm1d) and self.training and features.shape[0] < 2 and not current_world().distributed:
                # one item (e.g. the only one of a batch that has modality m): no batch statistics, use the running ones
                features = F.batch_norm(features, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
            else:
                features = norm(features)
        return self.projections[m](features)

    def contrastive_views(self, views: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The views the contrastive terms compare: g_m(h_m) with a contrastive head, else h_m itself. {m: [K, B, d]}."""
        if self.contrastive_head == "none":
            return dict(views)
        return {m: self.contrastive_heads[m](v) for m, v in views.items()}

    def logits(self, views: Mapping[str, Tensor], pass_index: int = 0, present: Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits [B, C] from the views {m: [K, B, d]} of one pass (present: see :meth:`presence`)."""
        one = {m: v[pass_index] for m, v in views.items()}
        present = {m: p for m, p in (present or {}).items() if not bool(p.all())}
        if not present:
            return self.head(one)
        if not getattr(self.head, "handles_missing", False):
            m, mask = next(iter(present.items()))
            item = int((~mask).nonzero()[0])
            raise DataError(
                f"Modality {m!r} is missing for item {item} of the batch, but the head {type(self.head).__name__} "
                f"cannot handle missing modalities (it does not set handles_missing = True). Use the head "
                f"concat_linear or mean_linear, or give every item every modality."
            )
        return self.head(one, present=present)

    def forward(self, batch: Mapping[str, Batch], labels: Tensor | None = None) -> Tensor | StepOutput:
        """Without labels, inference: logits [B, C] from one pass (use eval() to switch dropout
        off). With labels [B], a training step (:meth:`step`), so DistributedDataParallel, which
        wraps forward, can run it."""
        if labels is not None:
            return self.step(batch, labels)
        return self.logits(self.views(batch, passes=1), present=self.presence(batch))

    def step(self, batch: Mapping[str, Batch], labels: Tensor) -> StepOutput:
        """One training forward: eq. 6 on a batch with labels [B]."""
        return self.objective(self.views(batch), labels, self.presence(batch))

    def objective(self, views: Mapping[str, Tensor], labels: Tensor, present: Mapping[str, Tensor] | None = None) -> StepOutput:
        """Eq. 6 from the views {m: [K, B, d]}: the head's CE (pass 1, or the mean over passes) and
        the Turbo loss. Split from :meth:`step` so gradient caching can call it on cached views."""
        if self.ce_passes == "all":
            all_logits = [self.logits(views, k, present) for k in range(self.passes)]
            ce = torch.stack([F.cross_entropy(lg, labels, weight=self.class_weights) for lg in all_logits]).mean()
            logits = all_logits[0]
        else:
            logits = self.logits(views, 0, present)
            ce = F.cross_entropy(logits, labels, weight=self.class_weights)
        if self.contrastive is None:
            return StepOutput(loss=ce, ce=ce, contrastive=torch.zeros_like(ce), logits=logits)
        if labels.shape[0] < 2 and not current_world().distributed:
            # one item (longer than train.max_batch_seconds, so alone in its batch): InfoNCE has no negatives
            return StepOutput(loss=self.ce_weight * ce, ce=ce, contrastive=torch.zeros_like(ce), logits=logits)
        cviews = self.contrastive_views(views)
        out = self.contrastive(cviews, present) if present is not None else self.contrastive(cviews)
        loss = self.ce_weight * ce + (1.0 - self.ce_weight) * out.total
        return StepOutput(loss=loss, ce=ce, contrastive=out.total, terms=out.terms, logits=logits)


@dataclass
class EvalPass:
    """One eval-mode pass over batches: class probabilities [N, C], the projected views
    {m: [N, d]} (float32, not normalised; zero rows where an item lacks m), presence masks
    {m: bool [N]} (all True without missing data) and the batches' labels [N]; on the CPU."""

    probs: Tensor
    views: dict[str, Tensor]
    present: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def map(self, fn: Callable[[Any], Any]) -> "EvalPass":
        """The same pass with ``fn`` applied to every array (e.g. ``Tensor.numpy`` and ``torch.from_numpy``)."""
        return EvalPass(fn(self.probs), {m: fn(v) for m, v in self.views.items()},
                        {m: fn(p) for m, p in self.present.items()}, fn(self.labels))

    @staticmethod
    def concat(parts: Sequence["EvalPass"]) -> "EvalPass":
        """The rows of ``parts`` (at least one), one part after the other."""
        first = parts[0]
        return EvalPass(torch.cat([p.probs for p in parts]), {m: torch.cat([p.views[m] for p in parts]) for m in first.views},
                        {m: torch.cat([p.present[m] for p in parts]) for m in first.present}, torch.cat([p.labels for p in parts]))


def eval_batch(model: TurboModel, batch: Any, device: torch.device | str, *, contrastive: bool = False) -> EvalPass:
    """One forward over a ``LabelledBatch`` (the model in eval mode and gradients off are the caller's
    part): its probabilities, views (through the contrastive heads when ``contrastive`` and the model
    has them), presence masks and labels, on the CPU."""
    batch = batch.to(device)
    v = model.views(batch.inputs, passes=1)  # {m: [1, B, d]}
    mask = TurboModel.presence(batch.inputs) or {}
    probs = model.logits(v, present=mask or None).float().softmax(-1).cpu()
    kept = model.contrastive_views(v) if contrastive else v
    views = {m: kept[m][0].float().cpu() for m in model.modalities}
    present = {m: mask[m].cpu() if m in mask else torch.ones(v[m].shape[1], dtype=torch.bool) for m in model.modalities}
    return EvalPass(probs, views, present, batch.labels.cpu())


@torch.no_grad()
def eval_pass(model: TurboModel, batches: Iterable, device: torch.device | str, advance: Callable[[int], None] | None = None,
              *, contrastive: bool = False) -> EvalPass | None:
    """One forward per batch (``LabelledBatch``, :func:`eval_batch`), dropout off: the logits and the
    views come from the same pass. ``contrastive``: the views the contrastive terms compare (through
    the contrastive heads, when the model has them) instead of the classifier's. None when there is
    no batch. ``advance(n)`` is called after each batch of n items."""
    model.eval()
    parts = []
    for batch in batches:
        parts.append(eval_batch(model, batch, device, contrastive=contrastive))
        if advance is not None:
            advance(len(batch))
    return EvalPass.concat(parts) if parts else None
