"""Cross-validation over folds x seeds: run layout, resume, the plan guard, the summaries."""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections import Counter

import pytest
import yaml
from click.testing import CliRunner

import multiturbo.crossval as crossval
from multiturbo.cli import cli
from multiturbo.config import load_config
from multiturbo.errors import MultiturboError
from multiturbo_synthetic import SyntheticDataset


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def count_runs(monkeypatch):
    """Counts the runs that actually train (by run directory name)."""
    calls: Counter[str] = Counter()
    real = crossval.run_experiment

    def counting(cfg, out, **kwargs):
        calls[out.name] += 1
        return real(cfg, out, **kwargs)

    monkeypatch.setattr(crossval, "run_experiment", counting)
    return calls


def metric_values(out, name, metric):
    return json.loads((out / name / "metrics.json").read_text())[metric]


def test_synthetic_folds_partition_the_items():
    ds = SyntheticDataset(SyntheticDataset.Options(size=60, num_classes=3, folds=3, seconds=0.05), seed=0)
    assert ds.num_folds == 3
    tests = [sorted(x.meta["index"] for x in ds.splits(f).test) for f in range(3)]
    assert sorted(i for t in tests for i in t) == list(range(60))  # every item tested exactly once
    for f in range(3):
        s = ds.splits(f)
        assert [x.meta["index"] for x in s.val] == [x.meta["index"] for x in ds.splits((f + 1) % 3).test]
        assert len(s.train) == 20 and not {x.meta["index"] for x in s.train} & set(tests[f])
        assert max(Counter(x.label for x in s.test).values()) - min(Counter(x.label for x in s.test).values()) <= 1
    with pytest.raises(ValueError, match="folds must be 1, or between 3"):
        SyntheticDataset.Options(folds=2)


def test_parse_folds_and_seeds():
    assert crossval.parse_folds(None) is None and crossval.parse_folds("All") == "all"
    assert crossval.parse_folds("0,2,5") == [0, 2, 5] and crossval.parse_folds("0-3,1") == [0, 1, 2, 3]
    assert crossval.parse_seeds("2, 1,2") == [2, 1]
    with pytest.raises(MultiturboError, match="--seeds 'a,b': expected comma-separated integers"):
        crossval.parse_seeds("a,b")


def test_cv_runs_every_fold_and_seed_and_summarises(folds_config, tmp_path, count_runs):
    out = tmp_path / "cv"
    res = invoke("cv", folds_config, "--seeds", "0,1", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    names = [f"fold{f}-seed{s}" for f in range(3) for s in (0, 1)]
    assert sorted(count_runs) == sorted(names) and set(count_runs.values()) == {1}
    assert re.search(r"│\s*mean\s*│", res.output) and re.search(r"│\s*std\s*│", res.output) and "[1/6]" not in res.output  # --quiet: no progress lines
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["folds"] == [0, 1, 2] and plan["seeds"] == [0, 1] and "seed" not in plan["configs"]["turbo"]
    for f in range(3):
        for s in (0, 1):
            saved = yaml.safe_load((out / f"fold{f}-seed{s}" / "config.yaml").read_text())
            assert (saved["data"]["fold"], saved["seed"]) == (f, s)
    summary = json.loads((out / "cv.json").read_text())["summary"]
    rows = list(csv.DictReader((out / "cv.csv").open()))
    assert [r["row"] for r in rows] == ["run"] * 6 + ["mean", "std"]
    for metric in ("wa", "ua", "f1"):
        values = [metric_values(out, n, metric) for n in names]
        assert summary[metric]["n"] == 6
        assert summary[metric]["mean"] == pytest.approx(statistics.mean(values))
        assert summary[metric]["std"] == pytest.approx(statistics.stdev(values))
        assert [float(r[metric]) for r in rows[:6]] == pytest.approx(values)
        assert float(rows[6][metric]) == pytest.approx(statistics.mean(values))
        assert float(rows[7][metric]) == pytest.approx(statistics.stdev(values))
    md = (out / "cv.md").read_text()
    assert f"{statistics.mean([metric_values(out, n, 'wa') for n in names]):.4f} ± " in md and "Per fold" in md


def test_cv_resumes_finished_runs_and_reruns_broken_ones(folds_config, tmp_path, count_runs):
    out = tmp_path / "cv"
    assert invoke("cv", folds_config, "--folds", "0,2", "--seeds", "0,1", "--out", out, "-q").exit_code == 0
    assert len(count_runs) == 4
    mtimes = {d.name: (d / "run.json").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    # break two runs: one failed, one partial (no metrics.json)
    info = json.loads((out / "fold0-seed1" / "run.json").read_text())
    (out / "fold0-seed1" / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    (out / "fold2-seed0" / "metrics.json").unlink()
    count_runs.clear()
    res = invoke("cv", folds_config, "--folds", "0,2", "--seeds", "0,1", "--out", out)
    assert res.exit_code == 0, res.output
    assert dict(count_runs) == {"fold0-seed1": 1, "fold2-seed0": 1}
    assert "[1/4] turbo fold 0 seed 0: skipped, already finished" in res.output
    assert "[2/4] turbo fold 0 seed 1 (rerun: the previous attempt did not finish)" in res.output
    for name in ("fold0-seed0", "fold2-seed1"):
        assert (out / name / "run.json").stat().st_mtime_ns == mtimes[name]
    assert json.loads((out / "fold0-seed1" / "run.json").read_text())["status"] == "finished"
    assert (out / "fold2-seed0" / "metrics.json").is_file()
    statuses = [r["status"] for r in json.loads((out / "cv.json").read_text())["runs"]]
    assert statuses == ["skipped", "trained", "trained", "skipped"]
    # more seeds into the same directory: only the new runs train
    count_runs.clear()
    assert invoke("cv", folds_config, "--folds", "0,2", "--seeds", "0,1,2", "--out", out, "-q").exit_code == 0
    assert sorted(count_runs) == ["fold0-seed2", "fold2-seed2"]


def test_cv_refuses_to_mix_configs_unless_overwrite(folds_config, tmp_path, count_runs):
    out = tmp_path / "cv"
    assert invoke("cv", folds_config, "--folds", "1", "--out", out, "-q").exit_code == 0
    count_runs.clear()
    res = invoke("cv", folds_config, "--folds", "1", "--out", out, "-q", "--set", "train.lr=0.01")
    assert res.exit_code == 2 and "holds turbo runs of another config (train.lr: 0.003 -> 0.01)" in res.output
    assert not count_runs
    res = invoke("cv", folds_config, "--folds", "1", "--out", out, "-q", "--set", "train.lr=0.01", "--overwrite")
    assert res.exit_code == 0 and dict(count_runs) == {"fold1-seed0": 1}
    assert yaml.safe_load((out / "fold1-seed0" / "config.yaml").read_text())["train"]["lr"] == 0.01
    # another command's directory, and a directory that holds something else
    res = invoke("compare", folds_config, "--folds", "1", "--out", out, "-q")
    assert res.exit_code == 2 and "holds runs of `multiturbo cv`" in res.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    res = invoke("cv", folds_config, "--out", other, "-q")
    assert res.exit_code == 2 and "holds no plan.yaml" in res.output


def test_settings_that_do_not_change_results_may_change_between_invocations(folds_config, tmp_path, count_runs):
    out = tmp_path / "cv"
    assert invoke("cv", folds_config, "--folds", "1", "--out", out, "-q").exit_code == 0
    count_runs.clear()
    res = invoke("cv", folds_config, "--folds", "1", "--out", out, "-q", "--set", "train.checkpoint_every=7", "--set", "train.device=cpu")
    assert res.exit_code == 0, res.output
    assert not count_runs  # the finished run is reused: the device and checkpointing do not change what it computed


def test_compare_on_fewer_methods_keeps_guarding_the_others(folds_config, tmp_path, count_runs):
    out = tmp_path / "cmp"
    assert invoke("compare", folds_config, "--methods", "vanilla,turbo", "--folds", "1", "--out", out, "-q").exit_code == 0
    assert invoke("compare", folds_config, "--methods", "turbo", "--folds", "1", "--out", out, "-q").exit_code == 0
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["methods"] == ["vanilla", "turbo"] and set(plan["configs"]) == {"vanilla", "turbo"}
    count_runs.clear()
    res = invoke("compare", folds_config, "--methods", "vanilla", "--folds", "1", "--out", out, "-q", "--set", "train.lr=0.01")
    assert res.exit_code == 2 and "holds vanilla runs of another config" in res.output and not count_runs


def test_cv_checks_folds_before_training(folds_config, tmp_path):
    res = invoke("cv", folds_config, "--folds", "1,3", "--out", tmp_path / "cv", "-q")
    assert res.exit_code == 2 and "fold(s) 3 out of range" in res.output and "has 3 fold(s)" in res.output
    assert not (tmp_path / "cv").exists()


def test_single_fold_data_set_runs_seeds_only(tiny_config_path, tmp_path):
    cfg = load_config(tiny_config_path, ["train.epochs=1"])
    result = crossval.cross_validate(cfg, tmp_path / "cv", seeds=[0, 3])
    assert result.folds == [None] and [r.run_dir.name for r in result.runs] == ["seed0", "seed3"]
    assert result.summary["wa"].n == 2
    assert result.summary["wa"].mean == pytest.approx(statistics.mean(r.metrics["wa"] for r in result.runs))


def test_post_process_sees_every_run_and_its_values_are_summarised(folds_config, tmp_path, monkeypatch):
    seen = []

    def post(record):
        seen.append((record.fold, record.status))
        record.extra["score"] = float(record.fold)

    monkeypatch.setattr(crossval, "post_process", post)
    cfg = load_config(folds_config)
    for _ in range(2):  # the second call skips every run, post-processing still sees them
        result = crossval.cross_validate(cfg, tmp_path / "cv", folds=[0, 1])
    assert seen == [(0, "trained"), (1, "trained"), (0, "skipped"), (1, "skipped")]
    assert result.summary["score"].mean == 0.5 and "score" in (tmp_path / "cv" / "cv.csv").read_text().splitlines()[0]
