"""Gradient caching: contrastive batches larger than memory, with the dropout masks replayed.

A contrastive loss does not decompose over micro-batches (every item is every other item's
negative), so plain gradient accumulation changes the objective. Gradient caching (Gao et al.
2021, "GradCache") keeps it:

1. a no-grad forward of each chunk gives its views; the RNG state before each chunk is saved;
2. the objective (head, CE, every Turbo term) runs on the full batch of views, which are leaves:
   its backward gives the gradients of the head and the temperature, and of every view;
3. each chunk is forwarded again WITH gradient after restoring its RNG state, so every dropout
   mask is the one of step 1 (Turbo's views come from those masks), and backpropagated with its
   slice of the cached view gradients.

Memory holds one chunk's activations plus the [K, B, d] views of the batch; the cost is one extra
no-grad forward. The gradients equal those of a full-batch step whose forward draws the same
masks (tests/test_gradcache.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .encoder import Batch


@dataclass
class RngState:
    """The CPU and (when used) CUDA generator states, to replay random draws exactly."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls, device: torch.device) -> "RngState":
        cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def split_inputs(inputs: Mapping[str, Batch], chunk_size: int) -> list[dict[str, Batch]]:
    """Cut a collated batch {m: {key: [B, ...]}} into chunks of at most ``chunk_size`` items (dim 0)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    sizes = {t.shape[0] for b in inputs.values() for t in b.values()}
    if len(sizes) != 1:
        raise ValueError(f"Every tensor of a batch must have the batch size in dim 0; found sizes {sorted(sizes)}.")
    (n,) = sizes
    return [{m: {k: t[s : s + chunk_size] for k, t in b.items()} for m, b in inputs.items()} for s in range(0, n, chunk_size)]


def cached_backward(
    encode: Callable[[Mapping[str, Batch]], dict[str, Tensor]],
    objective: Callable[[dict[str, Tensor]], Tensor],
    inputs: Mapping[str, Batch],
    chunk_size: int,
    device: torch.device,
    finite: Callable[[Tensor], bool] | None = None,
) -> Tensor:
    """Backpropagate ``objective(encode(inputs))`` chunk by chunk; returns the loss (detached).

    encode: collated inputs -> views {m: [K, b, d]} (items along dim 1). objective: the full
    batch's views {m: [K, B, d]} -> scalar loss; it may also return other outputs through a
    closure.
    The RNG state after the call is the one after the first (no-grad) pass, as for a plain step.
    A non-finite loss is returned without any backward (no gradient is written); ``finite(loss)``
    decides (default: torch.isfinite; a multi-process run passes a decision shared by all ranks).
    """
    chunks = split_inputs(inputs, chunk_size)
    states: list[RngState] = []
    cached: list[dict[str, Tensor]] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RngState.capture(device))
            cached.append(encode(chunk))
    after = RngState.capture(device)
    modalities = list(cached[0])
    views = {m: torch.cat([c[m] for c in cached], dim=1).detach().requires_grad_() for m in modalities}
    loss = objective(views)
    if not (finite(loss) if finite is not None else bool(torch.isfinite(loss))):  # nothing to backpropagate: the caller reports the step
        after.restore()
        return loss.detach()
    loss.backward()
    offsets = [0]
    for c in cached:
        offsets.append(offsets[-1] + next(iter(c.values())).shape[1])
    for index, (chunk, state) in enumerate(zip(chunks, states)):
        lo, hi = offsets[index], offsets[index + 1]
        state.restore()
        again = encode(chunk)
        tensors = [again[m] for m in modalities if views[m].grad is not None]
        grads = [views[m].grad[:, lo:hi] for m in modalities if views[m].grad is not None]
        if tensors:
            torch.autograd.backward(tensors, grads)
    after.restore()
    return loss.detach()


__all__: Sequence[str] = ("RngState", "split_inputs", "cached_backward")
