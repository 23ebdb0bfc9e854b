"""How the command line shows warnings: those of multiturbo and of its first-party plugins as one
line, ``warning: <message>``, like the run's own warnings, without the file, line number and source
line that Python's default display adds (they point into multiturbo's code, not at the user's
problem); warnings of other libraries (torch, transformers...) as Python shows them.

Python's filters still decide whether a warning shows (by default once per message and place).
The line is written to ``sys.stderr``, so a live progress bar prints it above itself.

DataLoader workers: a forked worker (Linux up to Python 3.13) inherits the display; a worker
started by spawn or forkserver (macOS; Linux from Python 3.14, its new default) starts with
Python's, so multiturbo's loaders pass :func:`worker_display` (the parent's choice) as their
``worker_init_fn``, and warnings raised while collating (e.g. the Whisper encoder cutting a long
item) read the same in every worker as in the main process.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from functools import lru_cache, partial
from typing import TextIO


@lru_cache(maxsize=1)
def own_code_roots() -> tuple[str, ...]:
    """The directories of multiturbo and of its first-party plugin packages (found without importing them)."""
    from .plugins import FIRST_PARTY_PLUGINS

    roots = [os.path.dirname(os.path.abspath(__file__))]
    for name in FIRST_PARTY_PLUGINS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots += [os.path.abspath(p) for p in spec.submodule_search_locations]
    return tuple(os.path.join(r, "") for r in roots)


def warning_line(message: Warning | str, category: type[Warning]) -> str:
    """``warning: <message>``; the category is named when it is not a plain UserWarning."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning{kind}: {message}"


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """A ``warnings.showwarning`` replacement: one line for multiturbo's own warnings, the display it
    replaced (Python's) for the others."""
    if not os.path.abspath(filename).startswith(own_code_roots()):
        return _replaced(message, category, filename, lineno, file, line)
    stream = file if file is not None else sys.stderr
    if stream is None:  # no stderr (pythonw): nowhere to show it, as with Python's own display
        return
    try:
        stream.write(warning_line(message, category) + "\n")
    except OSError:  # a closed or broken stream: a warning must not end the command
        pass


_replaced = warnings.showwarning


def show_own_warnings_as_lines() -> None:
    """From now on in this process, multiturbo's warnings show as :func:`warning_line` (the
    ``multiturbo`` command's entry point calls it; code that imports multiturbo as a library keeps
    Python's display)."""
    global _replaced
    if warnings.showwarning is not show_warning:
        _replaced = warnings.showwarning
        warnings.showwarning = show_warning


def shows_own_warnings_as_lines() -> bool:
    """Whether this process shows multiturbo's warnings as lines (:func:`show_own_warnings_as_lines` ran)."""
    return warnings.showwarning is show_warning


def _start_worker_display(worker_id: int, lines: bool) -> None:
    """A DataLoader ``worker_init_fn``: the worker shows warnings as its parent did (``lines``)."""
    if lines:
        show_own_warnings_as_lines()


def worker_display() -> partial:
    """A picklable ``worker_init_fn`` (spawned workers receive it by pickle) that gives a DataLoader
    worker this process's display of warnings: one-line when this process has it."""
    return partial(_start_worker_display, lines=shows_own_warnings_as_lines())
