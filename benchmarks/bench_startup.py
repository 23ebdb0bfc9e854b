"""How fast `multiturbo run` fails on a bad config, and what a tiny run spends outside training.

Three commands, each timed from outside as a whole process (median of --repeat runs):

- ``schema``: a config with a misspelt key (``train.lrr``): a schema error, found before any
  plugin (or torch) is imported;
- ``plugin option``: a misspelt data set option (``data.options.sizee``): found when the plugins
  are loaded (they import torch);
- ``tiny run``: the tiny synthetic experiment of the tests, one epoch, then its run.json
  ``timings`` (seconds per phase: before_run = interpreter, imports and config; build; train;
  test; analysis; tensorboard; report; outside_training = all but train).

    OMP_NUM_THREADS=1 python benchmarks/bench_startup.py --repeat 3

Measured on 2 shared CPU cores (issue 19; medians of 3; "before" = commit dbda4ca, the same
script): schema error 4.36 s -> 0.21 s; plugin option error 2.84 s -> 1.80 s (the plugins import
torch); tiny run 10.6 s -> 5.3 s in all. The tiny run's phases after: before_run 1.4 s, train
1.1 s (was 4.1 s: torchmetrics' 2 s import is gone from the epoch's metrics), analysis 1.3 s
(was 2.0 s: scipy.stats' import for the embedding figure's KDE is gone), tensorboard 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = """
name: tiny
data: {name: synthetic, options: {size: 60, num_classes: 3, sample_rate: 4000, seconds: 0.25}}
modalities:
  audio: {encoder: logmel_cnn, options: {sample_rate: 4000, n_fft: 128, hop_length: 64, n_mels: 16, channels: 4, output_dim: 16}}
  text: {encoder: hashed_transformer, options: {vocab_size: 256, dim: 16, layers: 1, heads: 2}}
model: {dim: 16}
train: {batch_size: 8, epochs: 1, lr: 0.003}
"""


def timed(args: list[str], env: dict) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "multiturbo", *args], env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "plugins"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "schema.yaml").write_text(TINY.replace("lr: 0.003", "lrr: 0.003"))
        (tmp / "option.yaml").write_text(TINY.replace("size: 60", "sizee: 60"))
        (tmp / "tiny.yaml").write_text(TINY)
        cases = {
            "schema error": ["run", str(tmp / "schema.yaml"), "--out", str(tmp / "x")],
            "plugin option error": ["run", str(tmp / "option.yaml"), "--out", str(tmp / "x")],
            "tiny run": ["run", str(tmp / "tiny.yaml"), "--out", str(tmp / "run"), "--overwrite", "-q"],
        }
        for name, args in cases.items():
            times, codes = zip(*(timed(args, env) for _ in range(a.repeat)))
            print(f"{name:20s} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f}; exit {set(codes)})")
        timings = json.loads((tmp / "run" / "run.json").read_text()).get("timings", {})
        print("tiny run timings (last run's run.json):", json.dumps(timings))


if __name__ == "__main__":
    main()
