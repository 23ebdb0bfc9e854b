"""Hook specifications: the whole plugin surface of multiturbo.

Each hook receives a ``register`` callable; a plugin calls it once per thing it
provides: ``register(name, cls)``, or ``register(name, cls, aliases=("old_name",))`` after a
rename, so that configs and run directories naming the old name still resolve (as timm's
deprecated model names do). Names and aliases are global per kind: two plugins giving the
same encoder name is an error.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("multiturbo")
hookimpl = pluggy.HookimplMarker("multiturbo")

Register = Callable[..., None]  # register(name: str, cls: type, *, aliases: Sequence[str] = ()) -> None


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoder classes (subclasses of multiturbo.Encoder): register(name, cls)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register data set classes (subclasses of multiturbo.Dataset): register(name, cls)."""


@hookspec
def register_heads(register: Register) -> None:
    """Register classification head classes (subclasses of multiturbo.Head): register(name, cls)."""


@hookspec
def register_input_readers(register: Register) -> None:
    """Register readers of prediction inputs by kind (subclasses of multiturbo.reader.InputReader): register(kind, cls)."""


@hookspec
def register_transcribers(register: Register) -> None:
    """Register speech recognisers for --transcribe (subclasses of multiturbo.transcriber.Transcriber): register(name, cls)."""
