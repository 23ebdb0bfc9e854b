"""The throughput benchmark's inputs are what it says, and its padding table shows bucketing's effect."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_throughput")


def test_durations_follow_the_stated_fit_or_a_given_file(bench, tmp_path):
    d = bench.durations(5000, 0, None)
    assert d.min() >= 0.6 and d.max() <= 34.0 and 3.0 < np.median(d) < 3.8 and 4.0 < d.mean() < 4.9
    (tmp_path / "lengths.txt").write_text("1.5\n2.5\n")
    assert set(bench.durations(50, 0, str(tmp_path / "lengths.txt"))) == {1.5, 2.5}
    items = bench.speech_items(np.array([1.0, 2.0]), 4000, 0)
    assert [len(s.inputs["audio"]) for s in items] == [4000, 8000]


def test_the_padding_table_shows_less_padding_with_buckets_and_budgets(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench", "--items", "1600", "--skip", "2,3,4,5"])
    bench.main()
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith(("| random", "| bucket", "| budget"))}
    assert set(rows) == {"random", "bucket, bucket_jitter 0", "bucket, bucket_jitter 0.03", "budget, bucket_jitter 0.03"}
    column = lambda name, k: float(rows[name].split("|")[k].strip().rstrip("%"))  # noqa: E731
    share = lambda name: column(name, 2)  # noqa: E731
    repeated = lambda name: column(name, 5)  # noqa: E731
    assert share("bucket, bucket_jitter 0") < share("bucket, bucket_jitter 0.03") < 10.0 < 30.0 < share("random")
    assert share("budget, bucket_jitter 0.03") < 10.0
    # the jitter varies the batches: fewer pairs of items batched together again in epoch 2
    assert repeated("random") < repeated("bucket, bucket_jitter 0.03") < 0.5 * repeated("bucket, bucket_jitter 0")
    mean_batch = column("budget, bucket_jitter 0.03", 4)
    assert 8.0 < mean_batch < 24.0  # the default budget (16 x mean duration) keeps about batch 16's audio per step
