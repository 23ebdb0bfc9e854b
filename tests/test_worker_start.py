"""DataLoader workers forked by a fork server (Linux's default from Python 3.14) find torch,
multiturbo and the plugins imported by the server, not by each of them."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

from multiturbo import worker_start
from multiturbo.build import build_experiment
from multiturbo.config import check_config, validate_config
from multiturbo.data import Collator, make_loader
from multiturbo.worker_start import defining_modules, start_method


def test_the_start_method_is_the_platforms_default_until_one_is_set(monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: None)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["forkserver", "spawn", "fork"])
    assert start_method() == "forkserver"
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "fork")
    assert start_method() == "fork"


def test_the_modules_of_the_data_set_its_wrappers_and_the_encoders(tiny_raw):
    from multiturbo.audio_cache import CachedAudioSplit

    exp = build_experiment(check_config(validate_config(tiny_raw)))
    collator = Collator(exp.model.encoders, 3)
    cached = CachedAudioSplit(exp.splits.train, rates={"audio": 4000}, mode="memory")
    names = defining_modules([cached, collator])
    assert isinstance(exp.splits.train, list)  # the synthetic set's split: samples in memory (no module to name)
    assert names[:2] == ["multiturbo.audio_cache", "multiturbo.data"]
    assert {type(e).__module__ for e in exp.model.encoders.values()} <= set(names)
    assert "builtins" not in defining_modules([[1, 2], None])


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_a_loader_with_workers_has_the_fork_server_preload_them(tiny_raw, monkeypatch, method):
    exp = build_experiment(check_config(validate_config(tiny_raw)))
    calls: list[list[str]] = []
    monkeypatch.setattr(worker_start, "start_method", lambda: method)
    monkeypatch.setattr(multiprocessing, "set_forkserver_preload", calls.append)
    collator = Collator(exp.model.encoders, 3)
    make_loader(exp.splits.train, collator, batch_size=4, shuffle=False, num_workers=0)
    assert calls == []  # no workers, nothing to start
    make_loader(exp.splits.train, collator, batch_size=4, shuffle=False, num_workers=2)
    if method != "forkserver":
        assert calls == []
        return
    (modules,) = calls
    assert modules[:4] == ["__main__", "torch", "multiturbo.data", "multiturbo.inference"]
    assert {type(e).__module__ for e in exp.model.encoders.values()} <= set(modules)


FORK_SERVED = '''
import multiprocessing, sys
import torch
from multiturbo.data import make_loader


class Probe(torch.utils.data.Dataset):
    """Whether multiturbo.inference, which nothing in this script or in unpickling it imports, is
    already imported in the worker: the fork server preloaded it."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return "multiturbo.inference" in sys.modules


def as_list(items):
    return items


if __name__ == "__main__":
    multiprocessing.set_start_method("forkserver", force=True)
    print([list(b) for b in make_loader(Probe(), as_list, batch_size=2, shuffle=False, num_workers=1)])
'''


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="this platform has no fork server")
def test_fork_served_workers_find_the_modules_imported(tmp_path):
    script = tmp_path / "fork_served.py"
    script.write_text(FORK_SERVED)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[[True, True]]"


def test_a_wrapper_that_refers_back_to_itself_is_named_once():
    class Loop:
        pass

    loop = Loop()
    loop.split = loop
    assert defining_modules([loop, loop]) == [__name__]
