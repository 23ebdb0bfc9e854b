"""compare over methods x folds x seeds: the mean ± std table, the per-run rows, the paired statistics."""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps

import multiturbo.crossval as crossval
from multiturbo.cli import cli
from multiturbo.compare import (
    ITEM_PAIRED_COLUMNS, ITEM_PAIRED_TITLE, CompareResult, compare_methods, item_caption_lines, method_configs, to_rich_table,
)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_compare_over_folds_and_seeds(folds_config, tmp_path):
    out = tmp_path / "cmp"
    res = invoke("compare", folds_config, "--methods", "vanilla,turbo", "--folds", "all", "--seeds", "0,1", "--out", out)
    assert res.exit_code == 0, res.output
    assert "[1/12] vanilla fold 0 seed 0" in res.output and "[12/12] turbo fold 2 seed 1" in res.output
    assert "Paired differences" in res.output and "turbo - vanilla" in res.output
    keys = [(f, s) for f in range(3) for s in (0, 1)]
    values = {
        m: {k: json.loads((out / m / f"fold{k[0]}-seed{k[1]}" / "metrics.json").read_text()) for k in keys}
        for m in ("vanilla", "turbo")
    }
    rows = {r["method"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert list(rows) == ["vanilla", "turbo"] and rows["turbo"]["n"] == "6"
    for m in ("vanilla", "turbo"):
        for metric in ("wa", "ua", "f1"):
            x = [values[m][k][metric] for k in keys]
            assert float(rows[m][metric]) == pytest.approx(statistics.mean(x))
            assert float(rows[m][f"{metric}_std"]) == pytest.approx(statistics.stdev(x))
    md = (out / "comparison.md").read_text()
    assert md.startswith("| Method | K | in | cross | n | WA |") and " ± " in md
    runs = list(csv.DictReader((out / "comparison_runs.csv").open()))
    assert [r["row"] for r in runs] == ["run"] * 12 + ["mean", "std", "mean", "std"]
    assert {(r["method"], r["fold"], r["seed"]) for r in runs[:12]} == {(m, str(f), str(s)) for m in values for f, s in keys}
    # paired statistics equal scipy's on the same (fold, seed) pairs
    paired = {(r["a"], r["b"], r["metric"]): r for r in csv.DictReader((out / "paired.csv").open())}
    representation = ("align:audio~text", "uniform:audio", "uniform:text")  # from each run's analysis/analysis.json
    assert set(paired) == {("vanilla", "turbo", m) for m in ("wa", "ua", "f1", *representation)}
    for m in values:
        for k in keys:
            analysis = json.loads((out / m / f"fold{k[0]}-seed{k[1]}" / "analysis" / "analysis.json").read_text())
            values[m][k].update({"align:audio~text": analysis["alignment"]["audio~text"],
                                 **{f"uniform:{x}": analysis["uniformity"][x] for x in ("audio", "text")}})
    assert (out / "align_uniform.png").stat().st_size > 0 and "align_uniform.png" in (out / "report.md").read_text()
    for metric in ("wa", "ua", "f1", *representation):
        a = np.array([values["vanilla"][k][metric] for k in keys])
        b = np.array([values["turbo"][k][metric] for k in keys])
        d, p = b - a, paired[("vanilla", "turbo", metric)]
        assert int(p["n"]) == 6 and float(p["mean_diff"]) == pytest.approx(d.mean(), abs=1e-12)
        if np.ptp(d) > 1e-12:
            low, high = sps.t.interval(0.95, 5, loc=d.mean(), scale=sps.sem(d))
            assert (float(p["ci_low"]), float(p["ci_high"])) == (pytest.approx(low), pytest.approx(high))
            assert float(p["t_p"]) == pytest.approx(sps.ttest_rel(b, a).pvalue)
        if np.any(np.abs(d) > 1e-12):
            assert float(p["wilcoxon_p"]) == pytest.approx(sps.wilcoxon(b, a).pvalue)
    assert "| turbo vs vanilla | WA | 6 |" in (out / "paired.md").read_text()


def test_the_baselines_keep_their_presets_k_and_pairs_when_the_config_sets_turbos(tiny_config_path, tmp_path):
    """configs/audio_text_iemocap.yaml writes turbo.passes: 2 for Turbo: compare's vanilla and cross stay
    the paper's K = 1 baselines; the other turbo settings apply to every method."""
    sets = ["turbo.passes=3", "turbo.temperature=0.2", "turbo.ce_weight=0.3"]
    configs = method_configs(tiny_config_path, sets, ["vanilla", "cross", "turbo"])
    k_pairs = {m: (c.turbo.passes, c.turbo.in_modal, c.turbo.cross_modal) for m, c in configs.items()}
    assert k_pairs == {"vanilla": (1, False, False), "cross": (1, False, True), "turbo": (3, True, True)}
    assert {c.turbo.temperature for c in configs.values()} == {0.2}
    assert (configs["cross"].turbo.ce_weight, configs["turbo"].turbo.ce_weight) == (0.3, 0.3)
    # the config's own method keeps what it wrote, whichever it is
    own = method_configs(tiny_config_path, [*sets, "method=cross"], ["cross", "turbo"])
    assert (own["cross"].turbo.passes, own["turbo"].turbo.passes) == (3, 2)


def test_default_compare_runs_each_method_once_and_resumes(tiny_config_path, tmp_path, monkeypatch):
    configs = method_configs(tiny_config_path, ["train.epochs=1"], ["vanilla", "cross"])
    out = tmp_path / "cmp"
    result = compare_methods(configs, out)
    assert isinstance(result, CompareResult) and not result.grid
    assert result.folds == [None] and result.seeds == [0]
    assert [r.run_dir for r in result.runs] == [out / "vanilla", out / "cross"]
    assert [r["n"] for r in result.rows] == [1, 1] and math.isnan(result.rows[0]["wa_std"])
    assert result.rows[0]["wa"] == json.loads((out / "vanilla" / "metrics.json").read_text())["wa"]
    md = (out / "comparison.md").read_text()
    assert md.startswith("| Method | K | in | cross | WA |") and "±" not in md
    (p,) = [p for p in result.paired if p.metric == "wa"]
    assert (p.a, p.b, p.stats.n) == ("vanilla", "cross", 1) and "n = 1" in p.stats.note
    assert "n/a" in (out / "paired.md").read_text()
    # a second call resumes: nothing trains, the same numbers come back
    monkeypatch.setattr(crossval, "run_experiment", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = compare_methods(configs, out)
    assert [r.status for r in again.runs] == ["skipped", "skipped"] and again.rows[0]["wa"] == result.rows[0]["wa"]


def test_compare_seeds_only_on_a_single_fold_data_set(tiny_config_path, tmp_path):
    out = tmp_path / "cmp"
    res = invoke("compare", tiny_config_path, "--methods", "vanilla,cross", "--seeds", "0,1", "--out", out, "-q", "--set", "train.epochs=1")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "cross").iterdir()) == ["seed0", "seed1"]
    assert "[1/4]" not in res.output  # quiet
    rows = list(csv.DictReader((out / "paired.csv").open()))
    assert {r["n"] for r in rows} == {"2"} and all("no Wilcoxon" in r["note"] for r in rows)
    # two pairs: the interval, but no t-test p-value, and the table says why
    assert all(r["t_p"] == "" and ("n too small for a p-value" in r["note"] or "zero variance" in r["note"]) for r in rows)
    paired = (out / "paired.md").read_text()
    assert "| n < 5 |" in paired and "Below 5 pairs no p-value is shown" in paired
    # item by item on each seed's split; the console caption's item lines are only for a single split and seed
    items = list(csv.DictReader((out / "paired_items.csv").open()))
    assert sorted({(r["seed"], r["metric"]) for r in items}) == [(s, m) for s in ("0", "1") for m in ("f1", "ua", "wa")]
    assert "on these" not in res.output


def test_single_split_compare_compares_the_test_items_and_skips_runs_without_predictions(tiny_config_path, tmp_path, monkeypatch):
    from rich.console import Console

    configs = method_configs(tiny_config_path, ["train.epochs=1"], ["vanilla", "cross", "turbo"])
    out = tmp_path / "cmp"
    result = compare_methods(configs, out)
    n = json.loads((out / "vanilla" / "run.json").read_text())["split_sizes"]["test"]
    metrics = {m: json.loads((out / m / "metrics.json").read_text()) for m in configs}
    # every pair x metric, each difference that of the runs' metrics.json
    assert {(r.a, r.b, r.stats.metric) for r in result.items} == {
        (a, b, m) for a, b in (("vanilla", "cross"), ("vanilla", "turbo"), ("cross", "turbo")) for m in ("wa", "ua", "f1")}
    for r in result.items:
        assert r.stats.n == n and (r.fold, r.seed) == (None, 0)
        assert r.stats.diff == pytest.approx(metrics[r.b][r.stats.metric] - metrics[r.a][r.stats.metric], abs=1e-6)
        assert r.stats.ci_low <= r.stats.diff <= r.stats.ci_high
    md = (out / "paired.md").read_text()
    assert f"## {ITEM_PAIRED_TITLE}" in md and "lower bound on the uncertainty" in md
    assert "| " + " | ".join(ITEM_PAIRED_COLUMNS) + " |" in md
    assert f"| turbo vs vanilla | - | 0 | {n} | WA |" in md and f"| turbo vs vanilla | - | 0 | {n} | UA |" in md
    report = (out / "report.md").read_text()
    assert ITEM_PAIRED_TITLE in report and "# Paired comparison" not in report.splitlines()  # one title per section
    csv_rows = list(csv.DictReader((out / "paired_items.csv").open()))
    assert len(csv_rows) == 9 and {r["mcnemar_p"] == "" for r in csv_rows if r["metric"] != "wa"} == {True}
    assert all(0 <= float(r["mcnemar_p"]) <= 1 for r in csv_rows if r["metric"] == "wa")
    # the console table's caption: one line per method against the first
    console = Console(record=True, width=300)
    console.print(to_rich_table(result))
    text = console.export_text()
    ua = {r.b: r.stats for r in result.items if r.a == "vanilla" and r.stats.metric == "ua"}
    for m in ("cross", "turbo"):
        s = ua[m]
        assert f"{m} vs vanilla on these {n} test items: UA {s.diff:+.3f}, 95% CI [{s.ci_low:+.3f}, {s.ci_high:+.3f}]" in text
    assert "training noise not included" in text
    # a run directory from before test_predictions.csv: its pairs are left out, without error
    (out / "vanilla" / "test_predictions.csv").unlink()
    monkeypatch.setattr(crossval, "run_experiment", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = compare_methods(configs, out)
    assert {(r.a, r.b) for r in again.items} == {("cross", "turbo")} and again.item_notes == []
    assert item_caption_lines(again) == []
    assert "| turbo vs vanilla | - |" not in (out / "paired.md").read_text() and "| turbo vs cross | - | 0 |" in (out / "paired.md").read_text()
    # a damaged file: each pair with that run gets a note naming the file (even where the partner has none)
    (out / "cross" / "test_predictions.csv").write_text("item,id\n0,x\n")
    damaged = compare_methods(configs, out)
    assert damaged.items == [] and [note.split(":")[0] for note in damaged.item_notes] == ["cross vs vanilla seed 0", "turbo vs cross seed 0"]
    assert all(f"{out / 'cross' / 'test_predictions.csv'} is damaged" in note for note in damaged.item_notes)
    assert all(note in (out / "paired.md").read_text() for note in damaged.item_notes)
