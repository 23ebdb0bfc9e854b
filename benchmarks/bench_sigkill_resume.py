"""SIGKILL at random moments, then resume: each trial must end bit-exact or refuse clearly (issue 15).

A reference run of the tiny experiment is trained once, uninterrupted. Each trial starts the same
run and kills it with SIGKILL once its checkpoint has reached a random step, after a further
random 0-100 ms (``train.checkpoint_every: 1``: a checkpoint is written at every step, so many
kills land in a write; drawn from a seeded generator), then resumes it with ``multiturbo run DIR --resume`` until it finishes. A trial is

- ``exact``: the resumed run's best/last weights are the reference's byte for byte and its
  metrics.json is the same;
- ``refused``: the resume exits with status 2 and one paragraph (e.g. the run died before its
  first checkpoint: "start it again with --overwrite");
- ``BAD``: anything else (different weights, a traceback, a hang).

The killed process leaves its ``run.lock``: the resume takes the stale lock over.

    OMP_NUM_THREADS=1 python benchmarks/bench_sigkill_resume.py --trials 20

Measured on 2 shared CPU cores (issue 15, seed 0): 20 trials, kills at steps 2 to 17 of 18,
20 exact, 0 refused, 0 BAD (about 25 s per trial).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "plugins")]

TINY = """
name: tiny
seed: 0
data: {name: synthetic, options: {size: 60, num_classes: 3, sample_rate: 4000, seconds: 0.25}}
modalities:
  audio: {encoder: logmel_cnn, options: {sample_rate: 4000, n_fft: 128, hop_length: 64, n_mels: 16, channels: 4, output_dim: 16}}
  text: {encoder: hashed_transformer, options: {vocab_size: 256, dim: 16, layers: 1, heads: 2}}
model: {dim: 16}
train: {batch_size: 8, epochs: 3, lr: 0.003, device: cpu, checkpoint_every: 1}
"""


def _env() -> dict:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "plugins"), env.get("PYTHONPATH", "")])
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "multiturbo", *args]


def _same(a: Path, b: Path) -> bool:
    for name in ("best.safetensors", "last.safetensors"):
        if not (b / name).is_file() or (a / name).read_bytes() != (b / name).read_bytes():
            return False
    return json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def _step(out: Path) -> int:
    from multiturbo.checkpoint import read_checkpoint_loop_state

    try:
        return int(read_checkpoint_loop_state(out / "checkpoint.safetensors")["step"])
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def trial(config: Path, ref: Path, out: Path, step: int, extra: float, timeout: float = 300) -> tuple[str, str]:
    """One kill once the checkpoint reached ``step`` (+ ``extra`` seconds), then a resume: (outcome, detail)."""
    victim = subprocess.Popen(_cli("run", str(config), "--out", str(out), "-q"), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while victim.poll() is None and _step(out) < step and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(extra)
    if victim.poll() is not None:
        return ("exact" if _same(ref, out) else "BAD"), "finished before the kill"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    if json.loads((out / "run.json").read_text()).get("status") == "finished":  # killed while writing the report
        return ("exact" if _same(ref, out) else "BAD"), "killed after the run had finished"
    res = subprocess.run(_cli("run", str(out), "--resume", "-q"), env=_env(), capture_output=True, text=True, timeout=timeout)
    if res.returncode == 2 and "Traceback" not in res.stderr:
        return "refused", " ".join(res.stderr.split())[:200]
    if res.returncode != 0:
        return "BAD", res.stderr[-600:]
    return ("exact" if _same(ref, out) else "BAD"), "resumed"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = {"exact": 0, "refused": 0, "BAD": 0}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "tiny.yaml"
        config.write_text(TINY)
        subprocess.run(_cli("run", str(config), "--out", str(tmp / "ref"), "-q"), env=_env(), check=True, capture_output=True)
        steps = max(json.loads(line)["step"] for line in (tmp / "ref" / "metrics.jsonl").read_text().splitlines())
        rng = random.Random(args.seed)
        for i in range(args.trials):
            step, extra = rng.randint(0, steps), rng.uniform(0.0, 0.1)
            outcome, detail = trial(config, tmp / "ref", tmp / f"t{i}", step, extra)
            counts[outcome] += 1
            print(f"trial {i}: kill at step {step} of {steps} + {extra * 1000:.0f} ms: {outcome} ({detail})", flush=True)
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    sys.exit(1 if main()["BAD"] else 0)
