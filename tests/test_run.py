"""run_experiment: what run.json records about the run's inputs."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from multiturbo.config import check_config, validate_config
from multiturbo.run import run_experiment


def test_run_json_counts_the_items_cut_to_an_encoders_limit(tiny_raw, tmp_path):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    try:
        from tiny_hf import _save_bert
    finally:
        sys.path.pop(0)
    raw = copy.deepcopy(tiny_raw)
    raw["modalities"]["text"] = {"encoder": "hf_text", "options": {"model": _save_bert(tmp_path / "bert"), "max_tokens": 4}}
    raw["train"]["epochs"] = 1
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="cut"):
        run_experiment(check_config(validate_config(raw)), out)
    cut = json.loads((out / "run.json").read_text())["cut_items"]
    assert set(cut) == {"text"} and cut["text"] > 0  # logmel_cnn has no length limit; every synthetic text is longer than 4 tokens
