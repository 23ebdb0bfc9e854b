"""multiturbo bench: the hand-written twin computes the same loss; the report has every figure."""

from __future__ import annotations

import math

import pytest
import torch

from multiturbo.bench import COLUMNS, bench_methods, format_rows, handwritten_loss
from multiturbo.build import build_experiment
from multiturbo.config import validate_config
from multiturbo.data import Collator, make_loader
from multiturbo.errors import MultiturboError


def _config(raw, method):
    return validate_config({**raw, "method": method}, "tiny")


@pytest.mark.parametrize("method", ["vanilla", "cross", "turbo"])
def test_handwritten_loss_equals_model_step_loss(tiny_raw, method):
    exp = build_experiment(_config(tiny_raw, method))
    model = exp.model.eval()  # dropout off: both computations see the same views
    batch = next(iter(make_loader(exp.splits.train, Collator(model.encoders, num_classes=3), batch_size=8, shuffle=False)))
    t = exp.config.turbo
    tau = float(model.contrastive.temperature) if model.contrastive is not None else 1.0
    with torch.no_grad():
        ours = model.step(batch.inputs, batch.labels).loss
        theirs = handwritten_loss(model, batch.inputs, batch.labels, tau, t.in_modal, t.cross_modal, model.ce_weight)
    assert torch.allclose(ours, theirs, atol=1e-5), (float(ours), float(theirs))


def test_bench_reports_every_method_and_the_ratios(tiny_raw):
    configs = {m: _config(tiny_raw, m) for m in ("vanilla", "turbo")}
    report = bench_methods(configs, steps=2, warmup=1, memory=False)
    rows = format_rows(report)
    assert [r[0] for r in rows] == ["vanilla", "turbo"] and all(len(r) == len(COLUMNS) for r in rows)
    by = report.by_method()
    assert by["vanilla"].terms == 0 and by["turbo"].terms == 6 and by["turbo"].passes == 2
    assert math.isnan(by["vanilla"].loss_ms) and by["turbo"].loss_ms > 0
    assert by["turbo"].items_per_s == pytest.approx(8 / by["turbo"].step_ms * 1e3)
    ratios = report.ratios()
    assert ratios["turbo_over_vanilla"] == pytest.approx(by["turbo"].step_ms / by["vanilla"].step_ms)
    assert set(report.to_dict()["ratios"]) == {"turbo_over_vanilla", "turbo_loss_share", "turbo_over_handwritten", "loader_over_fastest_step"}
    assert report.loader_items_per_s > 0


def test_bench_refuses_what_the_handwritten_loop_does_not_compute(tiny_raw):
    tiny_raw["turbo"] = {"symmetric": False}
    with pytest.raises(MultiturboError, match="symmetric"):
        bench_methods({"turbo": _config(tiny_raw, "turbo")}, steps=1, warmup=0, memory=False)


def test_fp16_on_cpu_is_refused(tiny_raw):
    with pytest.raises(MultiturboError, match="fp16"):
        bench_methods({"turbo": _config(tiny_raw, "turbo")}, steps=1, amp="fp16")


def test_cli_bench_prints_the_table_and_the_targets_and_writes_json(tiny_config_path, tmp_path):
    import json

    from click.testing import CliRunner

    from multiturbo.cli import cli

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(cli, ["bench", str(tiny_config_path), "--methods", "vanilla,turbo", "--steps", "1", "--warmup", "0",
                                   "--no-memory", "--json", str(out), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "turbo step / vanilla step" in res.output and "loss share of a turbo step" in res.output and "data loader alone" in res.output
    data = json.loads(out.read_text())
    assert [m["method"] for m in data["methods"]] == ["vanilla", "turbo"] and data["loader_items_per_s"] > 0
    assert data["ratios"]["turbo_over_vanilla"] == pytest.approx(data["methods"][1]["step_ms"] / data["methods"][0]["step_ms"])


def test_cpu_peak_memory_is_measured_in_a_fresh_process(tiny_raw):
    from multiturbo.bench import cpu_step_peak_mb

    peak = cpu_step_peak_mb(_config(tiny_raw, "turbo"), steps=1)
    assert isinstance(peak, float) and 0.0 <= peak < 4096  # MiB of RSS growth over one tiny step
