"""The benchmark compares like with like: its per-pair loop computes what turbo_loss computes."""

from __future__ import annotations

import pytest
import torch

from multiturbo import turbo_loss

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_turbo_loss")


@pytest.mark.parametrize(("M", "K"), [(2, 2), (3, 3)])
def test_loop_baseline_equals_turbo_loss(bench, M, K):
    g = torch.Generator().manual_seed(0)
    views = {f"m{i}": torch.randn(K, 16, 32, generator=g, dtype=torch.float64) for i in range(M)}
    torch.testing.assert_close(bench.loop_loss(views, 0.07), turbo_loss(views, temperature=0.07).total)
