"""Alignment and uniformity (paper Listing 2 / Wang & Isola 2020), analyze_run and the CLI."""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import TINY

from multiturbo.analysis import (
    align_loss, align_uniform_points, alignment_uniformity, analyze_run, embed, load_analysis, plot_runs_align_uniform, uniform_loss,
)
from multiturbo.cli import cli
from multiturbo.config import check_config, validate_config
from multiturbo.rundir import load_run, make_eval_loader, test_split
from multiturbo.run import run_experiment


# --- the two measures, by hand ---------------------------------------------------------------

def test_alignment_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # distances sqrt(2) and 0: squared 2 and 0, mean 1; alpha = 1: mean sqrt(2) / 2
    assert float(align_loss(x, y)) == pytest.approx(1.0)
    assert float(align_loss(x, y, alpha=1)) == pytest.approx(math.sqrt(2) / 2)


def test_identical_embeddings_are_perfectly_aligned():
    x = F.normalize(torch.randn(10, 4), dim=1)
    assert float(align_loss(x, x.clone())) == 0.0


def test_uniformity_by_hand():
    # two antipodal points: one pair at squared distance 4 -> log exp(-2 * 4) = -8
    assert float(uniform_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))) == pytest.approx(-8.0)
    # three points 120 degrees apart: every squared distance is 3 -> -6
    a = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    assert float(uniform_loss(torch.stack([a.cos(), a.sin()], 1))) == pytest.approx(-6.0, abs=1e-5)
    # four points 90 degrees apart: 4 pairs at 2, 2 pairs at 4; t = 1
    a = torch.arange(4) * math.pi / 2
    want = math.log((4 * math.exp(-2) + 2 * math.exp(-4)) / 6)
    assert float(uniform_loss(torch.stack([a.cos(), a.sin()], 1), t=1)) == pytest.approx(want, abs=1e-6)


def test_uniformity_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(25, 6, generator=g), dim=1).double()
    xn = x.numpy()
    sq = ((xn[:, None, :] - xn[None, :, :]) ** 2).sum(-1)
    iu = np.triu_indices(len(xn), k=1)
    assert float(uniform_loss(x)) == pytest.approx(np.log(np.exp(-2 * sq[iu]).mean()), rel=1e-10)
    y = F.normalize(torch.randn(25, 6, generator=g), dim=1).double()
    assert float(align_loss(x, y)) == pytest.approx(float((np.linalg.norm(xn - y.numpy(), axis=1) ** 2).mean()), rel=1e-10)


def test_even_spread_is_more_uniform_than_a_cluster():
    angles = torch.linspace(0, 2 * math.pi, 33)[:-1]
    even = torch.stack([angles.cos(), angles.sin()], 1)
    clustered = torch.stack([(angles / 10).cos(), (angles / 10).sin()], 1)  # within 36 degrees
    assert float(uniform_loss(even)) < float(uniform_loss(clustered)) < 0
    collapsed = torch.tensor([[1.0, 0.0]] * 5)
    assert float(uniform_loss(collapsed)) == pytest.approx(0.0)  # the worst value


def test_alignment_uniformity_names_every_pair_and_modality():
    e = {m: F.normalize(torch.randn(8, 3), dim=1) for m in ("audio", "text", "image")}
    out = alignment_uniformity(e)
    assert list(out["alignment"]) == ["audio~text", "audio~image", "text~image"]
    assert out["alignment"]["audio~image"] == pytest.approx(float(align_loss(e["audio"], e["image"])))
    assert out["uniformity"] == pytest.approx({m: float(uniform_loss(x)) for m, x in e.items()})
    with pytest.raises(ValueError, match="same items"):
        alignment_uniformity({"a": e["audio"], "b": e["text"][:5]})


def test_missing_items_are_left_out_of_each_measure():
    e = {m: F.normalize(torch.randn(6, 3), dim=1) for m in ("audio", "text")}
    present = {"audio": torch.tensor([1, 1, 1, 1, 1, 1], dtype=torch.bool), "text": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)}
    out = alignment_uniformity(e, present)
    keep = present["text"]
    assert out["alignment"]["audio~text"] == pytest.approx(float(align_loss(e["audio"][keep], e["text"][keep])))
    assert out["uniformity"]["text"] == pytest.approx(float(uniform_loss(e["text"][keep])))
    assert out["uniformity"]["audio"] == pytest.approx(float(uniform_loss(e["audio"])))
    lonely = alignment_uniformity(e, {"text": torch.tensor([1, 0, 0, 0, 0, 0], dtype=torch.bool)})
    assert math.isnan(lonely["uniformity"]["text"]) and not math.isnan(lonely["alignment"]["audio~text"])
    assert align_uniform_points(lonely, "turbo") == []


def test_align_uniform_points_average_the_two_uniformities():
    analysis = {"alignment": {"audio~text": 0.5}, "uniformity": {"audio": -1.0, "text": -3.0}}
    assert align_uniform_points(analysis, "turbo") == [{"label": "turbo", "alignment": 0.5, "uniformity": -2.0, "group": "audio~text"}]


# --- a trained run --------------------------------------------------------------------------------

def test_analyze_run_writes_the_measures_of_the_test_embeddings(tiny_run):
    result = analyze_run(tiny_run)
    saved = json.loads((tiny_run / "analysis" / "analysis.json").read_text())
    assert saved == result and set(saved["alignment"]) == {"audio~text"} and set(saved["uniformity"]) == {"audio", "text"}
    info = json.loads((tiny_run / "run.json").read_text())
    assert saved["n_items"] == info["split_sizes"]["test"]
    # recompute independently: one pass, eval mode, normalised views, whole split at once
    run = load_run(tiny_run)
    emb = embed(run.model, make_eval_loader(run, test_split(run), batch_size=1000)).views
    assert all(torch.allclose(v.norm(dim=1), torch.ones(len(v))) for v in emb.values())
    assert saved["alignment"]["audio~text"] == pytest.approx(float(align_loss(emb["audio"], emb["text"])), abs=1e-5)
    assert saved["uniformity"]["text"] == pytest.approx(float(uniform_loss(emb["text"])), abs=1e-5)
    for name in ("embeddings", "align_uniform", "confusion", "learning_curves"):
        assert (tiny_run / "analysis" / f"{name}.png").stat().st_size > 1000


def test_align_uniform_across_runs(tiny_run, tmp_path):
    analyze_run(tiny_run, figures=False)
    analysis = load_analysis(tiny_run)
    points = plot_runs_align_uniform([("turbo", tiny_run), ("turbo", tiny_run), ("vanilla", tmp_path)], tmp_path / "au.png")
    assert points == align_uniform_points(analysis, "turbo") * 2  # the unanalysed run is skipped
    assert (tmp_path / "au.png").stat().st_size > 1000
    assert load_analysis(tmp_path) is None


def test_embedding_ignores_the_batch_size(tiny_run):
    run = load_run(tiny_run)
    a = embed(run.model, make_eval_loader(run, test_split(run), batch_size=1000)).views
    b = embed(run.model, make_eval_loader(run, test_split(run), batch_size=3)).views
    assert all(torch.allclose(a[m], b[m], atol=1e-5) for m in a)


def test_cli_analyze_prints_the_table_and_writes_everything(tiny_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    shutil.rmtree(run_dir / "analysis", ignore_errors=True)
    res = CliRunner().invoke(cli, ["analyze", str(run_dir), "--quiet", "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert "audio~text" in res.output and "uniformity" in res.output
    assert f"{saved['alignment']['audio~text']:.4f}" in res.output and f"{saved['uniformity']['audio']:.4f}" in res.output
    assert (run_dir / "report.md").is_file()


def test_cli_analyze_errors_are_one_paragraph(tmp_path):
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such run directory" in res.output and "Traceback" not in res.output


def test_analyze_a_run_with_missing_modalities(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["data"]["options"]["missing_rate"] = {"text": 0.4}
    raw["train"]["epochs"] = 1
    run_experiment(check_config(validate_config(raw)), tmp_path / "run")
    result = analyze_run(tmp_path / "run")
    assert result["n_present"]["audio"] == result["n_items"] > result["n_present"]["text"] >= 2
    run = load_run(tmp_path / "run")
    emb = embed(run.model, make_eval_loader(run, test_split(run)))
    both = emb.present["audio"] & emb.present["text"]
    assert result["alignment"]["audio~text"] == pytest.approx(float(align_loss(emb.views["audio"][both], emb.views["text"][both])), abs=1e-5)
    assert (tmp_path / "run" / "analysis" / "embeddings.png").stat().st_size > 1000
