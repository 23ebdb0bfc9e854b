"""Resuming a killed run: the result is bit for bit the uninterrupted run's (on a CPU)."""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import multiturbo.train
from multiturbo.checkpoint import read_checkpoint_loop_state
from multiturbo.cli import cli
from multiturbo.config import load_config
from multiturbo.errors import MultiturboError
from multiturbo.run import run_experiment
from multiturbo.train import MEASURED_FIELDS
from multiturbo.rundir import CHECKPOINT as CHECKPOINT_NAME

# Runs the CLI; each training step sleeps SLOW_STEP seconds so that the test can kill the
# process between two checkpoints (the kill itself is triggered by a file appearing, not by a timer).
SLOW_CLI = """
import os, sys, time
import torch
torch.set_num_threads(1)
import multiturbo.model as m
delay = float(os.environ.get("SLOW_STEP", "0"))
step = m.TurboModel.step
def slow_step(self, *a, **k):
    time.sleep(delay)
    return step(self, *a, **k)
m.TurboModel.step = slow_step
from multiturbo.cli import cli
cli(sys.argv[1:], prog_name="multiturbo")
"""


# The fine-tuning recipe on top: a warm-up + cosine schedule (its state is in the checkpoint),
# per-part learning rates, AdamW weight decay, class weights and the class-balanced sampler.
RECIPE = {
    "optimizer": "adamw", "weight_decay": 0.01, "lr_groups": {"audio": 0.001, "head": 0.01},
    "schedule": {"decay": "cosine", "warmup_fraction": 0.2}, "class_weights": "balanced", "sampler": "balanced",
}


@pytest.fixture(params=["plain", "recipe", "bucket"])
def resume_config(request, tmp_path, tiny_raw):
    """3 epochs of 10 steps (42 training items, batch 4; the last batch of 2 is kept) with a
    checkpoint every 3 steps; "recipe": with RECIPE's schedule, groups and balancing; "bucket":
    length-aware batches (train.batching: bucket; the synthetic texts vary in length); "recipe+bucket":
    both (the tests that kill a process, seconds each, take the two settings at once)."""
    tiny_raw["train"].update(batch_size=4, epochs=3, checkpoint_every=3, device="cpu")
    if "recipe" in request.param:
        tiny_raw["train"].update(RECIPE)
    if "bucket" in request.param:
        tiny_raw["train"].update(batching="bucket")
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    return path


def _env(slow: float = 0.0) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SLOW_STEP=str(slow))
    env.pop("MULTITURBO_NO_EXTERNAL_PLUGINS", None)
    return env


def _cli(*args, slow: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *map(str, args)], env=_env(slow),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out + err


def _same_results(a: Path, b: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    drop_time = lambda path: [{k: v for k, v in json.loads(line).items() if k not in MEASURED_FIELDS} for line in path.read_text().splitlines()]  # noqa: E731
    assert drop_time(a / "metrics.jsonl") == drop_time(b / "metrics.jsonl")


KILLED_CONFIGS = pytest.mark.parametrize("resume_config", ["plain", "recipe+bucket"], indirect=True)


@KILLED_CONFIGS
def test_a_killed_run_resumes_to_the_uninterrupted_result(resume_config, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    victim = _cli("run", resume_config, "--out", run, "-q", slow=0.1)
    ckpt, deadline, state = run / CHECKPOINT_NAME, time.monotonic() + 240, None
    while time.monotonic() < deadline and victim.poll() is None:
        if ckpt.exists():
            try:
                state = read_checkpoint_loop_state(ckpt)
            except Exception:  # noqa: BLE001 - replaced while reading: try again
                state = None
            if state and state["epoch"] == 2 and state["batch"] > 0:  # mid-epoch 2: epoch 1 is in metrics.jsonl
                break
        time.sleep(0.01)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert state is not None and state["epoch"] == 2 and 0 < state["batch"] < 10
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert not (run / "metrics.json").exists()

    # resume as `multiturbo run CONFIG --out DIR --resume`
    out = _finish(_cli("run", resume_config, "--out", run, "-q", "--resume"))
    assert "test {" in out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses: one thread, so CPU results are bit-identical
    try:
        _run(resume_config, ref)  # the uninterrupted run, here in-process
    finally:
        torch.set_num_threads(threads)
    _same_results(ref, run)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # no duplicate line for the epoch that was cut
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and len(info["resumed"]) == 1 and info["nonfinite_skipped"] == 0
    assert not (run / CHECKPOINT_NAME).exists()  # removed once the run is finished


def _run(cfg_path, out, **kw):
    return run_experiment(load_config(cfg_path), out, **kw)


def test_resume_after_a_crash_between_checkpoint_and_epoch_outputs(resume_config, tmp_path, monkeypatch):
    """The epoch-end checkpoint is written before best/last weights and the metrics.jsonl line;
    a crash in between is repaired by the resume (the outputs are written again, once)."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(resume_config, ref)

    real, calls = multiturbo.rundir.write.save_weights, []

    def crash_once_in_epoch_2(model, path, *args):
        calls.append(path)
        if len(calls) == 3:  # epoch 1 wrote best + last; this is epoch 2's first write
            raise KeyboardInterrupt
        real(model, path, *args)

    monkeypatch.setattr(multiturbo.rundir.write, "save_weights", crash_once_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _run(resume_config, run)
    monkeypatch.setattr(multiturbo.rundir.write, "save_weights", real)
    state = read_checkpoint_loop_state(run / CHECKPOINT_NAME)
    assert (state["epoch"], state["batch"], state["pending"]["epoch"]) == (3, 0, 2)
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"  # Ctrl-C
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    info = json.loads((edited / "run.json").read_text())  # the checkpoint is bound to the classes and config.yaml
    (edited / "run.json").write_text(json.dumps({**info, "classes": info["classes"][::-1]}))
    with pytest.raises(MultiturboError, match="checkpoint.safetensors does not belong to the config.yaml"):
        _run(resume_config, edited, resume=True)
    _run(resume_config, run, resume=True)
    _same_results(ref, run)


def test_dynamic_batches_resume_mid_epoch_to_the_uninterrupted_result(tmp_path, tiny_raw, monkeypatch):
    """train.max_batch_seconds (batches from a batch sampler, the schedule over the planned steps; the
    synthetic clips are arrays, so their length is in samples):
    a run stopped mid-epoch 2 resumes from its checkpoint to the uninterrupted run's files, bit for bit."""
    tiny_raw["train"].update(epochs=2, checkpoint_every=3, device="cpu", max_batch_seconds=4000.0, min_batch_size=2,
                             schedule={"decay": "cosine", "warmup_fraction": 0.2})
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(path, ref)
    real, calls = multiturbo.train.train_step, []

    def stop_at_step_17(state, batch):
        calls.append(len(batch))
        if len(calls) == 17:  # epoch 1: 11 batches (42 items, 4 clips of 1000 samples per batch, then 2): mid-epoch 2
            raise KeyboardInterrupt
        return real(state, batch)

    monkeypatch.setattr(multiturbo.train, "train_step", stop_at_step_17)
    with pytest.raises(KeyboardInterrupt):
        _run(path, run)
    monkeypatch.setattr(multiturbo.train, "train_step", real)
    assert sorted(calls[:11]) == [2] + [4] * 10  # the batches in random order
    state = read_checkpoint_loop_state(run / CHECKPOINT_NAME)
    assert (state["epoch"], state["batch"], state["step"]) == (2, 4, 15)
    _run(path, run, resume=True)
    _same_results(ref, run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(set(r["padding"]) == {"audio", "text"} for r in records)


def test_resume_refuses_finished_runs_other_configs_and_missing_checkpoints(resume_config, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(MultiturboError, match="There is no run to resume"):
        _run(resume_config, run, resume=True)
    _run(resume_config, run)
    res = CliRunner().invoke(cli, ["run", str(run), "--resume"])  # the run directory as CONFIG
    assert res.exit_code == 2 and "has finished" in res.output and "nothing to resume" in res.output

    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    res = CliRunner().invoke(cli, ["run", str(resume_config), "--out", str(run), "--resume", "--set", "train.lr=0.5"])
    assert res.exit_code == 2 and "does not match" in res.output and "train.lr: saved 0.003, given 0.5" in res.output
    res = CliRunner().invoke(cli, ["run", str(run), "--resume"])
    assert res.exit_code == 2 and f"has no checkpoint ({CHECKPOINT_NAME})" in res.output
    res = CliRunner().invoke(cli, ["run", str(resume_config), "--resume"])
    assert res.exit_code == 2 and "--resume needs the run directory" in res.output
    res = CliRunner().invoke(cli, ["run", str(resume_config), "--out", str(run), "--resume", "--overwrite"])
    assert res.exit_code == 2 and "contradict" in res.output


@KILLED_CONFIGS
def test_ctrl_c_stops_a_run_promptly_marks_it_interrupted_and_keeps_the_checkpoint(resume_config, tmp_path):
    run = tmp_path / "run"
    victim = _cli("run", resume_config, "--out", run, "-q", slow=0.1)
    ckpt, deadline = run / CHECKPOINT_NAME, time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None and not ckpt.exists():
        time.sleep(0.01)
    assert victim.poll() is None, "the run ended before it could be interrupted"
    victim.send_signal(signal.SIGINT)
    sent = time.monotonic()
    victim.communicate(timeout=60)
    assert time.monotonic() - sent < 5 and victim.returncode != 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and "Ctrl-C" in info["error"]
    assert read_checkpoint_loop_state(ckpt)["step"] > 0  # the last checkpoint is intact
