"""The JSON Schema of experiment configs with every registered plugin's options in it.

The config models keep a plugin's options as a free mapping (``data.options``,
``modalities.<m>.options``, ``model.head_options``): which options are valid depends on the plugin
named beside them. :func:`config_schema` adds, for each registered data set, encoder and head, a
JSON Schema conditional ("if ``name`` is X, then ``options`` follow X's Options model"), so an
editor validating a YAML config against ``multiturbo schema`` checks and documents plugin options
too (their descriptions included). Built with pydantic's ``models_json_schema`` so that models of
different plugins with the same class name get distinct definitions.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from .schema import ExperimentConfig

# (registry attribute, the config model holding the name, its name field, its options field)
PLUGIN_FIELDS = (
    ("datasets", "DataConfig", "name", "options"),
    ("encoders", "ModalityConfig", "encoder", "options"),
    ("heads", "ModelConfig", "head", "head_options"),
)


def config_schema(registries: Any) -> dict[str, Any]:
    """ExperimentConfig's JSON Schema (a dict) with every plugin's options attached to the section
    that names the plugin; ``registries``: :class:`multiturbo.plugins.Registries`."""
    plugin_models = [(attr, name, getattr(registries, attr).get(name).Options)
                     for attr, *_ in PLUGIN_FIELDS for name in getattr(registries, attr).names()]
    keys, schema = models_json_schema([(ExperimentConfig, "validation")] + [(m, "validation") for *_, m in plugin_models],
                                      ref_template="#/$defs/{model}")
    top = schema["$defs"].pop("ExperimentConfig")
    top["$defs"] = schema["$defs"]
    for attr, holder, name_field, options_field in PLUGIN_FIELDS:
        conditions = [
            {"if": {"properties": {name_field: {"const": name}}, "required": [name_field]},
             "then": {"properties": {options_field: keys[(model, "validation")]}}}
            for kind, name, model in plugin_models if kind == attr
        ]
        if conditions:
            top["$defs"][holder]["allOf"] = conditions
    return top
