"""multiturbo schema: plugin options attached to the config section that names the plugin."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from multiturbo.config.plugin_schema import config_schema
from multiturbo.plugins import get_registries

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (in the dev extra) validates configs against the schema")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def validator():
    schema = config_schema(get_registries())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, raw: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]


@pytest.mark.parametrize("name", ["demo.yaml", "audio_text_iemocap.yaml", "hf_datasets_example.yaml"])
def test_the_shipped_configs_validate(validator, name):
    assert _errors(validator, yaml.safe_load((CONFIGS / name).read_text())) == []


def test_plugin_options_are_checked_by_the_plugin_named_beside_them(validator, tiny_raw):
    assert _errors(validator, tiny_raw) == []
    bad = copy.deepcopy(tiny_raw)
    bad["data"]["options"]["num_clases"] = 3  # a typo in the synthetic data set's options
    bad["modalities"]["audio"]["options"]["channels"] = "many"  # logmel_cnn wants an integer
    errors = _errors(validator, bad)
    assert any(e.startswith("data.options: Additional properties are not allowed ('num_clases'") for e in errors), errors
    assert any(e.startswith("modalities.audio.options.channels: 'many' is not of type 'integer'") for e in errors), errors
    manifest = {"name": "manifest", "options": {"path": "m.csv", "modalities": {"a": {"column": "wav", "kind": "video"}}}}
    errors = _errors(validator, {**tiny_raw, "data": manifest})
    assert any(e.startswith("data.options.modalities.a.kind: 'video' is not one of") for e in errors), errors


def test_the_descriptions_of_plugin_options_are_in_the_schema():
    defs = config_schema(get_registries())["$defs"]
    (manifest,) = [c["then"]["properties"]["options"]["$ref"] for c in defs["DataConfig"]["allOf"]
                   if c["if"]["properties"]["name"]["const"] == "manifest"]
    options = defs[manifest.rsplit("/", 1)[1]]["properties"]
    assert "unusable rows" in options["bad_items"]["description"]
