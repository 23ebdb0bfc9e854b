"""Name -> class registries filled by plugin hooks.

Unknown names fail with the list of known names; a second registration of a name
fails and names both plugins. A name may have aliases (old names after a rename, as timm's
deprecated model names): looking one up gives the renamed class, with a DeprecationWarning.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import PluginError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered class and the plugin that provided it."""

    name: str
    cls: type[T]
    plugin: str


class Registry(Generic[T]):
    """Registered classes of one kind ("encoder", "dataset", "head")."""

    def __init__(self, kind: str, base: type[T]):
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}  # old name -> current name

    def add(self, name: str, cls: type[T], plugin: str, *, aliases: Sequence[str] = ()) -> None:
        """Register ``cls`` under ``name`` (and its old names ``aliases``) on behalf of ``plugin``."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"Plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}: names are non-empty strings.")
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(
                f"Plugin {plugin!r} registered {self.kind} {name!r} as {cls!r}, which is not a subclass of "
                f"{self.base.__module__}.{self.base.__qualname__}. Register a class derived from it."
            )
        for taken in (name, *aliases):
            if taken in self._entries or taken in self._aliases:
                other = self._entries[self.current_name(taken)].plugin
                raise PluginError(
                    f"Duplicate {self.kind} name {taken!r}: registered by plugin {other!r} and again by plugin "
                    f"{plugin!r}. Rename one of them or uninstall one of the two plugins."
                )
        self._entries[name] = Entry(name, cls, plugin)
        self._aliases.update({alias: name for alias in aliases})

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; unknown names fail with the known ones."""
        return self.entry(name).cls

    def entry(self, name: str) -> Entry[T]:
        if name in self._aliases:
            current = self._aliases[name]
            warnings.warn(f"The {self.kind} name {name!r} is deprecated: it now is {current!r}.", DeprecationWarning, stacklevel=3)
            name = current
        try:
            return self._entries[name]
        except KeyError:
            raise PluginError(self.unknown_message(name)) from None

    def current_name(self, name: str) -> str:
        """``name``, or the current name of an alias."""
        return self._aliases.get(name, name)

    def unknown_message(self, name: str) -> str:
        known = ", ".join(sorted(self._entries)) or "(none)"
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (
            f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}. "
            f"Run `multiturbo plugins` to list them with the plugins that provide them."
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self):
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def default(self) -> str:
        """The name of the one registered class with ``default = True`` (what a config that names
        none gets); a PluginError when no class or several claim it."""
        claims = [e.name for e in self if getattr(e.cls, "default", False)]
        if len(claims) != 1:
            which = "no registered " + self.kind if not claims else f"several {self.kind}s ({', '.join(claims)})"
            raise PluginError(f"No {self.kind} named, and {which} set default = True. Name one of: {', '.join(self.names()) or '(none)'}.")
        return claims[0]
