"""The Turbo model: encoders keyed by modality, projections into a shared space, a head.

Shapes: B items, K passes, d shared dimension, C classes, M modalities.

    batch {m: encoder batch [B, ...]}
      -> repeat K times along dim 0 -> [K*B, ...]          (one forward, K dropout masks)
      -> encoder_m -> [K*B, dim_m] -> dropout + linear -> [K*B, d] -> views_m [K, B, d]
    head({m: views_m[0]}) -> logits [B, C]                   (paper eq. 5, pass 1)
    loss = lambda * CE + (1 - lambda) * turbo_loss(views)   (paper eq. 6)

Missing modalities: when some items of a batch lack modality m, the collated batch of m holds
only the n present items plus ``batch[m][PRESENT_KEY]``, a bool mask [B]. The encoder runs on
the n items only; their views are scattered into [K, B, d] (zeros at the missing rows), the loss
leaves the missing items out of every term that involves m, and the head gets the masks
(heads declare ``handles_missing``; a head that does not is an error naming the modality and item).
A complete modality carries no mask and takes the plain path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import Batch, Encoder
from .errors import DataError
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
    ):
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Dropout(dropout), nn.Linear(enc.output_dim, dim)) for m, enc in encoders.items()}
        )
        self.head = head
        self.contrastive = contrastive
        self.passes = passes
        self.forward_mode = forward_mode
        self.ce_weight = ce_weight
        self.ce_passes = ce_passes

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
            encode = lambda b, m=m: self.projections[m](self.encoders[m](b))  # [n, d]  # noqa: E731
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
            ce = torch.stack([F.cross_entropy(lg, labels) for lg in all_logits]).mean()
            logits = all_logits[0]
        else:
            logits = self.logits(views, 0, present)
            ce = F.cross_entropy(logits, labels)
        if self.contrastive is None:
            return StepOutput(loss=ce, ce=ce, contrastive=torch.zeros_like(ce), logits=logits)
        out = self.contrastive(views, present) if present is not None else self.contrastive(views)
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


@torch.no_grad()
def eval_pass(model: TurboModel, batches: Iterable, device: torch.device | str, advance: Callable[[], None] | None = None) -> EvalPass | None:
    """One forward per batch (``LabelledBatch``), dropout off: the logits and the views come from
    the same pass. None when there is no batch. ``advance`` is called after each batch."""
    model.eval()
    probs, labels = [], []
    views: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
    present: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
    for batch in batches:
        batch = batch.to(device)
        v = model.views(batch.inputs, passes=1)  # {m: [1, B, d]}
        mask = TurboModel.presence(batch.inputs) or {}
        probs.append(model.logits(v, present=mask or None).float().softmax(-1).cpu())
        for m in model.modalities:
            views[m].append(v[m][0].float().cpu())
            present[m].append(mask[m].cpu() if m in mask else torch.ones(v[m].shape[1], dtype=torch.bool))
        labels.append(batch.labels.cpu())
        if advance is not None:
            advance()
    if not probs:
        return None
    cat = lambda parts: {m: torch.cat(c) for m, c in parts.items()}  # noqa: E731
    return EvalPass(torch.cat(probs), cat(views), cat(present), torch.cat(labels))
