"""The plugin manager.

Loading order: setuptools entry points of the group ``multiturbo`` (third-party
plugins), then the first-party plugins shipped under ``plugins/``, then
``check_pending()`` so that a hook implementation with a misspelt name fails at once.
Set ``MULTITURBO_NO_EXTERNAL_PLUGINS=1`` to skip entry points (only first-party plugins
load).

Registries are built by calling each plugin's hooks with a ``register`` callable bound
to that plugin's name, so every entry knows which plugin provided it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .dataset import Dataset
from .encoder import Encoder
from .errors import PluginError
from .head import Head
from .registry import Registry

ENTRY_POINT_GROUP = "multiturbo"
NO_EXTERNAL_ENV = "MULTITURBO_NO_EXTERNAL_PLUGINS"

# First-party plugins, imported by name so the core never imports a concrete encoder or data set.
FIRST_PARTY_PLUGINS: tuple[str, ...] = (
    "multiturbo_basic_encoders",
    "multiturbo_hf",
    "multiturbo_synthetic",
    "multiturbo_iemocap",
    "multiturbo_manifest",
    "multiturbo_heads",
)

_pm: pluggy.PluginManager | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("multiturbo")
        pm.add_hookspecs(hookspecs)
        if not _env_flag(NO_EXTERNAL_ENV):
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for module_name in FIRST_PARTY_PLUGINS:
            if pm.get_plugin(module_name) is None:
                pm.register(importlib.import_module(module_name), name=module_name)
        pm.check_pending()
        _pm = pm
    return _pm


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
    """Every registered encoder, data set and head."""

    encoders: Registry[Encoder]
    datasets: Registry[Dataset]
    heads: Registry[Head]


def _collect(hook: pluggy.HookCaller, registry: Registry) -> Registry:
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name

        def register(name: str, cls: type, _plugin: str = plugin) -> None:
            registry.add(name, cls, _plugin)

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:  # a plugin's own bug: name the plugin
            raise PluginError(
                f"Plugin {plugin!r} failed in its {hook.name} hook: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall that plugin, or set {NO_EXTERNAL_ENV}=1 to load first-party plugins only."
            ) from exc
    return registry


def get_registries() -> Registries:
    """Build the registries from the current plugins (cheap; rebuilt on each call)."""
    hook = get_plugin_manager().hook
    return Registries(
        encoders=_collect(hook.register_encoders, Registry("encoder", Encoder)),
        datasets=_collect(hook.register_datasets, Registry("dataset", Dataset)),
        heads=_collect(hook.register_heads, Registry("head", Head)),
    )


def plugin_source(name: str) -> str:
    """Where a plugin comes from: 'built-in' or 'distribution version'."""
    if name in FIRST_PARTY_PLUGINS:
        return "built-in"
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return f"{dist.metadata['name']} {dist.version}"
    return "registered at run time"
