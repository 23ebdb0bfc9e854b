"""torch.distributed support: rank bookkeeping, gathering views with gradient, the "local loss".

Launch with plain ``torchrun``; nothing here is home-made transport. Contrastive negatives span
the global batch: every rank all-gathers the views of all ranks WITH gradient
(``torch.distributed.nn.functional.all_gather``) and computes its own rows against all columns,
with positives at column ``rank * B + i`` (open_clip's "local loss"). DistributedDataParallel
averages the parameter gradients over ranks, and the all-gather's backward sums the column
gradients of every rank back to their owner, so the step equals one process on the concatenated
batch (tests/test_distributed.py checks loss and gradients with 2 gloo processes). Ranks may hold
different batch sizes b_r (``train.max_batch_seconds``): the views are padded for the all-gather and
the padding dropped before the logits, positives sit at the earlier ranks' b summed + i, and each
rank's loss is weighted by b_r x W / sum b (:func:`rank_weight`), so the step still equals one process
on the concatenated batch.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .errors import MultiturboError


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` in ``range(size)``; ``local_rank`` picks the GPU on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes outputs (run directory, checkpoints, reports)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The world of the initialised default process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str) -> World:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT): NCCL for CUDA, gloo for CPU. A no-op for a single process."""
    if not launched_by_torchrun():
        return World()
    if not dist.is_available():
        raise MultiturboError("WORLD_SIZE > 1 but this torch build has no torch.distributed. Launch a single process, or install a torch build with distributed support.")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise MultiturboError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch multi-process runs with torchrun "
                                  "(e.g. torchrun --nproc-per-node 2 -m multiturbo run CONFIG), which sets them.")
        dist.init_process_group(backend=backend)
    world = current_world()
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def gather_sizes(n: int, device: torch.device | str) -> list[int]:
    """Every rank's ``n`` in rank order (one all-gather; ``[n]`` for one process)."""
    world = current_world()
    if not world.distributed:
        return [n]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


def gather_with_grad(x: Tensor, dim: int = 0, sizes: Sequence[int] | None = None) -> Tensor:
    """All ranks' ``x`` concatenated along ``dim`` (rank order), differentiable: [.., b_r, ..] -> [.., sum b_r, ..].

    Ranks may hold different sizes b_r along ``dim`` (dynamic batches, ``train.max_batch_seconds``): each
    rank's ``x`` is padded with zeros to the largest b, all-gathered with gradient, and the padding is cut
    off again before anything reads it, so no padded column ever enters a logit (its gradient is zero).
    ``sizes``: every rank's b_r when known (:func:`gather_sizes`), else gathered here."""
    world = current_world()
    if not world.distributed:
        return x
    sizes = list(sizes) if sizes is not None else gather_sizes(x.shape[dim], x.device)
    from torch.distributed.nn.functional import all_gather  # only in a multi-process run: torch builds without distributed support lack it

    longest = max(sizes)
    if x.shape[dim] < longest:
        pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, longest - x.shape[dim]]  # F.pad counts from the last dim
        x = F.pad(x, pad)
    parts = all_gather(x.contiguous())
    if len(set(sizes)) == 1:
        return torch.cat(parts, dim=dim)
    return torch.cat([p.narrow(dim, 0, b) for p, b in zip(parts, sizes)], dim=dim)


def rank_weight(n: int, device: torch.device | str = "cpu") -> float:
    """The factor for this rank's loss, a mean over its ``n`` items, so that DDP's average of the ranks'
    gradients (their sum / W) is the gradient of the mean over all ranks' items: n x W / sum of n.
    With unequal batch sizes a plain mean of per-rank means would weight the items of a small batch more.
    1.0 for one process and for equal sizes (exactly)."""
    world = current_world()
    if not world.distributed:
        return 1.0
    sizes = gather_sizes(n, device)
    return n * world.size / sum(sizes)


def gathered_turbo_loss(
    views: Mapping[str, Tensor],
    pairs: Sequence[tuple[int, int]],
    tau: Tensor | float,
    *,
    symmetric: bool = True,
) -> Tensor:
    """Per-pair InfoNCE of this rank's rows against every rank's columns: [P] (local means).

    views: modality -> [K, b, d] local views (not normalised; b may differ between ranks); pairs: (i, j)
    indices into the (modality, pass)-ordered list of V = M*K views, in the order of
    :func:`multiturbo.loss.pair_names`. Term (i, j): x = view i, y = view j; x->y is mean over local rows a
    of CE(x_a . Y_all / tau, offset + a), offset = the earlier ranks' b summed; y->x likewise; symmetric
    averages the two. Y_all: every rank's views, padded to the largest b for the all-gather and the padding
    dropped again (:func:`gather_with_grad`). With one process this equals
    :func:`multiturbo.loss.turbo_loss`'s per-pair values. With unequal b, weight the rank's loss by
    :func:`rank_weight` (the training step does). Float32 at least.
    """
    z = torch.cat(list(views.values()))  # [V, b, d]
    with torch.autocast(z.device.type, enabled=False):  # logits and losses in float32 whatever train.amp says
        z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
        B = z.shape[1]
        sizes = gather_sizes(B, z.device)
        zg = gather_with_grad(z, dim=1, sizes=sizes)  # [V, sum b, d]
        offset = sum(sizes[: current_world().rank])
        target = torch.arange(B, device=z.device) + offset  # [b] positives' global columns
        inv_tau = 1.0 / tau
        losses = []
        for i, j in pairs:
            loss = F.cross_entropy(z[i] @ zg[j].T * inv_tau, target)  # x->y: [b, sum b]
            if symmetric:
                loss = 0.5 * (loss + F.cross_entropy(z[j] @ zg[i].T * inv_tau, target))  # y->x
            losses.append(loss)
        return torch.stack(losses)


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows of ``x`` [n_r, ...] concatenated in rank order: [sum n_r, ...] (no gradient;
    ranks may hold different n_r, e.g. the shards of a validation split). ``x`` itself for one process."""
    world = current_world()
    if not world.distributed:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world.size)]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def all_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only if ``flag`` is true on every rank (one all-reduce; ``flag`` itself for one process).
    Keeps collective decisions (e.g. skipping a non-finite step) identical across ranks."""
    if not current_world().distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def average_gradients(module: torch.nn.Module) -> None:
    """All-reduce every parameter gradient and divide by the world size (what DDP's hooks do),
    for backward passes that did not go through DDP's forward (gradient caching)."""
    world = current_world()
    if not world.distributed:
        return
    for p in module.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world.size)


def shutdown() -> None:
    """End a multi-process run cleanly: a barrier, then the process group destroyed while Python is alive.

    gloo's worker threads release each finished collective's tensors themselves; a thread that does so
    while the interpreter finalises (a rank that exits right after its last collective) aborts the
    process ("terminate called without an active exception"). Destroying the group joins those threads
    first. Objects that hold the group (DistributedDataParallel) must be freed before: reference cycles
    are collected here. Nothing happens in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # a DistributedDataParallel in a reference cycle would keep the group (and its threads) alive
    dist.barrier()  # no rank leaves while another still talks to it
    dist.destroy_process_group()


def barrier() -> None:
    if current_world().distributed:
        dist.barrier()


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span the global batch of a multi-process run.

    torch's SyncBatchNorm runs on GPUs only; this one works on any backend (gloo included). In
    training under torch.distributed, the per-feature sums of x and x^2 and the item counts are
    all-reduced WITH gradient (torch.distributed.nn.functional.all_reduce), so the normalisation
    and its gradients equal one process on the concatenated batch. [n, C] -> [n, C]. In a single
    process, or in eval mode, it is plain BatchNorm1d.
    """

    def forward(self, x: Tensor) -> Tensor:
        world = current_world()
        if not (self.training and world.distributed):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # noqa: PLC0415  (start-up cost: only multi-process runs)

        total = all_reduce(torch.cat([x.sum(0), x.new_tensor([float(x.shape[0])])]))  # [C + 1], summed over ranks, differentiable
        n = total[-1]
        mean = total[:-1] / n
        var = all_reduce(((x - mean) ** 2).sum(0)) / n  # two passes, as precise as one process; biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
                self.num_batches_tracked.add_(1)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y
