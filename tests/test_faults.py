"""I/O faults and concurrent writers (issue 15): fsync, a full disk, the run directory's lock."""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys

import pytest
from conftest import TINY

import multiturbo.checkpoint
from multiturbo.checkpoint import load_checkpoint, write_json
from multiturbo.config import check_config, validate_config
from multiturbo.errors import MultiturboError
from multiturbo.run import run_experiment
from multiturbo.rundir import RunLock


def _cfg(epochs: int = 2):
    raw = copy.deepcopy(TINY)
    raw["train"].update(epochs=epochs, checkpoint_every=None)
    return check_config(validate_config(raw))


def test_the_atomic_writer_syncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json(tmp_path / "a.json", {"x": 1})
    assert len(synced) == 2 and synced[-1] == str(tmp_path)  # the temporary file, then the directory after the rename
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_a_full_disk_ends_in_a_clear_error_with_run_json_failed_and_the_checkpoint_intact(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, calls = multiturbo.checkpoint.save_model, []

    def disk_full_in_epoch_2(model, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:  # epoch 1 wrote best + last; epoch 2's first weights
            with open(filename, "wb") as f:
                f.write(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(model, filename, metadata=metadata)

    monkeypatch.setattr(multiturbo.checkpoint, "save_model", disk_full_in_epoch_2)
    with pytest.raises(MultiturboError, match=r"Cannot write .*(best|last).safetensors \(\[Errno 28\] No space left on device\)\. Free space"):
        run_experiment(_cfg(), out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "No space left" in info["error"]
    assert load_checkpoint(out / "checkpoint.safetensors").loop["epoch"] >= 2  # the last good checkpoint loads
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file is left
    assert not (out / "run.lock").exists()
    monkeypatch.setattr(multiturbo.checkpoint, "save_model", real)
    run_experiment(_cfg(), out, resume=True)  # space freed: the run continues
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_process_may_not_write_a_locked_run_directory_but_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    run_experiment(_cfg(1), out)
    assert not (out / "run.lock").exists()  # released at the end
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(f"{live.pid} {__import__('socket').gethostname()}\n")
        with pytest.raises(MultiturboError, match=rf"is in use by another process \(process {live.pid} on .*run.lock"):
            run_experiment(_cfg(1), out, overwrite=True)
        assert (out / "best.safetensors").exists()  # --overwrite removed nothing
    finally:
        live.kill()
        live.wait()
    (out / "run.lock").write_text(f"{_dead_pid()} {__import__('socket').gethostname()}\n")
    run_experiment(_cfg(1), out, overwrite=True)  # the lock of a dead process is stale
    assert not (out / "run.lock").exists()


def test_the_lock_is_held_while_a_run_writes_and_released_on_error(tmp_path):
    with RunLock() as lock:
        lock.take(tmp_path)
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
        with RunLock() as other, pytest.raises(MultiturboError, match="in use by another process"):
            other.take(tmp_path)
    assert not (tmp_path / "run.lock").exists()
