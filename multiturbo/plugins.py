"""The plugin manager.

Loading order: setuptools entry points of the group ``multiturbo`` (third-party
plugins), then the first-party plugins shipped under ``plugins/``, then
``check_pending()`` so that a hook implementation with a misspelt name fails at once.
Set ``MULTITURBO_NO_EXTERNAL_PLUGINS=1`` to skip entry points (only first-party plugins
load), or ``MULTITURBO_BLOCK_PLUGINS=name1,name2`` to skip the named plugins (entry point
names, distribution names, or first-party module names).

Plugins come only from entry points and the built-in list: a config names registered
encoders, data sets and heads, never a module to import.

A broken third-party plugin (its entry point fails to import, its hook implementations do not
validate, its register hook raises, or it registers something invalid or a name that is
already taken) is skipped with one warning line on stderr naming it and the error; the other
plugins keep working (:func:`broken_plugins` lists them). First-party plugins and plugins
registered at run time (:func:`plugin_registered`) still fail loudly.

Registries are built by calling each plugin's hooks with a ``register`` callable bound
to that plugin's name, so every entry knows which plugin provided it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .dataset import Dataset
from .encoder import Encoder
from .errors import PluginError
from .head import Head
from .reader import InputReader
from .registry import Registry
from .transcriber import Transcriber

ENTRY_POINT_GROUP = "multiturbo"
NO_EXTERNAL_ENV = "MULTITURBO_NO_EXTERNAL_PLUGINS"
BLOCK_ENV = "MULTITURBO_BLOCK_PLUGINS"

# First-party plugins, imported by name so the core never imports a concrete encoder or data set.
FIRST_PARTY_PLUGINS: tuple[str, ...] = (
    "multiturbo_basic_encoders",
    "multiturbo_hf",
    "multiturbo_timm",
    "multiturbo_synthetic",
    "multiturbo_iemocap",
    "multiturbo_manifest",
    "multiturbo_hf_datasets",
    "multiturbo_heads",
)

_pm: pluggy.PluginManager | None = None
_third_party: dict[str, str] = {}  # entry point name -> "distribution version"
_broken: dict[str, str] = {}  # plugin name -> what went wrong
_blocked: list[str] = []  # plugins skipped because MULTITURBO_BLOCK_PLUGINS names them
_warned: set[tuple[str, str]] = set()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def blocked_names() -> set[str]:
    """The (normalised) names in ``MULTITURBO_BLOCK_PLUGINS``."""
    return {_norm(n.strip()) for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def _mark_broken(name: str, problem: str) -> None:
    """Record a skipped third-party plugin and say so once on stderr."""
    _broken.setdefault(name, problem)
    if (name, problem) not in _warned:
        _warned.add((name, problem))
        source = f" ({_third_party[name]})" if name in _third_party else ""
        print(
            f"multiturbo: warning: plugin {name!r}{source} is broken and was skipped: {problem}. "
            f"Fix or uninstall it, or set {BLOCK_ENV}={name} to silence this.",
            file=sys.stderr,
        )


@contextmanager
def _someone_elses_code() -> Iterator[dict[str, bool]]:
    """Around a third-party plugin's import or hook: a SystemExit or KeyboardInterrupt that the
    plugin raises is its bug (caught and reported like any error), but the user's own Ctrl-C (a
    real SIGINT, noted here in ``state["sigint"]``) must still stop the program."""
    state = {"sigint": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN / SIG_DFL: a SIGINT is ignored or ends the process anyway
        yield state
        return

    def on_sigint(signum, frame):
        state["sigint"] = True
        previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def _raised(exc: BaseException, state: dict[str, bool]) -> str:
    """How a plugin's error reads in its warning; re-raises the user's own Ctrl-C."""
    if state["sigint"]:
        raise exc
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register the ``multiturbo`` entry points, each on its own: one that fails is skipped."""
    blocked = blocked_names()
    for dist in importlib.metadata.distributions():
        eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        if not eps:
            continue
        dist_name = dist.metadata["name"] or ""
        for ep in eps:
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name) or ep.name in _broken:
                continue  # the same distribution found twice on sys.path
            if _norm(ep.name) in blocked or _norm(dist_name) in blocked:
                _blocked.append(ep.name)
                continue
            _third_party[ep.name] = f"{dist_name} {dist.version}"
            with _someone_elses_code() as state:
                try:
                    plugin = ep.load()
                except BaseException as exc:  # noqa: BLE001 - any error of someone else's package, SystemExit included
                    _mark_broken(ep.name, f"importing {ep.value} failed: {_raised(exc, state)}")
                    continue
                try:
                    pm.register(plugin, name=ep.name)
                except BaseException as exc:  # noqa: BLE001 - e.g. pluggy's validation of its hook implementations
                    _mark_broken(ep.name, f"registering it failed: {_raised(exc, state)}")


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("multiturbo")
        pm.add_hookspecs(hookspecs)
        if not _env_flag(NO_EXTERNAL_ENV):
            _load_entry_points(pm)
        blocked = blocked_names()
        for module_name in FIRST_PARTY_PLUGINS:
            if _norm(module_name) in blocked:
                _blocked.append(module_name)
            elif pm.get_plugin(module_name) is None:
                pm.register(importlib.import_module(module_name), name=module_name)
        while True:  # a third-party plugin with an unknown hook is dropped; anyone else's fails
            try:
                pm.check_pending()
                break
            except pluggy.PluginValidationError as exc:
                name = pm.get_name(exc.plugin)
                if name not in _third_party:
                    raise
                pm.unregister(exc.plugin)
                _mark_broken(name, str(exc))
        _pm = pm
    return _pm


def broken_plugins() -> dict[str, str]:
    """Third-party plugins that were skipped because they are broken: name -> the problem."""
    get_plugin_manager()
    return dict(_broken)


def blocked_plugins() -> list[str]:
    """Plugins skipped because ``MULTITURBO_BLOCK_PLUGINS`` names them."""
    get_plugin_manager()
    return list(_blocked)


@contextmanager
def plugin_registered(plugin: object, name: str) -> Iterator[pluggy.PluginManager]:
    """Register ``plugin`` for the duration of a ``with`` block (tests, notebooks)."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
        yield pm
    finally:
        pm.unregister(name=name)


@dataclass(frozen=True)
class Registries:
    """Every registered encoder, data set, head, input reader and transcriber."""

    encoders: Registry[Encoder]
    datasets: Registry[Dataset]
    heads: Registry[Head]
    input_readers: Registry[InputReader]
    transcribers: Registry[Transcriber]


def _collect(hook: pluggy.HookCaller, registry: Registry) -> Registry:
    deferred: list[tuple[str, str, type, tuple[str, ...]]] = []  # third-party entries: added last, never over a built-in name
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name
        third_party = plugin in _third_party
        if plugin in _broken:
            continue
        entries: list[tuple[str, type, tuple[str, ...]]] = []

        def register(name: str, cls: type, *, aliases: Sequence[str] = (), _plugin: str = plugin, _entries=entries) -> None:
            if _plugin in _third_party:
                _entries.append((name, cls, tuple(aliases)))
            else:
                registry.add(name, cls, _plugin, aliases=aliases)

        try:
            with _someone_elses_code() as state:
                try:
                    impl.function(register=register)
                except BaseException as exc:
                    if not third_party or isinstance(exc, (PluginError, Exception)):
                        raise
                    _mark_broken(plugin, f"its {hook.name} hook raised {_raised(exc, state)}")  # SystemExit, KeyboardInterrupt...
                    continue
        except PluginError:
            if not third_party:
                raise
            _mark_broken(plugin, f"its {hook.name} hook raised {sys.exc_info()[1]}")
            continue
        except Exception as exc:  # a plugin's own bug: name the plugin
            if third_party:
                _mark_broken(plugin, f"its {hook.name} hook raised {type(exc).__name__}: {exc}")
                continue
            raise PluginError(
                f"Plugin {plugin!r} failed in its {hook.name} hook: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall that plugin, or set {NO_EXTERNAL_ENV}=1 to load first-party plugins only."
            ) from exc
        deferred.extend((plugin, name, cls, aliases) for name, cls, aliases in entries)
    for plugin, name, cls, aliases in deferred:
        try:
            registry.add(name, cls, plugin, aliases=aliases)
        except PluginError as exc:
            _mark_broken(plugin, str(exc))
    return registry


def get_registries() -> Registries:
    """Build the registries from the current plugins (cheap; rebuilt on each call)."""
    hook = get_plugin_manager().hook
    for _ in range(2):  # a plugin found broken in one hook is left out of every registry: build again
        known_broken = len(_broken)
        regs = Registries(
            encoders=_collect(hook.register_encoders, Registry("encoder", Encoder)),
            datasets=_collect(hook.register_datasets, Registry("dataset", Dataset)),
            heads=_collect(hook.register_heads, Registry("head", Head)),
            input_readers=_collect(hook.register_input_readers, Registry("input reader", InputReader)),
            transcribers=_collect(hook.register_transcribers, Registry("transcriber", Transcriber)),
        )
        if len(_broken) == known_broken:
            break
    return regs


def plugin_source(name: str) -> str:
    """Where a plugin comes from: 'built-in' or 'distribution version'."""
    if name in FIRST_PARTY_PLUGINS:
        return "built-in"
    get_plugin_manager()
    return _third_party.get(name, "registered at run time")
