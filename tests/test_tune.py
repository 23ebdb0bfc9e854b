"""multiturbo tune: the search space and storage checks (before any trial), pruning (run.json
status pruned), continuing a study, and two processes on one SQLite study at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from multiturbo.cli import cli
from multiturbo.errors import ConfigError, MultiturboError
from multiturbo.config import TuneConfig
from multiturbo.tune import STUDY_FILE, check_storage_url, make_pruner, make_sampler, open_study, plan_tuning, probe_values, run_study, shown_url, trial_dir
from multiturbo.tune_report import IMPORTANCE_PNG, TUNE_LOCK, TUNE_MD, best_row, trial_rows, write_tune_report

optuna = pytest.importorskip("optuna")

SPACE = {
    "turbo.ce_weight": {"low": 0.2, "high": 0.8},
    "turbo.temperature": {"low": 0.03, "high": 0.3, "log": True},
    "turbo.passes": {"choices": [2, 3]},
}


def _config(tmp_path, raw, space=None, **tune):
    raw = {**raw, "tune": {"space": space or SPACE, "pruner": "none", **tune}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _plan_error(tmp_path, raw, space):
    with pytest.raises(MultiturboError) as info:
        plan_tuning(_config(tmp_path, raw, space), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass
    return str(info.value)


@pytest.mark.parametrize("space, expected", [
    ({"turbo.temprature": {"low": 0.03, "high": 0.3}}, "tune.space.turbo.temprature: the value 0.03 gives an invalid config (turbo.temprature: unknown key. Did you mean 'temperature'?"),
    ({"turbo.passes": {"low": 2.0, "high": 4.0}}, "tune.space.turbo.passes: the value"),  # a float range on an integer field
    ({"model.dropout": {"low": 0.1, "high": 1.0}}, "tune.space.model.dropout: the value 1.0 gives an invalid config (model.dropout: Input should be less than 1"),
    ({"turbo.ce_weight": {"choices": [0.5, 1.0]}}, "tune.space.turbo.ce_weight: the value 1.0 gives an invalid config (turbo.ce_weight: 1.0 gives the contrastive terms zero weight"),
    ({"modalities.audio.options.chanels": {"low": 2, "high": 6}}, "tune.space.modalities.audio.options.chanels: the value 2 gives an invalid config"),
    ({"train.monitor": {"choices": ["ua", "wa"]}}, "tune.space.train.monitor: cannot be tuned (the tuned metric is tune.metric)"),
    ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "tune.space.train.lr: a log scale needs low > 0"),
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "tune.space.train.lr: low (0.1) must be below high (0.01)"),
    ({"train.lr": {"low": 0.01}}, "tune.space.train.lr: give low and high (a range) or choices"),
    ({"train.lr": {"low": 0.01, "high": 0.1, "choices": [0.1]}}, "give choices, or a range"),
])
def test_a_bad_search_space_is_refused_before_any_trial(tmp_path, tiny_raw, space, expected):
    assert expected in _plan_error(tmp_path, tiny_raw, space)


def test_a_valid_space_with_plugin_options_and_integer_ranges_plans(tmp_path, tiny_raw):
    space = {**SPACE, "modalities.audio.options.channels": {"low": 2, "high": 6}, "train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    plan = plan_tuning(_config(tmp_path, tiny_raw, space, metric="f1"), out=tmp_path / "out")
    assert plan.metric == "f1" and plan.direction == "maximize" and "tune" not in plan.raw
    assert plan.storage == f"sqlite:///{(tmp_path / 'out' / STUDY_FILE).resolve()}"
    assert plan.config.tune is None and plan.study_name == "tiny"
    assert probe_values(plan.tune.space["modalities.audio.options.channels"])[:2] == [2, 6]  # an integer range stays integer
    loss = plan_tuning(_config(tmp_path, tiny_raw, metric="loss"), out=tmp_path / "out")
    assert loss.direction == "minimize"  # from the metric registry


def test_a_metric_the_data_set_cannot_give_is_refused(tmp_path, tiny_raw):
    with pytest.raises(ConfigError, match="tune.metric: eer is defined for 2 classes; the data set 'synthetic' has 3. Tune one of wa, ua, f1, loss"):
        plan_tuning(_config(tmp_path, tiny_raw, metric="eer"), out=tmp_path / "out")


def test_a_config_without_tune_section_is_an_error(tiny_config_path):
    with pytest.raises(MultiturboError, match="has no tune section"):
        plan_tuning(tiny_config_path)


@pytest.mark.parametrize("url", ["redis://localhost:6379", "postgress://u@h/db", "study.db", "sqlite://"])
def test_an_unknown_storage_url_is_a_clear_error(url):
    with pytest.raises(MultiturboError, match="storage") as info:
        check_storage_url(url)
    assert "sqlite:///" in str(info.value)


@pytest.mark.parametrize("url", ["sqlite:///x/study.db", "postgresql://u:p@host/db", "postgresql+psycopg2://u@h/db", "mysql+pymysql://u@h/db"])
def test_optuna_storage_urls_are_accepted(url):
    assert check_storage_url(url) == url


@pytest.mark.parametrize("settings, direction, pruner", [
    ({"pruner": "median", "startup_trials": 3, "warmup_epochs": 2}, "maximize", "MedianPruner"),
    ({"pruner": "hyperband"}, "maximize", "HyperbandPruner"),
    ({"pruner": "threshold", "threshold": 0.4}, "maximize", "ThresholdPruner"),
    ({"pruner": "none"}, "minimize", "NopPruner"),
])
def test_tune_settings_become_optuna_objects(settings, direction, pruner):
    t = TuneConfig.model_validate({"space": SPACE, **settings})
    made = make_pruner(t, direction)
    assert type(made).__name__ == pruner
    if pruner == "MedianPruner":
        assert (made._n_startup_trials, made._n_warmup_steps) == (3, 2)
    if pruner == "ThresholdPruner":  # higher is better: a value below the threshold is pruned
        assert (made._lower, made._upper) == (0.4, float("inf"))
    assert type(make_sampler(t)).__name__ == "TPESampler"
    assert type(make_sampler(TuneConfig.model_validate({"space": SPACE, "sampler": "random"}))).__name__ == "RandomSampler"


def test_the_threshold_pruner_needs_its_threshold():
    with pytest.raises(ValueError, match="pruner threshold needs tune.threshold"):
        TuneConfig.model_validate({"space": SPACE, "pruner": "threshold"})


def test_without_optuna_the_command_names_the_extra(tmp_path, tiny_raw, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    res = CliRunner().invoke(cli, ["tune", str(_config(tmp_path, tiny_raw)), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and 'pip install "multiturbo[tune]"' in res.output and "Traceback" not in res.output


def test_a_password_is_hidden_in_shown_urls():
    assert shown_url("postgresql://tuner:secret@db.example.org:5432/optuna") == "postgresql://tuner:***@db.example.org:5432/optuna"
    assert shown_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"


def test_tune_refuses_torchrun(tmp_path, tiny_raw, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MultiturboError, match="not started with torchrun"):
        plan_tuning(_config(tmp_path, tiny_raw), out=tmp_path / "out")


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, tiny_raw):
    """Values that are valid one by one but break a rule together (in-modal terms with one pass)
    fail their trial with the config's message; the next trial still runs."""
    tiny_raw["turbo"] = {"in_modal": False}
    space = {"turbo.in_modal": {"choices": [True, False]}, "turbo.passes": {"choices": [1, 2]}}
    plan = plan_tuning(_config(tmp_path, tiny_raw, space), out=tmp_path / "out")
    for _ in range(2):
        open_study(plan).enqueue_trial({"turbo.in_modal": True, "turbo.passes": 1})
    study = run_study(plan, trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert "turbo.in_modal: in-modal terms compare passes of one modality and need turbo.passes >= 2" in study.trials[1].user_attrs["error"]
    rows = write_tune_report(plan.out, study, storage="sqlite", metric="ua", direction="maximize")
    assert [r["state"] for r in rows] == ["fail", "fail"] and rows[0]["run_dir"] == "" and not trial_dir(plan.out, 0).exists()
    assert "No trial has completed yet." in (plan.out / TUNE_MD).read_text()


def test_cli_refuses_an_unknown_storage_scheme_without_a_traceback(tmp_path, tiny_raw):
    res = CliRunner().invoke(cli, ["tune", str(_config(tmp_path, tiny_raw)), "--out", str(tmp_path / "out"), "--storage", "redis://h:6379/0"])
    assert res.exit_code == 2, res.output
    assert "unknown storage scheme 'redis'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_pruned_trial_reads_pruned_and_a_rerun_continues_the_study(tmp_path, tiny_raw):
    """A ThresholdPruner no value reaches prunes trial 0 after epoch 1 (run.json: pruned, not failed);
    rerunning on the same OUT continues the study with trial 1, whose objective is its validation
    UA at its best epoch (metrics.jsonl), not a test metric."""
    out = tmp_path / "out"
    path = _config(tmp_path, tiny_raw, pruner="threshold", threshold=2.0, warmup_epochs=0)  # UA < 2 always: pruned
    study = run_study(plan_tuning(path, out=out), trials=1)
    (t0,) = study.trials
    assert t0.state == optuna.trial.TrialState.PRUNED and list(t0.intermediate_values) == [1]
    info = json.loads((trial_dir(out, 0) / "run.json").read_text())
    assert info["status"] == "pruned" and "pruned by Optuna's threshold pruner after epoch 1" in info["reason"] and "error" not in info
    assert len((trial_dir(out, 0) / "metrics.jsonl").read_text().splitlines()) == 1  # stopped after epoch 1 of 2

    with pytest.raises(MultiturboError, match=r"was started with another config.*train.lr: study 0.003, given 0.01"):
        run_study(plan_tuning(path, ["train.lr=0.01"], out=out), trials=1)  # a key outside the space changed
    open_study(plan_tuning(path, ["train.lr=0.01"], out=out, may_differ=["train"]))  # allowed with --may-differ
    with pytest.raises(MultiturboError, match="optimises val ua, this config val loss"):
        run_study(plan_tuning(path, ["tune.metric=loss"], out=out), trials=1)

    study = run_study(plan_tuning(path, ["tune.pruner=none"], out=out), trials=1)  # tune settings may change
    assert [t.number for t in study.trials] == [0, 1]
    t1 = study.trials[1]
    assert t1.state == optuna.trial.TrialState.COMPLETE
    run1 = trial_dir(out, 1)
    info = json.loads((run1 / "run.json").read_text())
    metrics = json.loads((run1 / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (run1 / "metrics.jsonl").read_text().splitlines()]
    assert info["status"] == "finished" and len(epochs) == 2
    assert t1.value == epochs[metrics["best_epoch"] - 1]["val"]["ua"]
    assert t1.intermediate_values == {e["epoch"]: e["val"]["ua"] for e in epochs}
    saved = yaml.safe_load((run1 / "config.yaml").read_text())  # an ordinary run's config, with the sampled values
    assert saved["tune"] is None
    assert (saved["turbo"]["ce_weight"], saved["turbo"]["temperature"], saved["turbo"]["passes"]) == tuple(t1.params[k] for k in SPACE)

    rows = write_tune_report(out, study, storage="sqlite", metric="ua", direction="maximize")
    assert [(r["trial"], r["state"]) for r in rows] == [(0, "pruned"), (1, "complete")]
    assert best_row(rows, "maximize")["trial"] == 1
    text = (out / TUNE_MD).read_text()
    assert "Trial 1: val ua" in text and "| 0 | pruned |" in text
    assert "Parameter importance (fANOVA): not drawn (it needs at least 2 completed trials, the study has 1)" in text
    assert not (out / IMPORTANCE_PNG).exists()


def test_the_summary_waits_for_another_process_writing_it(tmp_path):
    """Reading the study and writing the summary happen under one lock: while another process holds
    it, nothing is read or written, so the summary written last is the one that read the study last
    (a process that read earlier but drew its figures slower cannot overwrite a complete summary)."""
    import threading

    from filelock import FileLock

    study = optuna.create_study(study_name="s", direction="maximize")
    held = FileLock(tmp_path / TUNE_LOCK)
    held.acquire()
    writer = threading.Thread(target=write_tune_report, args=(tmp_path, study),
                              kwargs={"storage": "memory", "metric": "ua", "direction": "maximize"})
    writer.start()
    writer.join(timeout=1.0)
    assert writer.is_alive() and not (tmp_path / TUNE_MD).exists()  # waiting for the lock
    held.release()
    writer.join(timeout=60)
    assert not writer.is_alive() and "0 trial(s)" in (tmp_path / TUNE_MD).read_text()


def test_two_processes_share_one_sqlite_study(tmp_path, tiny_raw):
    """Two `multiturbo tune` processes at once on one SQLite study: every trial of both is in the
    study, each with its own run directory; the summary lists them all with both figures."""
    tiny_raw["train"]["epochs"] = 1
    path, out = _config(tmp_path, tiny_raw), tmp_path / "out"
    cmd = [sys.executable, "-m", "multiturbo", "tune", str(path), "--out", str(out), "--trials", "2", "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stdout + stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / STUDY_FILE}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_process: dict[int, list] = {}
    for t in trials:
        by_process.setdefault(t.user_attrs["pid"], []).append(t)
    assert sorted(len(ts) for ts in by_process.values()) == [2, 2]  # each process ran its 2 trials: none lost
    spans = [(min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts)) for ts in by_process.values()]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # and they ran at the same time
    dirs = {t.user_attrs["run_dir"] for t in trials}
    assert dirs == {str(trial_dir(out, n).resolve()) for n in range(4)}
    for d in dirs:
        assert json.loads((tmp_path / d / "run.json").read_text())["status"] == "finished"
    rows = trial_rows(study)
    assert len(rows) == 4 and all(r["value"] == t.value for r, t in zip(rows, sorted(trials, key=lambda t: t.number)))
    text = (out / TUNE_MD).read_text()
    assert "4 trial(s): 4 complete" in text and "![Optimisation history](history.png)" in text
    assert (out / "history.png").stat().st_size > 0 and (out / IMPORTANCE_PNG).stat().st_size > 0
    assert any("best: trial" in stdout for stdout, _ in outputs)


def test_tune_folds_optimise_the_mean_over_folds(tmp_path, tiny_raw):
    """With tune.folds each trial runs one run directory per fold; the objective is the mean of the
    folds' best-epoch validation values, reported to Optuna as steps fold x epochs + epoch."""
    tiny_raw["data"]["options"]["folds"] = 3
    tiny_raw["train"]["epochs"] = 1
    out = tmp_path / "out"
    study = run_study(plan_tuning(_config(tmp_path, tiny_raw, folds=[0, 2]), out=out), trials=1)
    (t,) = study.trials
    values = []
    for fold in (0, 2):
        run = trial_dir(out, 0) / f"fold{fold}"
        assert json.loads((run / "run.json").read_text())["fold"] == fold
        values.append(json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["val"]["ua"])
    assert t.user_attrs["fold_values"] == values and t.value == pytest.approx(sum(values) / 2)
    assert t.intermediate_values == {1: values[0], 2: values[1]}


def test_the_demo_config_search_space_plans(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    plan = plan_tuning(demo, out=tmp_path / "out")
    assert set(plan.tune.space) >= {"turbo.ce_weight", "turbo.temperature", "turbo.passes", "model.dropout", "train.lr"}
    assert plan.tune.space["turbo.temperature"].log and plan.direction == "maximize"


def test_with_mlflow_tracking_every_trial_is_a_tagged_run_in_one_store(tmp_path, tiny_raw):
    mlflow = pytest.importorskip("mlflow")
    tiny_raw["train"].update(epochs=1, tracking="mlflow")
    out = tmp_path / "out"
    run_study(plan_tuning(_config(tmp_path, tiny_raw), out=out), trials=1)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve().as_posix()}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {k: run.data.tags[k] for k in ("command", "trial", "study")} == {"command": "tune", "trial": "0", "study": "tiny"}
    assert run.info.run_name == "trial 0" and run.info.status == "FINISHED"
    sampled = yaml.safe_load((trial_dir(out, 0) / "config.yaml").read_text())["turbo"]["temperature"]
    assert float(run.data.params["turbo.temperature"]) == pytest.approx(sampled)  # the trial's resolved config
