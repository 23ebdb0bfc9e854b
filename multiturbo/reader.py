"""The input-reader contract: how ``predict`` / ``evaluate`` / ``embed`` read one kind of input.

A reader turns a value given for prediction (a manifest cell, a Python object) into what the
encoders' ``collate`` takes, as the training data set would have handed it. Readers are
plugins, registered by kind name through the ``register_input_readers`` hook
(:mod:`multiturbo.hookspecs`): the first-party ones are ``audio``, ``text`` and ``image``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class InputReader:
    """Reads the values of one input kind.

    - ``name_hints``: substrings of modality names that suggest this kind (``"speech"`` for
      audio), used when neither ``--kind`` nor the training data set says the kind;
    - ``files``: values are file paths: a blank value means the modality is missing, and a
      relative path is resolved against the manifest's directory before :meth:`read`;
    - :meth:`read`: one value (a path already resolved when ``files``) -> the raw input.
    """

    name_hints: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[bool] = False

    def read(self, value: Any) -> Any:
        return value

    @staticmethod
    def resolve(value: str | Path, base: Path | None) -> Path:
        """A file path given for prediction: ``~`` expanded, relative to ``base`` when given."""
        path = Path(value).expanduser()
        return base / path if not path.is_absolute() and base is not None else path
