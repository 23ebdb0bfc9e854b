"""TensorBoard event files from a run's ``metrics.jsonl`` (optional).

When the ``tensorboard`` package is importable (``pip install tensorboard``, or the dev
extra), :func:`export_tensorboard` writes ``run_dir/tensorboard/`` with one scalar per
epoch (step = epoch) for every number of the log: ``train/loss``, ``train/ce``,
``train/contrastive``, ``train/temperature``, ``term/<pair>`` (each Turbo term),
``val/<metric>`` and ``lr/<param group>`` (learning rates at the end of each epoch). Without the package it does nothing and returns None.

    tensorboard --logdir runs/
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from . import rundir


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by torch's SummaryWriter) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def export_tensorboard(run_dir: str | Path) -> Path | None:
    """Write ``run_dir/tensorboard/`` from ``run_dir/metrics.jsonl`` (replacing an earlier
    export, so running it twice gives no duplicate points). Returns the directory, or None
    when tensorboard is not installed or the run has no log yet."""
    if not tensorboard_available():
        return None
    from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard package

    from .plots import learning_series  # matplotlib: a real start-up cost, paid only when exporting

    run_dir = Path(run_dir)
    records = rundir.read_log(run_dir)
    if not records:
        return None
    out = rundir.fresh_tensorboard_dir(run_dir)
    writer = SummaryWriter(log_dir=str(out))
    try:
        for tag, (epochs, values) in learning_series(records).items():
            for epoch, value in zip(epochs, values):
                writer.add_scalar(tag, float(value), global_step=int(epoch))
    finally:
        writer.close()
    return out
