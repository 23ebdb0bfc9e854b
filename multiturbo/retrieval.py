"""Cross-modal retrieval: a check that the modalities share one embedding space.

For every ordered modality pair a -> b (``"text->audio"``: a text query, audio candidates),
each item's view in a is a query and the views in b of all items are the candidates; the
positive is the same item. Similarity is the cosine of the L2-normalised projected views
(one pass, dropout off), as the Turbo objective compares them.

``recall@k`` is the share of queries whose positive ranks among the first k candidates.

Ties are counted against the query (pessimistic): the positive's rank is the number of
candidates whose similarity is greater than OR EQUAL to the positive's (the positive itself
included). So embeddings that are all the same give recall@k = 0 for k < N (every
candidate ties with the positive) and 1 for k >= N: a collapsed space never looks good. k larger than the number of candidates counts
every query as found (the ``n`` reported with each pair says how many candidates there were).

Missing modalities: a pair uses the items that have both modalities (``present`` masks).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_KS = (1, 5)


def pair_name(query: str, candidates: str) -> str:
    """The name of an ordered pair in results: ``"text->audio"`` (text queries, audio candidates)."""
    return f"{query}->{candidates}"


def positive_ranks(queries: Tensor, candidates: Tensor, *, normalize: bool = True) -> Tensor:
    """Rank (1 = first) of each query's positive (row i of ``candidates``) among all candidates.

    queries, candidates: [N, d] (row i of both is item i) -> long [N]. Ties count against the
    query: rank_i = #{j : sim(i, j) >= sim(i, i)}.
    """
    if queries.shape[0] != candidates.shape[0]:
        raise ValueError(f"queries and candidates must have the same number of rows, got {queries.shape[0]} and {candidates.shape[0]}")
    q, c = queries.float(), candidates.float()
    if normalize:
        q, c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    sim = q @ c.T  # [N, N]
    pos = sim.diagonal()[:, None]  # [N, 1]
    return (sim >= pos).sum(1)


def recall_at_k(queries: Tensor, candidates: Tensor, ks: Sequence[int] = DEFAULT_KS, *, normalize: bool = True) -> dict[str, float]:
    """{"recall@k": share of queries whose positive ranks <= k} for each k (NaN for no query)."""
    if queries.shape[0] == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    ranks = positive_ranks(queries, candidates, normalize=normalize)
    return {f"recall@{k}": float((ranks <= k).float().mean()) for k in ks}


def cross_modal_retrieval(
    embeddings: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    normalize: bool = True,
) -> dict[str, dict[str, float]]:
    """Recall@k for every ordered modality pair of ``embeddings`` ({m: [N, d]}, row i = item i).

    Returns ``{"a->b": {"recall@1": ..., "recall@5": ..., "n": items used}}`` in the order of
    ``itertools.permutations`` over the modalities. ``present`` ({m: bool [N]}) restricts
    each pair to the items that have both modalities.
    """
    out: dict[str, dict[str, float]] = {}
    for a, b in itertools.permutations(list(embeddings), 2):
        qa, cb = embeddings[a], embeddings[b]
        if present:
            keep = torch.ones(qa.shape[0], dtype=torch.bool)
            for m in (a, b):
                if m in present:
                    keep &= present[m].bool().cpu()
            qa, cb = qa[keep], cb[keep]
        res: dict[str, float] = recall_at_k(qa, cb, ks, normalize=normalize)
        res["n"] = int(qa.shape[0])
        out[pair_name(a, b)] = res
    return out
