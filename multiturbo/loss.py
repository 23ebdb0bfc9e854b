"""The Turbo objective: InfoNCE over every pair of dropout views, in-modal and cross-modal.

Each modality gives K views of a batch (one per dropout pass), stacked as [K, B, d]; views are
ordered (modality in dict order, pass 1..K). Pair families (paper eq. 4 for M = 2, K = 2):

- in-modal:    (m, k) ~ (m, l), k < l                      M * K(K-1)/2 terms
- cross-modal: (m, k) ~ (n, l), m before n, every k and l   M(M-1)/2 * K^2 terms

Each term is InfoNCE(X, Y) = mean_i -log softmax_j(cos(x_i, y_j) / tau)[i]: positives on the
diagonal, the rest of the batch as negatives.

How: the partners of every view form a contiguous range of later views (all later views, the later
passes of its modality, or the views of later modalities), so one matmul per view gives all its
B x B blocks; one exp of a block gives its row and column sums, i.e. both directions of a
symmetric loss, and the backward is written out by hand (see _TurboPairs). On 2 CPU cores this
beat one call per pair (the paper's Listing 1) by 1.7-6.5x and plain-autograd versions of the same
idea (one matmul per view, or one batched matmul of gathered pairs) by 1.2-2x;
benchmarks/bench_turbo_loss.py measures it against the FLOP floor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_REDUCTIONS = ("sum", "mean")
_LOG2E = 1.0 / math.log(2.0)
_DEFAULTS = dict(in_modal=True, cross_modal=True, symmetric=True, reduction="sum", in_modal_weight=1.0, cross_modal_weight=1.0)


@dataclass
class TurboLossOutput:
    """total: scalar to backpropagate. terms: every pair's loss by name (detached scalars, for logging)."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def pair_names(modalities: Sequence[str], passes: int, in_modal: bool, cross_modal: bool) -> list[str]:
    """Names of the terms, in computation order: ``f"{m}{k}~{n}{l}"`` with 1-based passes.

    >>> pair_names(["audio", "text"], 2, True, True)
    ['audio1~audio2', 'audio1~text1', 'audio1~text2', 'audio2~text1', 'audio2~text2', 'text1~text2']
    """
    views = [(m, k) for m in modalities for k in range(1, passes + 1)]
    return [
        f"{m}{k}~{n}{l}"
        for a, (m, k) in enumerate(views)
        for n, l in views[a + 1 :]
        if (in_modal if m == n else cross_modal)
    ]


def info_nce(x: Tensor, y: Tensor, temperature: float | Tensor = 0.07, symmetric: bool = True) -> Tensor:
    """Plain single-pair InfoNCE. x, y: [B, d], not normalised; row i of x and y are positives.

    One-directional: x is the anchor, mean_i CE(cos(x_i, y_.) / tau, i). Symmetric: the average of
    x->y and y->x. Returns a scalar.
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"info_nce needs two [B, d] tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    _check_temperature(temperature)
    logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / temperature  # [B, B]
    target = torch.arange(x.shape[0], device=x.device)  # [B]
    loss = F.cross_entropy(logits, target)
    return 0.5 * (loss + F.cross_entropy(logits.T, target)) if symmetric else loss


def turbo_loss(
    views: Mapping[str, Tensor],
    *,
    temperature: float | Tensor = 0.07,
    in_modal: bool = True,
    cross_modal: bool = True,
    symmetric: bool = True,
    reduction: Literal["sum", "mean"] = "sum",
    in_modal_weight: float = 1.0,
    cross_modal_weight: float = 1.0,
) -> TurboLossOutput:
    """The Turbo loss (paper eq. 4, generalised to M modalities and K passes).

    views: modality -> [K, B, d] (not normalised; same K, B, d for every modality; dict order
    is modality order). temperature: tau > 0, a float or a 0-d tensor (gradients flow to it).
    symmetric: each term is the average of X->Y and Y->X (as CLIP/CLAP) so that both views of a
    pair, and both modalities of a cross-modal pair, serve as anchors; the paper's formula is the
    one-directional X->Y (first-named view is the anchor), available with symmetric=False.
    reduction: "sum" gives in_modal_weight * sum(in-modal) + cross_modal_weight * sum(cross-modal)
    (the paper with weights 1); "mean" divides that by the number of terms.
    With no terms (families off, or K = 1 with one modality), total is a zero that is still part
    of the graph, and terms is empty.
    """
    _check_temperature(temperature)
    _check_options(reduction)
    return _turbo_loss(views, temperature, in_modal, cross_modal, symmetric, reduction, in_modal_weight, cross_modal_weight)


def _turbo_loss(views, tau, in_modal, cross_modal, symmetric, reduction, in_modal_weight, cross_modal_weight):
    modalities = list(views)
    K, B, d = _check_views(views)
    names = pair_names(modalities, K, in_modal, cross_modal)
    if not names:
        return TurboLossOutput(total=sum(v.sum() * 0 for v in views.values()), terms={})
    if B < 2:
        raise ValueError(
            f"InfoNCE needs negatives: the batch has B = {B} item(s), so each anchor has no other item to "
            "contrast with. Use a batch size of at least 2 (drop_last=True avoids a last batch of 1)."
        )
    V = len(modalities) * K  # views, in (modality, pass) order
    ranges = [(i, *_partners(i, K, V, in_modal, cross_modal)) for i in range(V)]
    ranges = [(i, lo, hi) for i, lo, hi in ranges if hi > lo]
    tau = tau.to(views[modalities[0]].device) if isinstance(tau, Tensor) else float(tau)
    per_pair = _TurboPairs.apply(tau, ranges, 0.5 if symmetric else 0.0, *views.values())  # [P] in `names` order
    if in_modal_weight == cross_modal_weight:
        total = per_pair.sum() * in_modal_weight
    else:  # pair (i, j) is in-modal when both views belong to the same modality
        w = [in_modal_weight if i // K == j // K else cross_modal_weight for i, lo, hi in ranges for j in range(lo, hi)]
        total = (per_pair * per_pair.new_tensor(w)).sum()
    if reduction == "mean":
        total = total / len(names)
    return TurboLossOutput(total=total, terms=dict(zip(names, per_pair.detach().unbind())))


def _partners(i: int, K: int, V: int, in_modal: bool, cross_modal: bool) -> tuple[int, int]:
    """The views paired with view i (the anchor) always form a contiguous range [lo, hi) of later views."""
    end_of_modality = (i // K + 1) * K
    lo = i + 1 if in_modal else end_of_modality
    hi = V if cross_modal else end_of_modality
    return lo, hi


class _TurboPairs(torch.autograd.Function):
    """Every needed pair's InfoNCE, normalisation and temperature included. First-order gradients only.

    xs: M raw views [K, B, d] (V = M*K); tau: 0-d tensor or float; ranges: (i, lo, hi), anchor view i pairs
    with views lo..hi-1; wc: weight of the y->x direction (0.5 symmetric, 0 one-directional).
    Returns [P]: (1-wc) mean_a lse_b s[b,a] + wc mean_b lse_a s[b,a] - mean_a s[a,a], s = y x^T / tau.
    As |s| <= 1/tau, exp(s) cannot overflow or underflow while 1/tau + log B stays inside the
    dtype's exponent range: then one exp, no max-shift, serves both directions (else logsumexp).
    The backward builds dL/ds in one pass per block and accumulates two matmuls per anchor into one
    buffer (autograd would zero-fill a view-sized slice gradient per block and add them up).
    """

    @staticmethod
    def forward(ctx, tau: Tensor | float, ranges: list[tuple[int, int, int]], wc: float, *xs: Tensor) -> Tensor:
        K, B, d = xs[0].shape
        dtype = functools.reduce(torch.promote_types, [x.dtype for x in xs], torch.float32)  # float32 at least
        inv_tau = 1.0 / (tau.item() if isinstance(tau, Tensor) else tau)
        fast = inv_tau + math.log(B) < 0.9 * math.log(torch.finfo(dtype).max)
        with torch.autocast(xs[0].device.type, enabled=False):
            z = xs[0].new_empty((len(xs) * K, B, d), dtype=dtype)  # [V, B, d] normalised views
            norm = z.new_empty((len(xs) * K, B, 1))  # [V, B, 1]
            for m, x in enumerate(xs):  # z = x / |x| (as F.normalize), written in place of a stack
                v = slice(m * K, (m + 1) * K)
                torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dtype, out=norm[v]).clamp_min_(1e-12)
                torch.div(x, norm[v], out=z[v])
            saved, out = [], []
            scale = inv_tau * (_LOG2E if fast else 1.0)  # fast: s in base-2 units, exp2 is ~2x cheaper than exp
            for i, lo, hi in ranges:  # s[p, b, a] = y^p_b . x_a * scale, x = view i, y^p = view lo + p
                n = hi - lo
                s = torch.mm(z[lo:hi].flatten(0, 1), (z[i] * scale).T).view(n, B, B)  # [n, B(y), B(x)]
                loss = s.diagonal(dim1=1, dim2=2).mean(1) * (-inv_tau / scale)  # [n] positives
                e = s.exp2_() if fast else s  # [n, B, B]  exp(natural s), or s
                lr = e.sum(1).log_() if fast else s.logsumexp(1)  # [n, B(x)] x->y: over the y of each anchor x
                loss += (1 - wc) * lr.mean(1)
                lc = (e.sum(2).log_() if fast else s.logsumexp(2)) if wc else lr  # [n, B(y)] y->x
                if wc:
                    loss += wc * lc.mean(1)
                saved += [e, lr, lc]
                out.append(loss)
        ctx.save_for_backward(norm, z, *saved)
        ctx.dtypes = [x.dtype for x in xs]
        ctx.ranges, ctx.wc, ctx.fast, ctx.inv_tau = ranges, wc, fast, inv_tau
        return torch.cat(out)  # [P]

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # g: [P]
        norm, z, *saved = ctx.saved_tensors
        wc, fast, inv_tau = ctx.wc, ctx.fast, ctx.inv_tau
        V, B, d = z.shape
        gz = torch.zeros_like(z)  # [V, B, d]
        p = 0
        for k, (i, lo, hi) in enumerate(ctx.ranges):
            e, lr, lc = saved[3 * k : 3 * k + 3]
            n = hi - lo
            gp = g[p : p + n] / B  # [n]
            p += n
            # dL/ds = (1-wc) gp softmax over y + wc gp softmax over x - gp on the diagonal
            if fast:  # softmax = exp(s) / sum = e * exp(-lse)
                a = ((1 - wc) * gp.unsqueeze(1) * (-lr).exp()).unsqueeze(1)  # [n, 1, B(x)]
                c = (wc * gp.unsqueeze(1) * (-lc).exp()).unsqueeze(2)  # [n, B(y), 1]
                gs = (a + c).mul_(e) if wc else e * a  # [n, B, B]
            else:
                gs = (e - lr.unsqueeze(1)).exp_().mul_(((1 - wc) * gp)[:, None, None])
                if wc:
                    gs.addcmul_((e - lc.unsqueeze(2)).exp_(), (wc * gp)[:, None, None])
            gs.diagonal(dim1=1, dim2=2).sub_(gp.unsqueeze(1))
            gs = gs.view(n * B, B)
            gz[lo:hi].view(n * B, d).addmm_(gs, z[i], alpha=inv_tau)  # s = y x^T / tau
            gz[i].addmm_(gs.T, z[lo:hi].flatten(0, 1), alpha=inv_tau)
        # s is bilinear in z, so <gz, z> = 2 <dL/ds, s> and dL/dtau = -<dL/ds, s> / tau
        dots = (gz * z).sum(-1, keepdim=True)  # [V, B, 1]
        g_tau = -0.5 * inv_tau * dots.sum() if ctx.needs_input_grad[0] else None
        gx = gz.addcmul_(z, dots, value=-1).div_(norm)  # through z = x / |x|
        K = len(z) // len(ctx.dtypes)
        return g_tau, None, None, *(gx[m * K : (m + 1) * K].to(t) for m, t in enumerate(ctx.dtypes))


def _check_temperature(temperature: float | Tensor) -> None:
    if isinstance(temperature, Tensor):
        if temperature.ndim != 0:
            raise ValueError(f"temperature must be a float or a 0-d tensor, got a tensor of shape {tuple(temperature.shape)}.")
    if not temperature > 0:  # also catches NaN
        raise ValueError(
            f"temperature must be > 0, got {float(temperature)}: the logits are cosine similarities divided by "
            "it. Use a small positive value such as 0.07 (CLIP's initial value)."
        )


def _check_options(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def _check_views(views: Mapping[str, Tensor]) -> tuple[int, int, int]:
    """Returns (K, B, d) shared by every modality, or raises a ValueError naming the culprit."""
    if len(views) == 0:
        raise ValueError("views is empty: pass a mapping modality -> tensor [K passes, B items, d dims].")
    for m, v in views.items():
        if not isinstance(v, Tensor) or v.ndim != 3:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"views[{m!r}] must be a tensor [K passes, B items, d dims], got {shape}. "
                "Stack the K dropout passes of a modality along a new first dimension (torch.stack)."
            )
    shapes = {m: tuple(v.shape) for m, v in views.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{m}: {s}" for m, s in shapes.items())
        raise ValueError(
            f"All modalities must have the same [K passes, B items, d dims], got {listing}. "
            "Project every modality to the same dimension d and run the same number of passes on the same batch."
        )
    return next(iter(shapes.values()))


class TurboLoss(nn.Module):
    """The Turbo loss with its temperature: fixed (a buffer) or learnable (log-parameterised).

    A learnable temperature is clamped at min_temperature like open_clip's logit_scale (there:
    logit scale <= 100, i.e. tau >= 0.01): the value used is never below it, and in training the
    parameter itself is pulled back to the bound so it can move up again. loss_options are the
    keyword options of :func:`turbo_loss`.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = False, min_temperature: float = 0.01, **loss_options):
        super().__init__()
        unknown = sorted(set(loss_options) - set(_DEFAULTS))
        if unknown:
            raise TypeError(f"TurboLoss got unknown option(s) {unknown}; the known ones are {list(_DEFAULTS)}.")
        if not min_temperature > 0 or not temperature >= min_temperature:
            raise ValueError(
                f"TurboLoss needs 0 < min_temperature <= temperature, got temperature={temperature}, "
                f"min_temperature={min_temperature}. Lower min_temperature or raise temperature."
            )
        self.options = {k: loss_options.get(k, v) for k, v in _DEFAULTS.items()}
        _check_options(self.options["reduction"])
        self.learnable = learnable
        self.min_temperature = min_temperature
        log_t = torch.tensor(math.log(temperature))
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> Tensor:
        """The current temperature (0-d tensor), clamped at min_temperature."""
        return self.log_temperature.clamp(min=math.log(self.min_temperature)).exp()

    def forward(self, views: Mapping[str, Tensor]) -> TurboLossOutput:
        """views: modality -> [K, B, d]. See :func:`turbo_loss`."""
        tau = self.temperature
        if self.learnable and self.training:  # as open_clip clamps logit_scale after each step
            self.log_temperature.data.clamp_(min=math.log(self.min_temperature))
            tau = self.log_temperature.exp()  # at the bound, the gradient still flows (it may move up)
        return _turbo_loss(views, tau, **self.options)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.detach().item():.4g}, learnable={self.learnable}, min_temperature={self.min_temperature}"
