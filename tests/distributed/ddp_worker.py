"""Run by tests/test_distributed.py under torchrun (2 gloo processes on CPU).

Builds the tiny experiment with every dropout at 0 (so one process and two see the same views),
wraps it in DistributedDataParallel and runs one training step on this rank's half of a fixed
batch; writes the loss and (rank 0) every parameter gradient as safetensors.
"""

import json
import sys

import torch
from safetensors.torch import save_file

from multiturbo.build import build_experiment
from multiturbo.config import check_config, validate_config
from multiturbo.data import Collator, LabelledBatch, make_loader
from multiturbo.distributed import init_from_env, shutdown
from multiturbo.train import StepRunner


def fixed_batch(raw: dict):
    """The model (seed 0) and the first 8 training items, collated."""
    torch.manual_seed(0)
    exp = build_experiment(check_config(validate_config(raw)))
    loader = make_loader(exp.splits.train, Collator(exp.model.encoders, num_classes=3), batch_size=8, shuffle=False)
    return exp.model, next(iter(loader))


def main(raw_json: str, out_dir: str) -> None:
    """The training step of multiturbo.train.StepRunner on this rank's half of the batch: through
    DDP's forward, or with train.grad_cache_chunk set in the config (chunks of 2, gradients
    averaged by hand since the chunks bypass DDP's forward)."""
    world = init_from_env("cpu")
    raw = json.loads(raw_json)
    model, batch = fixed_batch(raw)
    half = slice(world.rank * 4, (world.rank + 1) * 4)
    mine = LabelledBatch({m: {k: t[half] for k, t in b.items()} for m, b in batch.inputs.items()}, batch.labels[half], batch.meta[half])
    ddp = torch.nn.parallel.DistributedDataParallel(model.train())
    cfg = check_config(validate_config(raw)).train
    out, ok = StepRunner(model, cfg, torch.device("cpu"), runner=ddp).forward_backward(mine)
    assert ok
    tensors = {"loss": out.loss.detach().reshape(1)}
    if world.rank == 0:
        tensors.update({f"grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    save_file({k: t.contiguous() for k, t in tensors.items()}, f"{out_dir}/rank{world.rank}.safetensors")
    del ddp  # it holds the process group: freed, the group is destroyed (worker threads joined) by shutdown below
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
