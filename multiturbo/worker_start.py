"""How DataLoader worker processes start, and keeping their start cheap under a fork server.

A worker starts in one of three ways, Python's start method: ``fork`` (a copy of this process,
with every module it has imported: Linux up to Python 3.13), ``spawn`` (a fresh interpreter:
macOS, Windows) or ``forkserver`` (a copy of a small server process: Linux's default from Python
3.14). A spawned or fork-served worker imports torch, multiturbo and the plugins again before its
first batch, seconds of CPU per worker, and a loader starts its workers anew (training: once per
run and split; inference: once per command). Python lets the fork server import modules once,
when it starts (``multiprocessing.set_forkserver_preload``), so that every worker it forks has
them already: :func:`preload_in_fork_server` names torch, multiturbo's loader modules and the
modules of the data set and encoders that the workers will unpickle.

Measured on 2 CPU cores, Python 3.11 with the start method set to forkserver as Python 3.14's
default, ``multiturbo run configs/demo.yaml`` with ``train.num_workers=2`` and 2 epochs, two runs
each: 19.9 and 21.8 s without the preload, 13.3 and 13.5 s with it; 10.6-13.7 s with fork.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable

ALWAYS = ("__main__", "torch", "multiturbo.data", "multiturbo.inference")  # __main__: Python's own default


def start_method() -> str:
    """The start method new worker processes will use: the one set in this process, else the
    platform's default (without fixing it, so a later ``set_start_method`` still works)."""
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def defining_modules(objects: Iterable[object]) -> list[str]:
    """The modules defining the classes of ``objects`` and of what they wrap (a cache's ``split``,
    a collator's ``encoders``), in first-seen order: what a worker imports to unpickle them."""
    names: list[str] = []
    todo, seen = list(objects), set()
    while todo:
        obj = todo.pop(0)
        if id(obj) in seen:  # a wrapper that refers back to itself: each object once
            continue
        seen.add(id(obj))
        module = type(obj).__module__
        if module not in names and module != "builtins":
            names.append(module)
        inner = getattr(obj, "split", None)
        if inner is not None and not callable(inner):
            todo.append(inner)
        encoders = getattr(obj, "encoders", None)
        if isinstance(encoders, dict):
            todo += list(encoders.values())
    return names


def preload_in_fork_server(objects: Iterable[object]) -> None:
    """Before a DataLoader with workers is made: when its workers will be forked by a fork server,
    have that server import torch, multiturbo's loader modules and the modules defining ``objects``
    (the data set, the collator and its encoders) once, at its start. A no-op under fork and spawn;
    once the server runs its imports are fixed (the first loader of the process chooses), and a
    module that fails to import there is skipped by Python and imported by each worker as before."""
    if start_method() != "forkserver":
        return
    modules = list(ALWAYS)
    modules += [m for m in defining_modules(objects) if m not in modules and m != "__mp_main__"]
    multiprocessing.set_forkserver_preload(modules)
