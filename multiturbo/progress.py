"""Progress display: rich bars on a terminal, periodic plain lines in a log file or pipe, or silence.

On a terminal the reporter shows a bar over the epochs and a bar over the current epoch's (or
evaluation's) batches with the live loss, items/s and an ETA. When the output goes to a file or a
pipe (a cluster batch job's log), a bar would show nothing until the end, so the reporter prints a
plain line every ``interval`` seconds instead (default 30 s, or ``MULTITURBO_PROGRESS_INTERVAL``):

    epoch 2/10: 120/400 batches, 31.5 items/s, eta 0:02:18, loss 1.2345
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_WIDTH = 200  # a console's width when its output is not a terminal (rich's default of 80 wraps tables into slivers)
INTERVAL_ENV = "MULTITURBO_PROGRESS_INTERVAL"


def make_console(stderr: bool = False) -> Console:
    """A rich Console; when the output is not a terminal, a wide one (``COLUMNS`` wins when set), so
    that tables written to a file or a pipe keep their columns readable."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PLAIN_WIDTH)
    return console


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressReporter:
    """Shows a bar over the epochs and, below it, a bar over the current batches with the running
    loss, items/s and an ETA; without a terminal, a plain line every ``interval`` seconds; ``quiet``
    shows nothing.

    Use as a context manager around a run; ``log`` prints a line above the bars.
    ``advance(status, items=n)`` counts the batch's items for the items/s figure.
    """

    def __init__(self, quiet: bool = False, console: Console | None = None, interval: float | None = None):
        self.quiet = quiet
        self.console = console or make_console(stderr=True)
        self.interval = float(os.environ.get(INTERVAL_ENV, 30.0)) if interval is None else interval
        self.bars = self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._epochs = None
        # the current batch loop: description, total, done, items, start time, last plain line
        self._desc, self._total, self._done, self._items, self._skipped = "", 0, 0, 0, 0
        self._t0 = self._last = time.perf_counter()

    def __enter__(self) -> "ProgressReporter":
        if not self.quiet and self.bars:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def start_epochs(self, description: str, total: int, completed: int = 0) -> None:
        """The outer bar over epochs (early stopping may end it before ``total``)."""
        if self._progress is None:
            return
        if self._epochs is not None:
            self._progress.remove_task(self._epochs)
        self._epochs = self._progress.add_task(description, total=total, completed=completed, status="", rate="")

    def epoch_done(self, status: str = "") -> None:
        if self._progress is not None and self._epochs is not None:
            self._progress.update(self._epochs, advance=1, status=status)

    def finish_epochs(self) -> None:
        """Remove the epoch and step bars (the run's training is over)."""
        if self._progress is None:
            return
        for task in (self._epochs, self._task):
            if task is not None:
                self._progress.remove_task(task)
        self._epochs = self._task = None

    def start(self, description: str, total: int, completed: int = 0) -> None:
        """Start a new bar over ``total`` batches (replacing the previous one); ``completed`` were
        done before (a resumed epoch: they count for the bar, not for items/s)."""
        self._desc, self._total, self._done, self._items = description, total, completed, 0
        self._skipped = completed
        self._t0 = self._last = time.perf_counter()
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, completed=completed, status="", rate="")

    def items_per_second(self) -> float:
        """Items per second of the current bar since it started (0 before its first item)."""
        elapsed = time.perf_counter() - self._t0
        return self._items / elapsed if elapsed > 0 and self._items else 0.0

    def advance(self, status: str = "", items: int = 0) -> None:
        """One batch done, of ``items`` items (0: not counted in items/s)."""
        self._done += 1
        self._items += items
        if self.quiet:
            return
        rate = f"{self.items_per_second():.1f} items/s" if self._items else ""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, status=status, rate=rate)
        elif not self.bars:
            now = time.perf_counter()
            if now - self._last >= self.interval:
                self._last = now
                self.console.print(self.plain_line(status), highlight=False, markup=False, soft_wrap=True)

    def plain_line(self, status: str = "") -> str:
        """The current bar as a line of text: batches done, items/s, ETA and the status."""
        elapsed = time.perf_counter() - self._t0
        new = self._done - self._skipped
        parts = [f"{self._desc}: {self._done}/{self._total} batches"]
        if self._items:
            parts.append(f"{self.items_per_second():.1f} items/s")
        if new > 0 and self._total > self._done:
            parts.append(f"eta {_clock(elapsed / new * (self._total - self._done))}")
        if status:
            parts.append(status)
        return ", ".join(parts)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, soft_wrap=not self.bars)
