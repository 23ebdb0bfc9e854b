"""Progress display: rich bars for epochs and steps with the live loss, or silence."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ProgressReporter:
    """Shows a bar over the epochs and, below it, a bar over the current epoch's steps with the
    running loss and an ETA; ``quiet`` shows nothing.

    Use as a context manager around a run; ``log`` prints a line above the bars.
    """

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._epochs = None

    def __enter__(self) -> "ProgressReporter":
        if not self.quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
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
        self._epochs = self._progress.add_task(description, total=total, completed=completed, status="")

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

    def start(self, description: str, total: int) -> None:
        """Start a new bar (replacing the previous one)."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, status="")

    def advance(self, status: str = "") -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, status=status)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)
