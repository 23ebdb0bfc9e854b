"""The Turbo objective: InfoNCE over every pair of dropout views, in-modal and cross-modal.

Each modality gives K views of a batch (one per dropout pass), stacked as [K, B, d]; views are
ordered (modality in dict order, pass 1..K). Pair families (paper eq. 4 for M = 2, K = 2):

- in-modal:    (m, k) ~ (m, l), k < l                      M * K(K-1)/2 terms
- cross-modal: (m, k) ~ (n, l), m before n, every k and l   M(M-1)/2 * K^2 terms

Each term is InfoNCE(X, Y) = mean_i -log softmax_j(cos(x_i, y_j) / tau)[i]: positives on the
diagonal, the rest of the batch as negatives.

How: the partners of a view form a contiguous range of later views, so one matmul per anchor view
writes all its B x B blocks into one [P, B, B] buffer, each elementwise step runs once over it, one
exp gives each block's row and column sums (both directions), and the backward is written out
(_TurboPairs). benchmarks/bench_turbo_loss.py compares it with one call per pair and the FLOP floor.

Across processes (torchrun): every rank's views are all-gathered with gradient and each rank
computes its own rows against all columns (multiturbo.distributed.gathered_turbo_loss), so the
negatives span the global batch; the logged per-pair values are this rank's rows.

Missing modalities: ``present`` maps a modality to a bool mask [B] (True = the item has it). A term
of views of modalities m and n then only uses the items present in both: they are its anchors and
its negatives, a missing item is neither (masked, not zero-filled). A term with fewer than 2 such
items contributes nothing (and is left out of ``terms``). Complete batches take the path above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .distributed import current_world, gathered_turbo_loss
from .errors import MultiturboError

_LOG2E = 1.0 / math.log(2.0)


@dataclass(frozen=True)
class LossOptions:
    """What the Turbo loss computes, besides the temperature (see :func:`turbo_loss`)."""

    in_modal: bool = True
    cross_modal: bool = True
    symmetric: bool = True
    reduction: Literal["sum", "mean"] = "sum"
    in_modal_weight: float = 1.0
    cross_modal_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)

    @classmethod
    def of(cls, owner: str, options: Mapping[str, object]) -> "LossOptions":
        """From keyword options, naming ``owner`` when one is unknown."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"{owner} got unknown option(s) {unknown}; the known ones are {known}.")
        return cls(**options)


@dataclass
class TurboLossOutput:
    """total: scalar to backpropagate. terms: every pair's loss by name (detached 0-d tensors, for logging)."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def pair_names(modalities: Sequence[str], passes: int, in_modal: bool, cross_modal: bool) -> list[str]:
    """Names of the terms, in computation order: ``f"{m}{k}~{n}{l}"`` with 1-based passes.

    >>> pair_names(["audio", "text"], 2, True, True)
    ['audio1~audio2', 'audio1~text1', 'audio1~text2', 'audio2~text1', 'audio2~text2', 'text1~text2']
    """
    views = [(m, k) for m in modalities for k in range(1, passes + 1)]
    return [f"{m}{k}~{n}{l}" for a, (m, k) in enumerate(views) for n, l in views[a + 1 :] if (in_modal if m == n else cross_modal)]


def term_modalities(name: str, modalities: Sequence[str]) -> tuple[str, str]:
    """The two modalities of a term named by :func:`pair_names` (a modality name + its 1-based pass).

    >>> term_modalities("audio1~text2", ["audio", "text"])
    ('audio', 'text')

    Names that themselves end in digits work ("cam1" pass 2 is "cam12"); where two modality names
    could both match a part, the longer one wins."""

    def of(part: str) -> str:
        matches = [m for m in modalities if part.startswith(m) and part[len(m):].isdigit()]
        if not matches:
            raise ValueError(f"{part!r} (of the term {name!r}) is none of the modalities {list(modalities)} with a pass number")
        return max(matches, key=len)

    a, b = name.split("~", 1)
    return of(a), of(b)


def info_nce(x: Tensor, y: Tensor, temperature: float | Tensor = 0.07, symmetric: bool = True) -> Tensor:
    """Plain single-pair InfoNCE of x, y: [B, d] (not normalised; rows i are positives) -> scalar.

    One-directional: x is the anchor, mean_i CE(cos(x_i, y_.) / tau, i). Symmetric: mean of x->y and y->x.
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"info_nce needs two [B, d] tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    _check_temperature(temperature)
    logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature  # [B, B]
    target = torch.arange(x.shape[0], device=x.device)  # [B]
    loss = F.cross_entropy(logits, target)
    return 0.5 * (loss + F.cross_entropy(logits.T, target)) if symmetric else loss


# The functional API takes LossOptions' fields as keywords (as F.cross_entropy takes its options);
# TurboLoss and the training path pass one LossOptions.
def turbo_loss(views: Mapping[str, Tensor], *, temperature: float | Tensor = 0.07, in_modal: bool = True,
               cross_modal: bool = True, symmetric: bool = True, reduction: Literal["sum", "mean"] = "sum",
               in_modal_weight: float = 1.0, cross_modal_weight: float = 1.0,
               present: Mapping[str, Tensor] | None = None) -> TurboLossOutput:
    """The Turbo loss (paper eq. 4, generalised to M modalities and K passes).

    views: modality -> [K, B, d], not normalised; same K, B, d for every modality; dict order is
    modality order. temperature: tau > 0, a float or a 0-d tensor (gradients flow to it).
    symmetric (default): each term averages X->Y and Y->X, as CLIP/CLAP, so both views of a pair
    (and both modalities of a cross-modal pair) serve as anchors; the paper's formula is the
    one-directional X->Y (the first-named view is the anchor): symmetric=False.
    reduction: "sum" = in_modal_weight * sum(in-modal) + cross_modal_weight * sum(cross-modal)
    (the paper: weights 1); "mean" divides that by the number of terms.
    With no terms (both families off, or one modality with K = 1) total is a zero that is still
    part of the graph and terms is empty. The loss runs in float32 at least; first-order gradients
    only; a tensor temperature is read once (a device sync on GPU).
    present: optional {modality: bool [B]} for batches with missing modalities (a modality not in
    it is complete; the rows of a missing item's views are ignored, whatever they hold). Each term
    then runs on the items present in both of its modalities; a term with fewer than 2 of them
    contributes nothing and is not in ``terms``; reduction "mean" divides by the number of terms
    that contribute.
    """
    _check_temperature(temperature)
    options = LossOptions(in_modal, cross_modal, symmetric, reduction, in_modal_weight, cross_modal_weight)
    return _turbo_loss(views, temperature, options, present)


def _turbo_loss(views: Mapping[str, Tensor], tau: float | Tensor, o: LossOptions, present: Mapping[str, Tensor] | None = None) -> TurboLossOutput:
    """turbo_loss after its option checks (TurboLoss checks once and passes a clamped temperature)."""
    K, B, d = _check_views(views)
    distributed = current_world().distributed
    if present is not None:
        present = _check_present(present, views, B)
        if present and distributed:
            raise MultiturboError("Items with missing modalities are not supported in a multi-process run yet (the gathered "
                                  "loss assumes complete batches). Train with one process, or give every item every modality.")
        if present:
            return _masked_turbo_loss(views, tau, o, present)
    names = pair_names(list(views), K, o.in_modal, o.cross_modal)
    if not names:
        return TurboLossOutput(total=sum(v.sum() * 0 for v in views.values()), terms={})
    if B < 2 and not distributed:  # under torchrun the other processes' items are negatives
        raise ValueError(f"InfoNCE needs negatives: the batch has B = {B} item(s), so an anchor has no other item to "
                         "contrast with. Use a batch size of at least 2 (drop_last=True avoids a last batch of 1).")
    V = len(views) * K  # views in (modality, pass) order; anchor i pairs with views lo..hi-1
    ranges = [(i, lo, hi) for i in range(V) for lo, hi in [_partners(i, K, V, o.in_modal, o.cross_modal)] if hi > lo]
    tau = tau.to(next(iter(views.values())).device) if isinstance(tau, Tensor) else float(tau)
    if distributed:  # this rank's rows against every rank's columns (open_clip's local loss)
        per_pair = gathered_turbo_loss(views, [(i, j) for i, lo, hi in ranges for j in range(lo, hi)], tau, symmetric=o.symmetric)
    else:
        per_pair = _TurboPairs.apply(tau, ranges, 0.5 if o.symmetric else 0.0, *views.values())  # [P], `names` order
    if o.in_modal_weight == o.cross_modal_weight:
        total = per_pair.sum() * o.in_modal_weight
    else:  # pair (i, j) is in-modal when both views belong to one modality
        w = [o.in_modal_weight if i // K == j // K else o.cross_modal_weight for i, lo, hi in ranges for j in range(lo, hi)]
        total = (per_pair * per_pair.new_tensor(w)).sum()
    if o.reduction == "mean":
        total = total / len(names)
    return TurboLossOutput(total=total, terms=dict(zip(names, per_pair.detach().unbind())))


def _masked_turbo_loss(views: Mapping[str, Tensor], tau: float | Tensor, o: LossOptions, present: Mapping[str, Tensor]) -> TurboLossOutput:
    """The loss with missing items: one _TurboPairs call per modality (in-modal) and per modality
    pair (cross-modal), each on the sub-batch of items present in all of its modalities."""
    K = next(iter(views.values())).shape[0]
    mods = list(views)
    everyone = None
    groups = []  # (modalities, in-modal?, weight)
    for a, m in enumerate(mods):
        if o.in_modal and K > 1:
            groups.append(([m], True, o.in_modal_weight))
        if o.cross_modal:
            groups.extend(([m, n], False, o.cross_modal_weight) for n in mods[a + 1 :])
    tau = tau.to(next(iter(views.values())).device) if isinstance(tau, Tensor) else float(tau)
    terms, totals = {}, []
    for group, in_family, weight in groups:
        masks = [present[m] for m in group if m in present]
        if masks:
            keep = masks[0] if len(masks) == 1 else masks[0] & masks[1]
            idx = keep.nonzero().squeeze(1)  # [n] items present in every modality of the group
            if idx.numel() < 2:
                continue  # no negatives: the term contributes nothing
            sub = [views[m].index_select(1, idx) for m in group]
        else:
            if everyone is None:
                everyone = next(iter(views.values())).shape[1]
            if everyone < 2:
                continue
            sub = [views[m] for m in group]
        V = len(group) * K
        ranges = [(i, lo, hi) for i in range(V) for lo, hi in [_partners(i, K, V, in_family, not in_family)] if hi > lo]
        per_pair = _TurboPairs.apply(tau, ranges, 0.5 if o.symmetric else 0.0, *sub)
        totals.append(per_pair.sum() * weight)
        terms.update(zip(pair_names(group, K, in_family, not in_family), per_pair.detach().unbind()))
    order = pair_names(mods, K, o.in_modal, o.cross_modal)
    terms = {name: terms[name] for name in order if name in terms}
    if not totals:
        return TurboLossOutput(total=sum(v.sum() * 0 for v in views.values()), terms={})
    total = torch.stack(totals).sum()
    if o.reduction == "mean":
        total = total / len(terms)
    return TurboLossOutput(total=total, terms=terms)


def _check_present(present: Mapping[str, Tensor], views: Mapping[str, Tensor], B: int) -> dict[str, Tensor]:
    """The masks of the modalities that miss an item ({} when the batch is complete)."""
    unknown = sorted(set(present) - set(views))
    if unknown:
        raise ValueError(f"present names modalities that have no views: {unknown} (views: {list(views)}).")
    out = {}
    for m, p in present.items():
        if not isinstance(p, Tensor) or p.dtype != torch.bool or p.shape != (B,):
            got = f"{p.dtype} {tuple(p.shape)}" if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"present[{m!r}] must be a bool tensor [B] = [{B}], got {got}.")
        if not bool(p.all()):
            out[m] = p.to(views[m].device)
    return out


def _partners(i: int, K: int, V: int, in_modal: bool, cross_modal: bool) -> tuple[int, int]:
    """The views paired with anchor view i: always a contiguous range [lo, hi) of later views."""
    end_of_modality = (i // K + 1) * K
    return (i + 1 if in_modal else end_of_modality), (V if cross_modal else end_of_modality)


class _TurboPairs(torch.autograd.Function):
    """Every needed pair's InfoNCE, normalisation and temperature included. First-order gradients only.

    xs: M raw views [K, B, d] (V = M*K views); tau: 0-d tensor or float; ranges: (i, lo, hi), anchor
    view i pairs with views lo..hi-1; wc: weight of y->x (0.5 symmetric, 0 one-directional).
    Returns [P]: (1-wc) mean_a lse_b s[b,a] + wc mean_b lse_a s[b,a] - mean_a s[a,a], s = y x^T / tau.
    As |s| <= 1/tau, exp(s) can neither overflow nor underflow while 1/tau + log B stays inside the
    dtype's exponent range: then one exp2 (cheaper than exp), with no max-shift, serves both
    directions; else logsumexp. The backward builds dL/ds in one pass and accumulates two matmuls
    per anchor into one buffer (autograd would zero-fill a [V, B, d] gradient per slice and add).
    """

    @staticmethod
    def forward(ctx, tau: Tensor | float, ranges: list[tuple[int, int, int]], wc: float, *xs: Tensor) -> Tensor:
        with torch.autocast(xs[0].device.type, enabled=False):
            z = torch.cat(xs)  # [V, B, d]
            z = z.to(torch.promote_types(z.dtype, torch.float32))
            V, B, d = z.shape
            inv_tau = 1.0 / (tau.item() if isinstance(tau, Tensor) else tau)
            fast = inv_tau + math.log(B) < 0.9 * math.log(torch.finfo(z.dtype).max)
            norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min_(1e-12)  # [V, B, 1]
            z.div_(norm)  # as F.normalize
            zf, za_t = z.view(V * B, d), z.transpose(1, 2) * (inv_tau * (_LOG2E if fast else 1.0))  # fast: base 2
            s = z.new_empty((sum(hi - lo for _, lo, hi in ranges) * B, B))  # [P*B(y), B(x)] all logits
            p = 0
            for i, lo, hi in ranges:  # blocks of anchor i: s[b, a] = y_b . x_a, x = view i, y = views lo..hi-1
                q, p = p, p + (hi - lo) * B
                torch.mm(zf[lo * B : hi * B], za_t[i], out=s[q:p])
            s = s.view(-1, B, B)  # [P, B(y), B(x)]
            loss = s.diagonal(dim1=1, dim2=2).mean(1).mul_(-1 / _LOG2E if fast else -1.0)  # [P] -positives
            if fast:
                s.exp2_()  # = exp(natural-unit logits)
                lr, lc = s.sum(1).log_(), s.sum(2).log_() if wc else None  # [P, B(x)], [P, B(y)]
            else:
                lr, lc = s.logsumexp(1), s.logsumexp(2) if wc else None
            loss += (1 - wc) * lr.mean(1)  # x->y: over the y of each anchor x
            if wc:
                loss += wc * lc.mean(1)  # y->x: over the x of each y
        ctx.save_for_backward(norm, z, s, lr, lc if wc else lr)
        ctx.dtypes, ctx.ranges, ctx.wc, ctx.fast, ctx.inv_tau = [x.dtype for x in xs], ranges, wc, fast, inv_tau
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # g: [P]
        norm, z, s, lr, lc = ctx.saved_tensors  # s: exp(logits) if fast, else logits
        wc, inv_tau = ctx.wc, ctx.inv_tau
        V, B, d = z.shape
        gp = (g / B).unsqueeze(1)  # [P, 1]
        # dL/ds = (1-wc) gp softmax over y + wc gp softmax over x - gp on the diagonal; softmax = e^s / e^lse
        if ctx.fast:
            a = ((1 - wc) * gp * (-lr).exp()).unsqueeze(1)  # [P, 1, B(x)]
            gs = (a + (wc * gp * (-lc).exp()).unsqueeze(2)).mul_(s) if wc else s * a  # [P, B, B]
        else:
            gs = (s - lr.unsqueeze(1)).exp_().mul_(((1 - wc) * gp).unsqueeze(2))
            if wc:
                gs.addcmul_((s - lc.unsqueeze(2)).exp_(), (wc * gp).unsqueeze(2))
        gs.diagonal(dim1=1, dim2=2).sub_(gp)
        gz = torch.zeros_like(z)  # [V, B, d]
        gzf, zf, gs = gz.view(V * B, d), z.view(V * B, d), gs.view(-1, B)  # gs: [P*B(y), B(x)]
        p = 0
        for i, lo, hi in ctx.ranges:
            q, p = p, p + (hi - lo) * B
            gzf[lo * B : hi * B].addmm_(gs[q:p], z[i], alpha=inv_tau)  # s = y x^T / tau
            gz[i].addmm_(gs[q:p].T, zf[lo * B : hi * B], alpha=inv_tau)
        # s is bilinear in z, so <gz, z> = 2 <dL/ds, s>, and dL/dtau = -<dL/ds, s> / tau
        dots = (gz * z).sum(-1, keepdim=True)  # [V, B, 1]
        g_tau = -0.5 * inv_tau * dots.sum() if ctx.needs_input_grad[0] else None
        gx = gz.addcmul_(z, dots, value=-1).div_(norm)  # through z = x / |x|
        return g_tau, None, None, *(gm.to(t) for gm, t in zip(gx.split(V // len(ctx.dtypes)), ctx.dtypes))


def _check_temperature(temperature: float | Tensor) -> None:
    if isinstance(temperature, Tensor) and temperature.ndim != 0:
        raise ValueError(f"temperature must be a float or a 0-d tensor, got a tensor of shape {tuple(temperature.shape)}.")
    if not temperature > 0:  # also catches NaN
        raise ValueError(f"temperature must be > 0, got {float(temperature)}: the logits are cosine similarities "
                         "divided by it. Use a small positive value such as 0.07 (CLIP's initial value).")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be one of ('sum', 'mean'), got {reduction!r}.")


def _check_views(views: Mapping[str, Tensor]) -> tuple[int, int, int]:
    """(K, B, d) shared by every modality, or a ValueError naming the culprit."""
    if len(views) == 0:
        raise ValueError("views is empty: pass a mapping modality -> tensor [K passes, B items, d dims].")
    for m, v in views.items():
        if not isinstance(v, Tensor) or v.ndim != 3:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"views[{m!r}] must be a tensor [K passes, B items, d dims], got {got}. "
                             "Stack the K dropout passes of a modality along a new first dimension (torch.stack).")
    shapes = {m: tuple(v.shape) for m, v in views.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{m}: {s}" for m, s in shapes.items())
        raise ValueError(f"All modalities must have the same [K passes, B items, d dims], got {listing}. "
                         "Project every modality to the same d and run the same number of passes on the same batch.")
    return next(iter(shapes.values()))


class TurboLoss(nn.Module):
    """The Turbo loss with its temperature: fixed (a buffer) or learnable (log-parameterised).

    A learnable temperature is clamped at min_temperature like open_clip's logit_scale (there
    logit scale <= 100, i.e. tau >= 0.01): the value used is never below it, and in training the
    forward pulls the parameter back to the bound, where it still gets gradients and can move up.
    loss_options are the keyword options of :func:`turbo_loss`.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = False, min_temperature: float = 0.01, **loss_options):
        super().__init__()
        self.options = LossOptions.of("TurboLoss", loss_options)
        if not 0 < min_temperature <= temperature:
            raise ValueError(f"TurboLoss needs 0 < min_temperature <= temperature, got temperature={temperature}, "
                             f"min_temperature={min_temperature}. Lower min_temperature or raise temperature.")
        self.learnable, self.min_temperature = learnable, min_temperature
        log_t = torch.tensor(math.log(temperature))
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> Tensor:
        """The current temperature (0-d tensor), clamped at min_temperature."""
        return self.log_temperature.clamp(min=math.log(self.min_temperature)).exp()

    def forward(self, views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None) -> TurboLossOutput:
        """views: modality -> [K, B, d]; present: optional {modality: bool [B]}. See :func:`turbo_loss`."""
        tau = self.temperature
        if self.learnable and self.training:  # as open_clip clamps logit_scale after each step
            self.log_temperature.data.clamp_(min=math.log(self.min_temperature))
            tau = self.log_temperature.exp()  # no clamp here, so the gradient flows at the bound
        return _turbo_loss(views, tau, self.options, present)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():.4g}, learnable={self.learnable}, min_temperature={self.min_temperature}"
