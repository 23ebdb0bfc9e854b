"""Hostile configs (issue 15): duplicate keys, alias bombs, huge invalid values, booleans as numbers, non-finite floats."""

from __future__ import annotations

import time

import pytest

from multiturbo.config import load_config
from multiturbo.config.load import MAX_ECHO, read_yaml
from multiturbo.errors import ConfigError

GOOD = """\
data: {name: synthetic, options: {size: 40}}
modalities:
  audio: {encoder: logmel_cnn}
  text: {encoder: hashed_transformer}
train: {batch_size: 8, epochs: 1}
"""


def lines_of(tmp_path, text: str, overrides=()) -> list[str]:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.lines


def test_duplicate_keys_are_refused_with_their_lines(tmp_path):
    lines = lines_of(tmp_path, GOOD + "seed: 1\ntrain: {lr: 0.1}\n")
    assert len(lines) == 1 and "line 7: the key 'train' is given twice in one mapping (first on line 5)" in lines[0]
    nested = GOOD.replace("train: {batch_size: 8, epochs: 1}", "train:\n  batch_size: 8\n  epochs: 1\n  epochs: 3")
    assert "line 8: the key 'epochs' is given twice" in lines_of(tmp_path, nested)[0]


def test_a_merge_key_may_be_overridden(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(GOOD.replace("train: {batch_size: 8, epochs: 1}", "base: &b {batch_size: 8, epochs: 1}\ntrain: {<<: *b, epochs: 2}"))
    raw = read_yaml(path)
    assert raw["train"] == {"batch_size": 8, "epochs": 2}


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i, (prev, name) in enumerate(zip("abcdefgh", "bcdefghi")):
        bomb += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    start = time.monotonic()
    lines = lines_of(tmp_path, GOOD + bomb)
    assert time.monotonic() - start < 5
    assert len(lines) == 1 and "expands to more than" in lines[0] and len(lines[0]) < 400


def test_a_self_referring_alias_is_refused(tmp_path):
    assert "expands to more than" in lines_of(tmp_path, GOOD + "x: &x [1, *x]\n")[0]


def test_modest_aliases_still_work(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(GOOD.replace("train: {batch_size: 8, epochs: 1}", "train: {batch_size: &n 8, epochs: 1, eval_batch_size: *n}"))
    assert load_config(path).train.eval_batch_size == 8


def test_a_huge_invalid_value_is_echoed_short(tmp_path):
    lines = lines_of(tmp_path, GOOD + "seed: " + "x" * 2_000_000 + "\n")
    assert len("\n".join(lines)) < 2 * MAX_ECHO + 200 and lines[0].startswith("seed:")
    lines = lines_of(tmp_path, GOOD, [f"train.lr=[{', '.join(['1'] * 50_000)}]"])
    assert len("\n".join(lines)) < 2 * MAX_ECHO + 200 and lines[0].startswith("train.lr:")


@pytest.mark.parametrize("override, where", [
    ("train.lr=true", "train.lr"), ("train.epochs=false", "train.epochs"), ("turbo.temperature=true", "turbo.temperature"),
    ("modalities.audio.options.n_mels=true", "modalities.audio.options.n_mels"), ("data.options.size=true", "data.options.size"),
])
def test_booleans_are_never_numbers(tmp_path, override, where):
    lines = lines_of(tmp_path, GOOD, [override])
    assert lines == [f"{where}: expected a number, not a boolean (true / false); write the number (got True)."] or "got False" in lines[0]


@pytest.mark.parametrize("override", ["turbo.temperature=.inf", "train.lr=.nan", "train.weight_decay=-.inf", "data.options.seconds=.inf"])
def test_non_finite_floats_are_refused(tmp_path, override):
    lines = lines_of(tmp_path, GOOD, [override])
    assert len(lines) == 1 and lines[0].startswith(override.split("=")[0] + ": Input should be a finite number")


def test_booleans_still_work_where_booleans_are_wanted(tmp_path):
    assert load_config(_write(tmp_path, GOOD), ["turbo.in_modal=false"]).turbo.in_modal is False


def _write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path
