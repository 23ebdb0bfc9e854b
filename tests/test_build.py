"""build.py: the data set gets the split seed (data.split_seed), not the training seed."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest

from multiturbo.build import build_dataset
from multiturbo.config import check_config, validate_config
from multiturbo.plugins import get_registries
from tests.conftest import TINY


def write_manifest(path: Path, n: int = 90) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            w.writerow([f"item {i}", ["a", "b", "c"][i % 3]])
    return path


def manifest_config(path: Path, seed: int, split_seed: int | None = None):
    raw = copy.deepcopy(TINY)
    raw["seed"] = seed
    raw["data"] = {"name": "manifest", "options": {"path": str(path), "modalities": {"text": {"column": "text", "kind": "text"}}}}
    if split_seed is not None:
        raw["data"]["split_seed"] = split_seed
    del raw["modalities"]["audio"]
    raw["method"] = "vanilla"  # one modality: no cross-modal term
    return check_config(validate_config(raw))


def membership(cfg) -> dict[str, list[int]]:
    _, splits = build_dataset(cfg, get_registries())
    return {name: sorted(m["line"] for m in getattr(splits, name).meta) for name in ("train", "val", "test")}


def test_training_seeds_share_the_split_and_split_seed_changes_it(tmp_path):
    path = write_manifest(tmp_path / "m.csv")
    seed0, seed1 = membership(manifest_config(path, 0)), membership(manifest_config(path, 1))
    assert seed0 == seed1  # a training seed does not redraw the split
    assert membership(manifest_config(path, 1, split_seed=0)) == seed0  # unset = split seed 0
    other = membership(manifest_config(path, 0, split_seed=5))
    assert other["test"] != seed0["test"] and sorted(sum(other.values(), [])) == sorted(sum(seed0.values(), []))


def test_split_seed_default_and_validation():
    raw = copy.deepcopy(TINY)
    cfg = validate_config(raw)
    assert cfg.data.split_seed is None and cfg.data.data_seed == 0
    raw["data"]["split_seed"] = 3
    assert validate_config(raw).data.data_seed == 3
    raw["data"]["split_seed"] = -1
    with pytest.raises(Exception, match="split_seed"):
        validate_config(raw)


def test_synthetic_data_follow_the_split_seed_not_the_training_seed():
    def first_test_text(seed: int, split_seed: int | None = None) -> str:
        raw = copy.deepcopy(TINY)
        raw["seed"] = seed
        if split_seed is not None:
            raw["data"]["split_seed"] = split_seed
        _, splits = build_dataset(check_config(validate_config(raw)), get_registries())
        return splits.test[0].inputs["text"]

    assert first_test_text(0) == first_test_text(7)
    assert first_test_text(0) != first_test_text(0, split_seed=7)
