"""Run by tests/test_distributed.py under torchrun (2 gloo processes on CPU).

Each rank takes its half of a fixed global batch of views and writes, as safetensors, its local
per-pair losses and the gradient of the mean-over-ranks loss with respect to its own views.
"""

import sys

import torch
from safetensors.torch import save_file

from multiturbo.distributed import current_world, gathered_turbo_loss, init_from_env, shutdown


def global_views(B: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {m: torch.randn(2, B, 5, generator=g, dtype=torch.float64) for m in ("audio", "text")}


def main(out_dir: str, B: int, symmetric: bool) -> None:
    world = init_from_env("cpu")
    rank, W = world.rank, world.size
    local = {m: v[:, rank * B // W : (rank + 1) * B // W].clone().requires_grad_() for m, v in global_views(B).items()}
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    per_pair = gathered_turbo_loss(local, pairs, 0.1, symmetric=symmetric)
    (per_pair.sum() / W).backward()  # what DDP's gradient averaging does with the local losses
    tensors = {"per_pair": per_pair.detach(), **{f"grad/{m}": v.grad for m, v in local.items()}}
    save_file({k: t.contiguous() for k, t in tensors.items()}, f"{out_dir}/rank{current_world().rank}.safetensors")
    shutdown()  # a barrier, then the group destroyed before the interpreter finalises


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "symmetric")
