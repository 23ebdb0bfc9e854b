"""Live MLflow tracking (train.tracking: mlflow): a tracked cv read back with MLflow's client, a resumed
run continuing its MLflow run, the end statuses, and the errors (the extra missing, a bad store)."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil

import pytest

import multiturbo.config.load as config_load
from multiturbo import crossval, rundir
from multiturbo.config import check_config, validate_config
from multiturbo.errors import ConfigError, MultiturboError
from multiturbo.run import run_experiment
from multiturbo.tracking import config_params, epoch_metrics, metric_key, start_run_tracking

from conftest import TINY

mlflow = pytest.importorskip("mlflow")  # the dev extra installs it (pip install "multiturbo[mlflow]")
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")  # inside MLflow's SQLite store
from mlflow.tracking import MlflowClient  # noqa: E402


def tracked_config(**train):
    raw = copy.deepcopy(TINY)
    raw["data"]["options"]["folds"] = 3
    raw["train"].update(tracking="mlflow", **train)
    return check_config(validate_config(raw))


@pytest.fixture(scope="module")
def tracked_cv(tmp_path_factory):
    """One tracked cv of one run (fold 1, seed 2, two epochs) into a fresh directory, with the default store."""
    out = tmp_path_factory.mktemp("tracked") / "cv"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tracked_config()
        crossval.cross_validate(cfg, out, folds=[1], seeds=[2])
    return cfg, out


def test_a_tracked_run_reads_back_with_mlflows_client(tracked_cv):
    cfg, out = tracked_cv
    run_dir = out / crossval.run_name(1, 2)
    tracking = rundir.read_info(run_dir)["tracking"]
    assert tracking["uri"] == f"sqlite:///{(out / 'mlflow.db').resolve().as_posix()}"  # the default store: the cv's directory
    client = MlflowClient(tracking["uri"])
    run = client.get_run(tracking["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == cfg.name

    saved = rundir.read_saved_config(run_dir)
    assert run.data.params["turbo.passes"] == str(saved["turbo"]["passes"])
    assert run.data.params["train.lr"] == str(saved["train"]["lr"])
    assert run.data.params["modalities.audio.encoder"] == saved["modalities"]["audio"]["encoder"]
    assert run.data.params["data.fold"] == "1" and run.data.params["seed"] == "2"

    log = rundir.read_log(run_dir)
    epochs = [r["epoch"] for r in log]
    assert epochs == list(range(1, cfg.train.epochs + 1))
    term = next(iter(log[0]["terms"]))
    for key, section, name in ((f"term/{term}", "terms", term), ("val/ua", "val", "ua"), ("train/temperature", "train", "temperature")):
        history = sorted(client.get_metric_history(run.info.run_id, metric_key(key)), key=lambda m: m.step)
        assert [m.step for m in history] == epochs, key
        assert [m.value for m in history] == pytest.approx([r[section][name] for r in log]), key
    test = rundir.read_test_metrics(run_dir)
    assert run.data.metrics["test/ua"] == pytest.approx(test["ua"])

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "config.yaml", "run.json", "metrics.jsonl", "metrics.json", "test_predictions.csv", "analysis"} <= artifacts
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "analysis"))

    tags = run.data.tags
    assert (tags["fold"], tags["seed"], tags["method"], tags["command"]) == ("1", "2", cfg.method, "cv")
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["command"] == "cv"
    assert json.loads((out / "tracking.json").read_text())["run_id"] == parent.info.run_id
    assert parent.data.metrics["ua_mean"] == pytest.approx(test["ua"])
    assert {"cv.md", "plan.yaml", "report.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_epoch_metrics_take_every_number_of_a_record(tracked_cv):
    record = rundir.read_log(tracked_cv[1] / crossval.run_name(1, 2))[-1]
    metrics = epoch_metrics(record)
    assert {k for k in metrics if k.startswith("term/")} == {metric_key(f"term/{t}") for t in record["terms"]}
    assert {k for k in metrics if k.startswith("lr/")} == {f"lr/{g}" for g in record["lr"]}
    assert metrics["best"] == float(record["best"])
    assert not any("confusion" in k for k in metrics)  # a list, not a metric
    assert all(k == metric_key(k) for k in metrics)
    assert metric_key("recall@1/audio->text") == "recall_at_1/audio_to_text" and metric_key("term/a1~b2") == "term/a1-b2"


def test_a_resumed_run_continues_its_mlflow_run_and_logs_what_it_missed(tracked_cv, tmp_path):
    cfg, out = tracked_cv
    log = rundir.read_log(out / crossval.run_name(1, 2))
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps(log[0]) + "\n")
    store = rundir.read_info(out / crossval.run_name(1, 2))["tracking"]["uri"]  # the fixture's: a new database costs a second
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"tracking_uri": store})})
    first = start_run_tracking(cfg, run_dir, log=pytest.fail)  # epoch 1 logged from metrics.jsonl, then the process dies
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(log[1]) + "\n")  # the epoch whose hook never ran
    again = start_run_tracking(cfg, run_dir, previous=first.record(), log=pytest.fail)
    assert again.run_id == first.run_id and again.last_epoch == 2
    client = MlflowClient(store)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(first.run_id, "val/ua")] == [1, 2]  # each epoch once
    again.fail(KeyboardInterrupt())
    assert client.get_run(first.run_id).info.status == "KILLED"

    gone = {**first.record(), "run_id": "0" * 32}  # not in the store (deleted there): a new run takes its place
    new = start_run_tracking(cfg, run_dir, previous=gone, log=pytest.fail)
    assert new.run_id != first.run_id and new.last_epoch == 2
    new.fail(RuntimeError("boom"))
    run = client.get_run(new.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
    assert run.data.params == config_params(cfg)


def test_a_killed_run_ends_killed_and_its_resume_continues_the_same_mlflow_run(tracked_cv, tmp_path):
    store = rundir.read_info(tracked_cv[1] / crossval.run_name(1, 2))["tracking"]["uri"]  # no new database
    cfg = tracked_config(tracking_uri=store)

    def ctrl_c(record):  # the tracker has logged the epoch before this hook
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out, on_epoch=ctrl_c, tags={"trial": "7"})
    client = MlflowClient(store)
    run_id = rundir.read_info(out)["tracking"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["trial"] == "7"
    assert [m.step for m in client.get_metric_history(run_id, "val/ua")] == [1]

    run_experiment(cfg, out, resume=True)
    assert rundir.read_info(out)["tracking"]["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val/ua")] == [1, 2]
    assert "report.md" in {a.path for a in client.list_artifacts(run_id)}


def test_a_store_lost_during_training_is_a_warning_and_stops_the_tracking(tracked_cv):
    from multiturbo.tracking import MlflowRun

    class Gone:
        def log_batch(self, *a, **k):
            raise ConnectionError("server gone")

    warnings = []
    run = MlflowRun(Gone(), "http://gone", "1", "abc", warnings.append)
    record = rundir.read_log(tracked_cv[1] / crossval.run_name(1, 2))[0]
    run.epoch(record)
    run.epoch({**record, "epoch": 2})  # no second try, no second warning
    assert run.stopped and len(warnings) == 1 and "server gone" in warnings[0] and "metrics.jsonl keeps every epoch" in warnings[0]


def test_the_settings_are_in_the_json_schema():
    from multiturbo.config import ExperimentConfig

    train = ExperimentConfig.model_json_schema()["$defs"]["TrainConfig"]["properties"]
    assert train["tracking"]["enum"] == ["none", "mlflow"] and train["tracking"]["default"] == "none"
    assert {"tracking_uri", "tracking_experiment"} <= set(train)


def test_missing_extra_is_a_config_error_naming_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(config_load.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r'train\.tracking: mlflow needs the MLflow extra.*pip install "multiturbo\[mlflow\]"'):
        tracked_config()
    raw = copy.deepcopy(TINY)
    check_config(validate_config(raw))  # tracking off: mlflow not needed


def test_the_default_sqlite_store_needs_sqlalchemy_but_a_server_does_not(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(config_load.importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"sqlalchemy is not installed.*multiturbo\[mlflow\]"):
        tracked_config()
    tracked_config(tracking_uri="http://localhost:5000")


def test_mlflow_gone_at_run_time_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "mlflow.tracking", None)  # import fails
    with pytest.raises(MultiturboError, match=r'pip install "multiturbo\[mlflow\]"'):
        start_run_tracking(tracked_config(tracking_uri=f"sqlite:///{tmp_path / 'x.db'}"), tmp_path / "run")


def test_a_store_mlflow_refuses_fails_the_run_before_training(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(MultiturboError, match=r"MLflow tracking could not start with the store nosuch://here.*train\.tracking_uri"):
        run_experiment(tracked_config(tracking_uri="nosuch://here"), out)
    assert rundir.read_info(out)["status"] == "failed"
    assert not rundir.read_log(out)  # no epoch trained
    shutil.rmtree(out)
