"""User-facing errors.

Every error a user can cause (bad config, unknown plugin name, bad data) is a
:class:`MultiturboError`. The CLI prints its message as one paragraph, without a
traceback, and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class MultiturboError(Exception):
    """An error caused by the user's input, with a message that names the culprit and the fix."""


class ConfigError(MultiturboError):
    """A config that does not validate. Holds one ``location: message`` line per problem."""

    def __init__(self, lines: Iterable[str], source: str | None = None):
        self.lines = list(lines)
        self.source = source
        head = f"Invalid config {source}:" if source else "Invalid config:"
        super().__init__("\n".join([head, *(f"  {line}" for line in self.lines)]))


class PluginError(MultiturboError):
    """An unknown, duplicate or broken plugin registration."""


class DataError(MultiturboError):
    """Data that cannot be used as given (missing file, unknown label, missing modality...)."""


class RunDirError(MultiturboError):
    """A run directory that is missing, incomplete, damaged or from a run that did not finish."""


class RunStopped(Exception):
    """Raised by an ``on_epoch`` hook (:func:`multiturbo.run.run_experiment`) to end a run on
    purpose before its last epoch, e.g. a tuner pruning a trial. Not a user error and not a
    crash: run.json records ``status`` (e.g. ``"pruned"``) and the message as ``reason``."""

    def __init__(self, status: str, reason: str):
        self.status = status
        super().__init__(reason)
