"""Loaders and item order (multiturbo.data): length-aware batches (train.batching: bucket)."""

from __future__ import annotations

import numpy as np
import torch

from multiturbo.audio import Waveform
from multiturbo.data import BudgetBatchSampler, EpochSampler, bucket_order, gathered_positions, item_lengths, padding_fraction, repeated_pairs, sort_keys
from multiturbo.dataset import LazySplit, Sample


def _speech_lengths(n: int, seed: int = 0) -> list[dict[str, float]]:
    """Utterance-like lengths: lognormal seconds clipped to 0.6-34 s, words ~ 2.5 per second."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(3.5), 0.75, n), 0.6, 34.0)
    return [{"audio": float(s), "text": float(max(1, round(2.5 * s)))} for s in seconds]


def test_bucket_batches_hold_similar_lengths_in_a_reproducible_random_order():
    lengths = _speech_lengths(1000)
    bucket = EpochSampler(1000, shuffle=True, seed=3, lengths=lengths, batch_size=16)
    plain = EpochSampler(1000, shuffle=True, seed=3)
    order = bucket.order(1)
    assert sorted(order) == list(range(1000))  # every item once
    assert order == EpochSampler(1000, shuffle=True, seed=3, lengths=lengths, batch_size=16).order(1)  # from seed and epoch
    assert order != bucket.order(2) and order != EpochSampler(1000, shuffle=True, seed=4, lengths=lengths, batch_size=16).order(1)
    random_pad, bucket_pad = padding_fraction(plain.order(1), lengths, 16), bucket.padding(1)
    assert random_pad["audio"] > 0.3 and bucket_pad["audio"] < 0.1 and bucket_pad["text"] < random_pad["text"]
    # the batches are shuffled: the longest batch is not always last, batch means are not sorted
    means = [np.mean([lengths[i]["audio"] for i in order[j:j + 16]]) for j in range(0, 992, 16)]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_repeated_pairs_counts_the_pairs_batched_together_again():
    first = [[0, 1, 2], [3, 4]]  # pairs 01 02 12 34
    assert repeated_pairs(first, first) == 1.0
    assert repeated_pairs(first, [[0, 1], [2, 3, 4]]) == 0.5  # 01 and 34 again, of 4
    assert repeated_pairs(first, [[0, 3], [1, 4], [2]]) == 0.0
    assert repeated_pairs([[0], [1]], [[0, 1]]) == 0.0  # no pair in the first epoch


def test_bucket_jitter_changes_the_batches_between_epochs_at_a_little_more_padding():
    lengths = _speech_lengths(600)  # one sorting pool (100 batches of 16) holds the whole data set
    cut = lambda order: [order[j:j + 16] for j in range(0, 592, 16)]  # noqa: E731
    fixed = EpochSampler(600, shuffle=True, seed=2, lengths=lengths, batch_size=16)
    jittered = EpochSampler(600, shuffle=True, seed=2, lengths=lengths, batch_size=16, jitter=0.03)
    assert repeated_pairs(cut(fixed.order(1)), cut(fixed.order(2))) > 0.95  # without jitter: the same batches every epoch
    assert repeated_pairs(cut(jittered.order(1)), cut(jittered.order(2))) < 0.6
    random = padding_fraction(EpochSampler(600, shuffle=True, seed=2).order(1), lengths, 16)["audio"]
    assert fixed.padding(1)["audio"] < jittered.padding(1)["audio"] < min(2.5 * fixed.padding(1)["audio"], 0.25 * random)
    order = jittered.order(3)
    assert sorted(order) == list(range(600)) and order == EpochSampler(600, shuffle=True, seed=2, lengths=lengths, batch_size=16,
                                                                       jitter=0.03).order(3)  # from seed and epoch alone
    jittered.set_epoch(3, 32)
    assert list(iter(jittered)) == order[32:]  # a resume continues the same order


def test_bucket_jitter_varies_budget_batches_which_keep_to_the_true_lengths():
    lengths = _speech_lengths(600)
    fixed, jittered = (BudgetBatchSampler(lengths, 60.0, 4, seed=5, jitter=j) for j in (0.0, 0.03))
    assert repeated_pairs(fixed.batches(1), fixed.batches(2)) > 0.95
    assert repeated_pairs(jittered.batches(1), jittered.batches(2)) < 0.7
    for e in (1, 2):
        batches = jittered.batches(e)
        assert sorted(i for b in batches for i in b) == list(range(600))
        over = [b for b in batches if _padded(b, lengths) > 60.0]  # the budget counts the true lengths, not the jittered keys
        assert all(len(b) < 2 * 4 and max(lengths[i]["audio"] for i in b) > 60.0 / 4 for b in over)
        assert jittered.over_budget(e).over == len(over)
    assert jittered.padding(1)["audio"] < 0.15


def test_the_one_incomplete_batch_comes_last():
    keys = [float(i % 7) for i in range(50)]
    order = bucket_order(list(range(50)), keys, 8, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(50))
    full = [order[j:j + 8] for j in range(0, 48, 8)]
    assert all(max(keys[i] for i in b) - min(keys[i] for i in b) <= 2 for b in full)  # 8 of 50 items over 7 values: a narrow range


def test_a_resumed_bucket_epoch_continues_the_same_order():
    lengths = _speech_lengths(100)
    sampler = EpochSampler(100, shuffle=True, seed=0, lengths=lengths, batch_size=4)
    full = sampler.order(2)
    sampler.set_epoch(2, 12)
    assert list(iter(sampler)) == full[12:] and len(full) == 100


def test_ranks_take_equal_batches_from_the_same_bucket():
    lengths = _speech_lengths(203)
    shards = [EpochSampler(203, shuffle=True, seed=1, shard=(r, 2), equal_shards=True, lengths=lengths, batch_size=4) for r in range(2)]
    orders = [s.order(1) for s in shards]
    assert len(orders[0]) == len(orders[1]) == 101
    one = EpochSampler(203, shuffle=True, seed=1, lengths=lengths, batch_size=8).order(1)  # the global batches
    for j in range(0, 100, 4):
        assert set(orders[0][j:j + 4]) | set(orders[1][j:j + 4]) == set(one[2 * j:2 * j + 8])


def test_balanced_draws_are_bucketed_too():
    lengths = _speech_lengths(200)
    sampler = EpochSampler(200, shuffle=True, seed=0, weights=[1.0] * 200, lengths=lengths, batch_size=8)
    assert sampler.padding(1)["audio"] < padding_fraction(EpochSampler(200, shuffle=True, seed=0, weights=[1.0] * 200).order(1), lengths, 8)["audio"]


def test_item_lengths_from_memory_from_a_lazy_split_or_unknown():
    in_memory = [Sample({"audio": Waveform(np.zeros(8000, np.float32), 16000), "text": "a b c", "image": np.zeros((4, 4, 3))}, 0)]
    assert item_lengths(in_memory) == [{"audio": 0.5, "text": 3.0}]  # images do not pad
    lazy = LazySplit([3, 5], lambda r: Sample({"text": "x " * r}, 0), lambda r: 0, lambda r: {}, lambda r: {"text": float(r)})
    assert item_lengths(lazy) == [{"text": 3.0}, {"text": 5.0}] and item_lengths(lazy[1:]) == [{"text": 5.0}]
    assert item_lengths(LazySplit([3], lambda r: Sample({}, 0), lambda r: 0, lambda r: {})) is None  # no `length`: unknown

    class Cached:  # as the audio / feature caches: the split underneath as `.split`
        def __init__(self, split):
            self.split = split

    assert item_lengths(Cached(lazy)) == [{"text": 3.0}, {"text": 5.0}]


def test_item_lengths_count_audio_longer_than_its_encoder_keeps_at_the_kept_length():
    """An encoder that cuts audio at max_seconds sees no more of a longer item: its length for
    batching is the cut one. Seconds only: a data set's lengths and in-memory Waveforms; bare
    arrays (samples, rate unknown) and other modalities keep theirs."""
    lazy = LazySplit([3.0, 40.0], lambda r: Sample({}, 0), lambda r: 0, lambda r: {},
                     lambda r: {"audio": r, "text": r})
    assert item_lengths(lazy, {"audio": 15.0, "text": None}) == [{"audio": 3.0, "text": 3.0}, {"audio": 15.0, "text": 40.0}]
    in_memory = [Sample({"audio": Waveform(np.zeros(32000, np.float32), 1000), "raw": np.zeros(32000, np.float32)}, 0)]
    assert item_lengths(in_memory, {"audio": 15.0, "raw": 15.0}) == [{"audio": 15.0, "raw": 32000.0}]
    assert item_lengths(in_memory) == [{"audio": 32.0, "raw": 32000.0}]


def test_sort_keys_order_by_the_first_modality_then_the_next():
    keys = sort_keys([{"audio": 2.0, "text": 10.0}, {"audio": 2.0, "text": 3.0}, {"text": 5.0}, {"audio": 1.0}])
    assert keys == [(2.0, 10.0), (2.0, 3.0), (0.0, 5.0), (1.0, 0.0)]
    assert sorted(range(4), key=keys.__getitem__) == [2, 3, 1, 0]


# -- train.max_batch_seconds: dynamic batch sizes under a padded-length budget -------------------------
def _padded(batch: list[int], lengths) -> float:
    return len(batch) * max(lengths[i]["audio"] for i in batch)


def test_budget_batches_fit_the_padded_budget_and_vary_in_size():
    lengths = _speech_lengths(1000)
    sampler = BudgetBatchSampler(lengths, 60.0, 4, seed=3)
    batches = sampler.batches(1)
    assert sorted(i for b in batches for i in b) == list(range(1000))  # every item once
    within = [b for b in batches if _padded(b, lengths) <= 60.0]
    over = [b for b in batches if _padded(b, lengths) > 60.0]
    # only batches of the longest items exceed it: min_batch_size items over 15 s, or those plus a short remainder
    assert over and all(len(b) < 2 * 4 and max(lengths[i]["audio"] for i in b) > 15.0 for b in over)
    assert sampler.over_budget(1) == (len(over), 0, len(batches), max(d["audio"] for d in lengths))
    assert min(map(len, within)) >= 4 and max(map(len, within)) > 4 * min(map(len, within))  # short items: bigger batches
    # greedy: a batch within the budget could not take the next item of its pool (most batches are close to full)
    fill = sorted(_padded(b, lengths) / 60.0 for b in within)
    assert fill[len(fill) // 2] > 0.8
    # less padding than random batches of the same mean size
    mean = round(sampler.mean_batch_size(1))
    assert sampler.padding(1)["audio"] < 0.5 * padding_fraction(EpochSampler(1000, shuffle=True, seed=3).order(1), lengths, mean)["audio"]


def test_budget_batches_are_deterministic_shuffled_and_resumable():
    lengths = _speech_lengths(300)
    make = lambda seed: BudgetBatchSampler(lengths, 40.0, 2, seed=seed)  # noqa: E731
    sampler = make(0)
    first = sampler.batches(1)
    assert first == make(0).batches(1) and first != sampler.batches(2) and first != make(1).batches(1)
    means = [np.mean([lengths[i]["audio"] for i in b]) for b in first]
    assert means != sorted(means) and means != sorted(means, reverse=True)  # batches in random order
    sampler.set_epoch(2, 5)
    assert len(sampler) == len(sampler.batches(2)) - 5 and list(iter(sampler)) == sampler.batches(2)[5:]
    assert list(iter(sampler)) == sampler.batches(3)  # then the next epoch from its start
    assert make(0).total_batches(3) == sum(len(make(0).batches(e)) for e in (1, 2, 3))


def test_budget_ranks_get_neighbouring_batches_of_unequal_sizes():
    lengths = _speech_lengths(400)
    one = BudgetBatchSampler(lengths, 40.0, 2, seed=1, shard=(0, 1))
    ranks = [BudgetBatchSampler(lengths, 40.0, 2, seed=1, shard=(r, 2)) for r in range(2)]
    b0, b1 = ranks[0].batches(1), ranks[1].batches(1)
    assert len(b0) == len(b1) == len(one.batches(1)) // 2  # a last odd batch is left out
    assert not set(i for b in b0 for i in b) & set(i for b in b1 for i in b)
    assert any(len(x) != len(y) for x, y in zip(b0, b1))  # unequal sizes: the gathered loss pads and masks
    ratio = [max(lengths[i]["audio"] for i in x) / max(lengths[i]["audio"] for i in y) for x, y in zip(b0, b1)]
    assert np.median(np.abs(np.log(ratio))) < 0.2  # one step's batches hold similar lengths


def test_budget_shorter_than_an_item_puts_that_item_alone_and_keeps_min_batch_size_for_the_rest():
    lengths = [{"audio": float(s)} for s in (1, 1, 1, 2, 2, 9, 9, 9, 9, 9, 9, 3, 3, 3)]
    sampler = BudgetBatchSampler(lengths, 8.0, 3, seed=0)
    batches = sampler.batches(1)
    assert sorted(i for b in batches for i in b) == list(range(14))  # every item once
    longer = [b for b in batches if max(lengths[i]["audio"] for i in b) > 8.0]
    assert sorted(longer) == [[i] for i in range(5, 11)]  # each 9 s item alone: 9 > 8 by itself
    rest = [b for b in batches if b not in longer]
    assert min(map(len, rest)) >= 3  # the others keep min_batch_size, even when 3 x 3 s = 9 > 8
    over = sum(1 for b in rest if _padded(b, lengths) > 8.0)
    assert over >= 1 and sampler.over_budget(1) == (over, 6, len(batches), 9.0)


def test_budget_ranks_leave_out_random_batches_not_always_the_longest_item():
    lengths = [{"audio": 1.0 + (i % 7) / 10} for i in range(40)] + [{"audio": 50.0}]
    ranks = [BudgetBatchSampler(lengths, 10.0, 2, seed=4, shard=(r, 2)) for r in range(2)]
    whole = BudgetBatchSampler(lengths, 10.0, 2, seed=4)
    epochs = range(1, 41)
    assert all(len(whole.batches(e)) % 2 == 1 for e in epochs)  # one batch a epoch makes no whole step
    seen = [any(b == [40] for r in ranks for b in r.batches(e)) for e in epochs]
    assert 0 < sum(seen) < len(seen)  # the long item trains in most epochs, sits out in some
    for e in epochs:
        kept = sorted(i for r in ranks for b in r.batches(e) for i in b)
        assert len(set(kept)) == len(kept) and len(kept) < 41


def test_gathered_positions_follow_the_unshuffled_shards_in_rank_order():
    n, world = 7, 3
    shards = [list(EpochSampler(n, shuffle=False, shard=(rank, world))) for rank in range(world)]
    assert gathered_positions(n, world) == [i for shard in shards for i in shard] == [0, 3, 6, 1, 4, 2, 5]
    assert gathered_positions(n, 1) == list(range(n))
