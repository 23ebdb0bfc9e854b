"""masked_mean pools valid positions only."""

from __future__ import annotations

import torch

from multiturbo.pooling import masked_mean


def test_masked_mean_ignores_padding_and_empty_rows_give_zeros():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]], [[1.0, 1.0]] * 3])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    out = masked_mean(x, mask[..., None], dim=1)
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [7.0, 8.0], [0.0, 0.0]]))
