"""Config: presets, overrides, errors as location lines, plugin option resolution."""

from __future__ import annotations

import pytest
import yaml

from multiturbo.config import ExperimentConfig, SearchRange, apply_overrides, apply_values, check_config, config_differences, load_config, validate_config
from multiturbo.errors import ConfigError

BASE = {
    "data": {"name": "synthetic", "options": {"size": 40}},
    "modalities": {"audio": {"encoder": "logmel_cnn"}, "text": {"encoder": "hashed_transformer"}},
    "train": {"batch_size": 8, "epochs": 1},
}


def write(tmp_path, data) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def errors_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_config(validate_config(raw))
    return info.value.lines


@pytest.mark.parametrize(
    ("method", "passes", "in_modal", "cross_modal", "ce_weight"),
    [("vanilla", 1, False, False, 1.0), ("cross", 1, False, True, 0.5), ("turbo", 2, True, True, 0.5)],
)
def test_method_presets(method, passes, in_modal, cross_modal, ce_weight):
    t = validate_config({**BASE, "method": method}).turbo
    assert (t.passes, t.in_modal, t.cross_modal, t.ce_weight) == (passes, in_modal, cross_modal, ce_weight)


def test_explicit_fields_override_the_preset():
    cfg = validate_config({**BASE, "method": "turbo", "turbo": {"passes": 3, "in_modal": False}})
    assert (cfg.turbo.passes, cfg.turbo.in_modal, cfg.turbo.cross_modal) == (3, False, True)


def test_default_method_is_turbo():
    assert validate_config(BASE).method == "turbo"


def test_set_overrides_parse_yaml_values_and_create_sections():
    raw = apply_overrides(BASE, ["turbo.passes=3", "train.lr=0.01", "turbo.symmetric=false", "model.head=mean_linear"])
    assert raw["turbo"] == {"passes": 3, "symmetric": False}
    assert raw["train"]["lr"] == 0.01 and raw["model"]["head"] == "mean_linear"
    assert "turbo" not in BASE  # the input is not modified


def test_set_override_into_a_scalar_fails_clearly():
    with pytest.raises(ConfigError, match="train.epochs is 1, not a section"):
        apply_overrides(BASE, ["train.epochs.x=2"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        apply_overrides(BASE, ["turbo.passes"])


def test_unknown_key_names_location_and_suggests():
    lines = errors_of({**BASE, "turbo": {"pases": 2}})
    assert len(lines) == 1
    assert lines[0].startswith("turbo.pases: unknown key. Did you mean 'passes'?")


def test_unknown_key_inside_a_modality():
    lines = errors_of({**BASE, "modalities": {"audio": {"encoder": "logmel_cnn", "optionz": {}}, "text": BASE["modalities"]["text"]}})
    assert lines[0].startswith("modalities.audio.optionz: unknown key. Did you mean 'options'?")


def test_wrong_type_and_ranges_each_get_a_line():
    raw = {**BASE, "turbo": {"passes": 0, "temperature": -1.0, "ce_weight": 1.5}, "train": {"batch_size": "big"}}
    lines = errors_of(raw)
    assert any(line.startswith("turbo.passes: Input should be greater than or equal to 1") for line in lines)
    assert any(line.startswith("turbo.temperature: Input should be greater than 0") for line in lines)
    assert any(line.startswith("turbo.ce_weight: Input should be less than or equal to 1") for line in lines)
    assert any(line.startswith("train.batch_size: Input should be a valid integer") for line in lines)
    assert len(lines) == 4


def test_unknown_method():
    lines = errors_of({**BASE, "method": "turbocharged"})
    assert lines[0].startswith("method: Input should be 'vanilla', 'cross' or 'turbo'")


def test_unknown_plugin_names_list_known_ones():
    raw = {**BASE, "modalities": {"audio": {"encoder": "wav3vec"}, "text": BASE["modalities"]["text"]}, "data": {"name": "nope"}}
    lines = errors_of(raw)
    assert any(line.startswith("data.name: Unknown dataset 'nope'.") and "synthetic" in line for line in lines)
    assert any(line.startswith("modalities.audio.encoder: Unknown encoder 'wav3vec'.") and "logmel_cnn" in line for line in lines)


def test_plugin_options_are_validated_with_location():
    raw = {**BASE, "modalities": {"audio": {"encoder": "logmel_cnn", "options": {"n_melz": 3}}, "text": BASE["modalities"]["text"]}}
    lines = errors_of(raw)
    assert lines[0].startswith("modalities.audio.options.n_melz: unknown key. Did you mean 'n_mels'?")


def test_resolved_config_fills_plugin_defaults():
    cfg = check_config(validate_config(BASE))
    assert cfg.modalities["audio"].options["n_mels"] > 0
    assert cfg.data.options["size"] == 40 and "num_classes" in cfg.data.options
    assert cfg.model.head_options == {"dropout": 0.0}


def test_contrastive_term_needs_batch_of_two():
    lines = errors_of({**BASE, "train": {"batch_size": 1}})
    assert lines == ["train.batch_size: a contrastive term needs batch_size >= 2 (InfoNCE takes its negatives from the batch; got 1)."]
    # vanilla has no contrastive term: batch size 1 is fine
    check_config(validate_config({**BASE, "method": "vanilla", "train": {"batch_size": 1}}))


def test_in_modal_needs_two_passes_and_cross_modal_needs_two_modalities():
    lines = errors_of({**BASE, "method": "cross", "turbo": {"in_modal": True}})
    assert lines[0].startswith("turbo.in_modal: in-modal terms compare passes of one modality and need turbo.passes >= 2")
    one = {**BASE, "modalities": {"audio": {"encoder": "logmel_cnn"}}}
    lines = errors_of({**one, "method": "cross"})
    assert lines[0].startswith("turbo.cross_modal: cross-modal terms need at least 2 modalities")


def test_load_config_reads_file_applies_set_and_names_the_file(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_config(path, ["seed=7"])
    assert cfg.seed == 7 and cfg.name == "exp"
    with pytest.raises(ConfigError) as info:
        load_config(path, ["turbo.temperature=0"])
    assert str(info.value).startswith(f"Invalid config {path}:\n  turbo.temperature: Input should be greater than 0")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(bad)


def test_yaml_is_read_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_json_schema_covers_the_sections():
    schema = ExperimentConfig.model_json_schema()
    assert set(schema["properties"]) >= {"method", "data", "modalities", "model", "turbo", "train", "seed", "tune"}
    assert "space" in schema["$defs"]["TuneConfig"]["required"] and "choices" in schema["$defs"]["SearchRange"]["properties"]
    assert schema["additionalProperties"] is False


def test_apply_values_sets_dotted_paths_like_set(tiny_raw):
    out = apply_values(tiny_raw, {"turbo.temperature": 0.1, "modalities.audio.options.channels": 6})
    assert out["turbo"] == {"temperature": 0.1} and out["modalities"]["audio"]["options"]["channels"] == 6
    assert "turbo" not in tiny_raw  # a copy
    with pytest.raises(ConfigError, match="tune.space.train.epochs.x: train.epochs is 2, not a section"):
        apply_values(tiny_raw, {"train.epochs.x": 1})


def test_search_range_kinds():
    assert SearchRange(low=2, high=4).is_int and not SearchRange(low=2.0, high=4.0).is_int
    assert not SearchRange(low=2, high=4, type="float").is_int
    with pytest.raises(ValueError, match="type int needs integer"):
        SearchRange(low=0.5, high=4, type="int")


def test_the_tune_section_does_not_make_configs_differ(tiny_raw):
    tuned = {**tiny_raw, "tune": {"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}}
    a, b = (validate_config(r).model_dump(mode="json") for r in (tiny_raw, tuned))
    assert a["tune"] is None and b["tune"] is not None and config_differences(a, b) == []
    assert config_differences(a, {**b, "seed": 1}) == [("seed", 0, 1)]
