"""Run by tests/test_distributed.py under torchrun (2 gloo processes on CPU) with UNEQUAL local batches.

Rank 0 takes the first SIZES[0] items of a global batch, rank 1 the next SIZES[1] (dynamic batches,
``train.max_batch_seconds``). Writes, as safetensors:

- ``views/*``: the gathered Turbo loss on float64 views (padded all-gather, padding dropped), this
  rank's per-pair losses x its rank weight, and the gradient of (weighted loss / W) w.r.t. its views;
- ``<path>/*`` for the real training step (multiturbo.train.StepRunner, TurboModel under
  DistributedDataParallel, then with gradient caching; float64): the rank's loss, its weight, and
  (rank 0) every parameter gradient, which DDP has averaged over the ranks.
"""

import gc
import json
import sys

import torch
from safetensors.torch import save_file

from ddp_worker import fixed_batch  # tests/distributed, the script's directory
from gather_worker import global_views
from multiturbo.config import check_config, validate_config
from multiturbo.data import LabelledBatch
from multiturbo.distributed import gathered_turbo_loss, init_from_env, rank_weight, shutdown
from multiturbo.train import StepRunner

SIZES = (3, 5)
PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def rows(world_rank: int) -> slice:
    start = sum(SIZES[:world_rank])
    return slice(start, start + SIZES[world_rank])


def views_step(rank: int, W: int) -> dict[str, torch.Tensor]:
    local = {m: v[:, rows(rank)].clone().requires_grad_() for m, v in global_views(sum(SIZES)).items()}
    per_pair = gathered_turbo_loss(local, PAIRS, 0.1)
    weight = rank_weight(SIZES[rank])
    (per_pair.sum() * weight / W).backward()  # what DDP's gradient averaging does with the weighted local losses
    return {"views/per_pair": per_pair.detach() * weight, **{f"views/grad/{m}": v.grad for m, v in local.items()}}


def double_batch(raw: dict) -> tuple[torch.nn.Module, LabelledBatch]:
    """ddp_worker's model and batch in float64, so that one process and two agree to rounding far below 1e-6."""
    model, batch = fixed_batch(raw)
    inputs = {m: {k: t.double() if t.is_floating_point() else t for k, t in b.items()} for m, b in batch.inputs.items()}
    return model.double(), LabelledBatch(inputs, batch.labels, batch.meta)


def model_step(raw: dict, rank: int, key: str) -> dict[str, torch.Tensor]:
    model, batch = double_batch(raw)
    mine = rows(rank)
    part = LabelledBatch({m: {k: t[mine] for k, t in b.items()} for m, b in batch.inputs.items()}, batch.labels[mine], batch.meta[mine])
    ddp = torch.nn.parallel.DistributedDataParallel(model.train())
    cfg = check_config(validate_config(raw)).train
    out, ok = StepRunner(model, cfg, torch.device("cpu"), runner=ddp).forward_backward(part)
    assert ok
    tensors = {f"{key}/loss": out.loss.detach().reshape(1), f"{key}/weight": torch.tensor([rank_weight(len(part))], dtype=torch.float64)}
    if rank == 0:
        tensors.update({f"{key}/grad/{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    del ddp  # no DistributedDataParallel object outlives the process group
    gc.collect()
    return tensors


def main(raws_json: str, out_dir: str) -> None:
    world = init_from_env("cpu")
    tensors = views_step(world.rank, world.size)
    for key, raw in json.loads(raws_json).items():
        tensors.update(model_step(raw, world.rank, key))
    save_file({k: t.contiguous() for k, t in tensors.items()}, f"{out_dir}/rank{world.rank}.safetensors")
    shutdown()  # a barrier, then the group destroyed before the interpreter finalises


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
