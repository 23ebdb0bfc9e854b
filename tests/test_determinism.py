"""The same seed and config give the same run, bit for bit, on a CPU."""

from __future__ import annotations

import json

import torch

from multiturbo.config import check_config, validate_config
from multiturbo.run import run_experiment
from multiturbo.train import MEASURED_FIELDS


def test_same_seed_same_metrics_and_weights(tiny_raw, tmp_path):
    tiny_raw["train"]["device"] = "cpu"
    cfg = check_config(validate_config(tiny_raw))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = tmp_path / "a", tmp_path / "b"
        run_experiment(cfg, a)
        torch.manual_seed(12345)  # state left over from elsewhere must not matter: the run seeds everything
        run_experiment(cfg, b)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    for name in ("best.safetensors", "last.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in MEASURED_FIELDS} for x in p.read_text().splitlines()]  # noqa: E731
    assert strip(a / "metrics.jsonl") == strip(b / "metrics.jsonl")


def test_another_seed_gives_another_run(tiny_raw, tmp_path):
    tiny_raw["train"].update(device="cpu", epochs=1)
    a, b = tmp_path / "a", tmp_path / "b"
    run_experiment(check_config(validate_config(tiny_raw)), a)
    tiny_raw["seed"] = 1
    run_experiment(check_config(validate_config(tiny_raw)), b)
    assert (a / "last.safetensors").read_bytes() != (b / "last.safetensors").read_bytes()
