"""Collapse diagnostics of the contrastive space, computed on the validation split every epoch.

Contrastive training can fail silently: when the modalities (or the dropout views) share little
that the encoders can pick up, the cheapest way to lower InfoNCE is to map every item to one point.
Then every similarity in a block is equal and each term sits at exactly log(B), the loss of a
uniform guess among the B candidates, while the classifier may still learn (docs/training-dynamics.md).

Per epoch, from the validation split (one pass, dropout off, L2-normalised projected views
{m: [N, d]}):

- ``alignment`` of every modality pair and ``uniformity`` of every modality (Wang & Isola 2020,
  multiturbo.analysis): uniformity near 0 means the points of a modality have shrunk together;
- ``recall@1`` of cross-modal retrieval for every ordered pair, with its chance level 1/N;
- every training term divided by log(B) (``term_ratio``), B the training batch size: 1.0 is the
  value of a collapsed space (or of embeddings that carry nothing the other view can predict).

Terms start near or above log(B) and fall as training finds what the views share, so a term is
called collapsed only on a plateau at log(B) (:func:`collapse_warnings`).

:func:`collapse_warnings` turns these into one-paragraph warnings naming the likely fixes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from .analysis import alignment_uniformity
from .loss import term_modalities
from .retrieval import cross_modal_retrieval

# A term at or above this share of log(B) after the first epoch counts as "at log(B)".
TERM_AT_LOG_B = 0.97
# Uniformity (t = 2) above this counts as "approaching 0" (a collapsed modality gives 0; points
# spread evenly on a sphere of dimension >= 3 give about -3.5 to -4).
UNIFORMITY_COLLAPSED = -0.3

FIXES = (
    "Likely causes and fixes, in the order we found them (docs/training-dynamics.md): pooled encoder outputs that start "
    "as one point (model.feature_norm: batch, the default; `none` is the paper's projection); pretrained encoders "
    "fine-tuned at the head's learning rate (give them their own, e.g. train.lr_groups: {audio: 1e-5, text: 2e-5}); "
    "modalities that share little item by item (check that the items are paired); too little weight on the "
    "classifier to hold the space open (turbo.ce_weight)."
)
# A term that fell by less than this share of log(B) since the last epoch has stopped falling.
PLATEAU_FALL = 0.01
# Recall@1 below this multiple of chance counts as "retrieval at chance" for the cross-modal terms...
RECALL_AT_CHANCE = 2.0
# ...and so does recall whose hits a one-sided binomial test does not set above chance at this level
# (on 120 validation items, 2 hits are twice chance but happen by luck about one time in four).
RECALL_SIGNIFICANCE = 0.01


def term_ratios(terms: Mapping[str, float], batch_size: int) -> dict[str, float]:
    """Each contrastive term divided by log(B): {name: term / log(B)} (empty for B < 2)."""
    if batch_size < 2:
        return {}
    log_b = math.log(batch_size)
    return {name: float(value) / log_b for name, value in terms.items()}


def representation_diagnostics(
    views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None, terms: Mapping[str, float], batch_size: int,
) -> dict:
    """Diagnostics of one epoch from normalised views {m: [N, d]} (present: {m: bool [N]}) and the
    epoch's mean training terms. Returns a JSON-ready dict: alignment, uniformity, recall@1
    per ordered pair, chance_recall@1 (1/N), term_ratio per term, and log_b."""
    aligned = alignment_uniformity(dict(views), dict(present) if present else None)
    n = next(iter(views.values())).shape[0] if views else 0
    recall = {}
    if len(views) > 1 and n > 1:
        recall = {pair: r["recall@1"] for pair, r in cross_modal_retrieval(views, present, ks=(1,)).items()}
    return {
        "alignment": aligned["alignment"],
        "uniformity": aligned["uniformity"],
        "recall@1": recall,
        "chance_recall@1": 1.0 / n if n else math.nan,
        "term_ratio": term_ratios(terms, batch_size),
        "log_b": math.log(batch_size) if batch_size > 1 else math.nan,
    }


def is_cross_modal(term: str, modalities: Sequence[str]) -> bool:
    """Whether a term name ("audio1~text2") pairs two different modalities."""
    a, b = term_modalities(term, modalities)
    return a != b


def _above_chance(recall: list[float], chance: float) -> bool:
    """Whether recall@1 over the directions (each a share of the 1 / ``chance`` validation items) is above
    RECALL_AT_CHANCE x chance on average, with its pooled hits above chance by a one-sided binomial test at
    RECALL_SIGNIFICANCE: a few lucky hits on a small validation split do not count as retrieval."""
    if sum(recall) / len(recall) <= RECALL_AT_CHANCE * chance:
        return False
    from scipy.stats import binomtest  # here: scipy.stats takes a while to import, and only this needs it

    items = round(1 / chance)
    hits = sum(round(r * items) for r in recall)
    return binomtest(hits, items * len(recall), chance, alternative="greater").pvalue < RECALL_SIGNIFICANCE


def collapse_warnings(diagnostics: Mapping, epoch: int, previous: Mapping[str, float] | None = None) -> list[str]:
    """Warnings for a collapsed contrastive space.

    Terms: a term at log(B) (>= TERM_AT_LOG_B of it) that has stopped falling (it fell by less than
    PLATEAU_FALL of log(B) since ``previous``, the last epoch's term ratios; without them, as in a
    run's first epoch or just after a resume, no term is judged). Cross-modal terms are left out
    while validation recall@1 is above RECALL_AT_CHANCE x chance and significantly so (they
    retrieve: slow, not collapsed; :func:`_above_chance`). Uniformity: every epoch, modalities whose uniformity approaches 0."""
    out = []
    recall = list(diagnostics.get("recall@1", {}).values())
    chance = diagnostics.get("chance_recall@1", math.nan)
    retrieves = bool(recall) and not math.isnan(chance) and _above_chance(recall, chance)
    previous = previous or {}
    modalities = list(diagnostics.get("uniformity", {}))  # every modality has one
    at_log_b = sorted(name for name, r in diagnostics.get("term_ratio", {}).items()
                      if r >= TERM_AT_LOG_B and name in previous and previous[name] - r < PLATEAU_FALL
                      and not (is_cross_modal(name, modalities) and retrieves))
    if at_log_b:
        shown = ", ".join(at_log_b[:4]) + (f" and {len(at_log_b) - 4} more" if len(at_log_b) > 4 else "")
        out.append(
            f"Contrastive term(s) {shown} sit at log(B) = {diagnostics['log_b']:.3f} (>= {TERM_AT_LOG_B:.0%} of it, no longer "
            f"falling) at epoch {epoch}: the views they compare carry nothing the other side can match, which is what a collapsed space gives. "
            + FIXES
        )
    flat = sorted(m for m, u in diagnostics.get("uniformity", {}).items() if not math.isnan(u) and u > UNIFORMITY_COLLAPSED)
    if flat:
        values = ", ".join(f"{m} {diagnostics['uniformity'][m]:.2f}" for m in flat)
        out.append(
            f"Uniformity approaches 0 on the validation split at epoch {epoch} ({values}; a collapsed modality gives 0, "
            f"spread points about -3.5): the representations shrink to a point. " + FIXES
        )
    return out
