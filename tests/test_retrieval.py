"""Cross-modal retrieval recall@k on hand-built embeddings whose recall is known."""

from __future__ import annotations

import math

import pytest
import torch

from multiturbo.retrieval import cross_modal_retrieval, positive_ranks, recall_at_k


def test_identity_gives_perfect_recall():
    x = torch.eye(6)
    res = cross_modal_retrieval({"audio": x, "text": x.clone()})
    assert list(res) == ["audio->text", "text->audio"]
    assert res["audio->text"] == {"recall@1": 1.0, "recall@5": 1.0, "n": 6}


def test_a_permutation_by_hand():
    # text row i is the one-hot of perm[i]: the audio item nearest to text i is item perm[i].
    perm = [1, 0, 2, 3, 4, 5, 6, 7]  # items 0 and 1 swapped, the rest in place
    audio = torch.eye(8)
    text = torch.eye(8)[perm]
    ranks = positive_ranks(text, audio)
    # items 2..7 find themselves first. Items 0 and 1: their positive has similarity 0, below the
    # swapped item (similarity 1) and tied with the 6 other candidates: rank = #(sim >= 0) = 8.
    assert ranks.tolist() == [8, 8, 1, 1, 1, 1, 1, 1]
    r = recall_at_k(text, audio, ks=(1, 5, 8))
    assert r == {"recall@1": 6 / 8, "recall@5": 6 / 8, "recall@8": 1.0}


def test_graded_similarities_rank_by_hand():
    # 2-D unit vectors at angles: the query of item 0 is closest to candidate 1, then 0.
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    query = torch.tensor([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    assert positive_ranks(query, cand).tolist() == [2, 1, 1]
    assert recall_at_k(query, cand, ks=(1, 2)) == {"recall@1": pytest.approx(2 / 3), "recall@2": 1.0}


def test_ties_count_against_the_query():
    same = torch.ones(4, 3)
    res = cross_modal_retrieval({"a": same, "b": same})["a->b"]
    assert res["recall@1"] == 0.0 and res["recall@5"] == 1.0  # k >= N finds everything


def test_cosine_ignores_the_scale():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    assert cross_modal_retrieval({"a": x, "b": 5 * x})["a->b"]["recall@1"] == 1.0


def test_three_modalities_give_every_ordered_pair():
    x = torch.eye(3)
    assert set(cross_modal_retrieval({"a": x, "b": x, "c": x})) == {"a->b", "b->a", "a->c", "c->a", "b->c", "c->b"}


def test_missing_items_are_left_out_of_a_pair():
    x = torch.eye(4)
    text = x.clone()
    text[3] = 0  # item 3 has no text (a zero row)
    present = {"text": torch.tensor([True, True, True, False])}
    res = cross_modal_retrieval({"audio": x, "text": text}, present)
    assert res["audio->text"] == {"recall@1": 1.0, "recall@5": 1.0, "n": 3}


def test_no_items_give_nan():
    empty = torch.zeros(0, 4)
    assert math.isnan(recall_at_k(empty, empty)["recall@1"])
