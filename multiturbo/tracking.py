"""Live experiment tracking with MLflow (optional: ``pip install "multiturbo[mlflow]"``).

With ``train.tracking: mlflow`` :func:`multiturbo.run.run_experiment` logs its run to MLflow while it
trains (rank 0 only; docs/tracking.md):

- start: an MLflow run in the experiment ``train.tracking_experiment`` (default: the config's name)
  of the store :func:`tracking_uri`; parameters: the resolved config, flattened to dotted keys
  (:func:`config_params`); tags: method, seed, fold, dataset, the run directory, and the caller's
  (cv / compare: ``command`` and the parent run; a tuner: its trial). The MLflow run's id goes into
  run.json (``tracking``), so a resumed run continues the same MLflow run, first logging any epoch
  of metrics.jsonl that MLflow missed;
- each epoch: the epoch's metrics.jsonl record as metrics with step = epoch (:func:`epoch_metrics`);
- end: the test metrics (``test/<metric>``), the run's report.md, analysis/ (figures), config.yaml,
  run.json, metrics.jsonl and metrics.json as artifacts, and the status: FINISHED, FAILED (an
  exception) or KILLED (Ctrl-C).

cv and compare open a parent run over their runs (:func:`start_plan_tracking`): each run is its
child (MLflow's ``mlflow.parentRunId`` tag), and the parent gets the plan, the summary metrics and
the summary files.

A failure to reach the store at the start is an error before training; a failure later (a server
gone) is a warning: the run goes on, and metrics.jsonl keeps every epoch. mlflow is imported only
when tracking starts (its import alone takes about a second).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import rundir
from .config import ExperimentConfig, TrainConfig
from .config.load import MLFLOW_INSTALL
from .errors import MultiturboError
from .version import __version__

STORE_FILE = "mlflow.db"  # the default store: a SQLite database next to the run directories
ARTIFACTS_DIR = "mlartifacts"  # the default store's artifacts, beside its database
LAST_EPOCH_TAG = "multiturbo.last_epoch"  # the last epoch logged: a resume logs the ones after it
PLAN_TRACKING_FILE = "tracking.json"  # a cv / compare directory's parent run: {"uri": ..., "run_id": ...}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
_BAD_KEY_CHARS = re.compile(r"[^\w./\- ]")  # MLflow keys: letters, digits, _ . / - and space

Log = Callable[[str], None]


def tracking_uri(train: TrainConfig, root: str | Path) -> str:
    """The store a run logs to: ``train.tracking_uri``, else $MLFLOW_TRACKING_URI, else a SQLite
    database ``root/mlflow.db`` (``root``: the run directory's parent; cv / compare: their output
    directory). MLflow 3 refuses a plain-directory store (``./mlruns``) unless
    MLFLOW_ALLOW_FILE_STORE=true, so the default is its recommended SQLite one."""
    return train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root).resolve() / STORE_FILE).as_posix()}"


_KEY_WORDS = (("->", "_to_"), ("@", "_at_"), ("~", "-"))


def metric_key(name: str) -> str:
    """A name as MLflow accepts it: the ``~`` of the Turbo terms becomes ``-`` (``audio1~text1`` ->
    ``audio1-text1``), ``@`` ``_at_`` and ``->`` ``_to_`` (``recall@1/audio->text`` ->
    ``recall_at_1/audio_to_text``), any other character MLflow refuses ``-``."""
    for old, new in _KEY_WORDS:
        name = name.replace(old, new)
    return _BAD_KEY_CHARS.sub("-", name)[:250]


# the record's sections, by their metric prefix (the names of multiturbo.tensorboard)
_PREFIX = {"terms": "term"}
_NOT_METRICS = ("epoch", "step", "warnings")


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's metrics.jsonl record as MLflow metrics: every number, nested keys joined by ``/``:
    ``train/loss``, ``train/ce``, ``train/contrastive``, ``train/temperature``, ``term/<pair>`` (each
    Turbo term), ``val/<metric>``, ``lr/<param group>``, ``diagnostics/...``, ``padding/<modality>``,
    ``peak_memory/...``, ``items_per_s``, ``seconds``, ``best`` (1 at a new best epoch), ``nonfinite_skipped``.
    None (e.g. an undefined EER) is NaN; lists (the confusion matrix) and warnings are left out."""
    out: dict[str, float] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}/{k}", v)
        elif value is None or isinstance(value, (int, float)):
            out[metric_key(key)] = math.nan if value is None else float(value)

    for key, value in record.items():
        if key not in _NOT_METRICS:
            walk(_PREFIX.get(key, key), value)
    return out


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config as MLflow parameters: dotted keys (``turbo.passes``, ``modalities.audio.encoder``,
    ``train.lr_groups.audio``), values as YAML would write them (strings as they are, others as JSON);
    an empty mapping is ``{}``."""
    out: dict[str, str] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[metric_key(key)] = text[:MAX_PARAM_LENGTH]

    walk("", cfg.model_dump(mode="json"))
    return out


def run_tags(cfg: ExperimentConfig, out: Path) -> dict[str, str]:
    """The tags of every tracked run: method, seed, fold (when set), dataset, run_dir, multiturbo_version."""
    tags = {"method": cfg.method, "seed": str(cfg.seed), "dataset": cfg.data.name, "run_dir": str(Path(out).resolve()),
            "multiturbo_version": __version__}
    if cfg.data.fold is not None:
        tags["fold"] = str(cfg.data.fold)
    return tags


class MlflowRun:
    """One MLflow run, logged through ``mlflow.tracking.MlflowClient``: metrics, artifacts and the end status.
    Made by :func:`start_run_tracking` (a training run) or :func:`start_plan_tracking` (a cv / compare)."""

    def __init__(self, client: Any, uri: str, experiment_id: str, run_id: str, log: Log, last_epoch: int = 0):
        self.client, self.uri, self.experiment_id, self.run_id = client, uri, experiment_id, run_id
        self.log, self.last_epoch, self.stopped = log, last_epoch, False

    def record(self) -> dict[str, str]:
        """What run.json keeps (``tracking``): backend, uri, experiment_id, run_id."""
        return {"backend": "mlflow", "uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    def log_metrics(self, metrics: Mapping[str, float], step: int, tags: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Metric, RunTag  # optional: the mlflow extra

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, max(len(items), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000], tags=run_tags if i == 0 else [])

    def log_params(self, params: Mapping[str, str]) -> None:
        """The parameters the run lacks (a resumed run has them; MLflow refuses to change one)."""
        from mlflow.entities import Param  # optional: the mlflow extra

        have = self.client.get_run(self.run_id).data.params
        items = [Param(k, v) for k, v in params.items() if k not in have]
        for i in range(0, len(items), 100):  # at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def epoch(self, record: Mapping[str, Any]) -> None:
        """Log an epoch's metrics.jsonl record (step = its epoch). A failure is a warning and stops the
        tracking: training goes on, metrics.jsonl keeps every epoch."""
        if self.stopped:
            return
        epoch = int(record["epoch"])
        try:
            self.log_metrics(epoch_metrics(record), epoch, {LAST_EPOCH_TAG: str(epoch)})
            self.last_epoch = epoch
        except Exception as exc:  # noqa: BLE001 - a tracking server gone must not end the training
            self.stopped = True
            self.log(f"warning: MLflow tracking stopped at epoch {epoch} ({type(exc).__name__}: {exc}); the run goes on, "
                     f"and metrics.jsonl keeps every epoch.")

    def finish(self, files: Iterable[Path] = (), metrics: Mapping[str, Any] | None = None, step: int = 0) -> None:
        """The final metrics (their numbers), ``files`` as artifacts (a directory keeps its name), status
        FINISHED. A failure is a warning (what it would log is in the run directory)."""
        try:
            numbers = {metric_key(k): float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
            if numbers:
                self.log_metrics(numbers, step)
            self._artifacts(files)
            self.client.set_terminated(self.run_id, "FINISHED")
        except Exception as exc:  # noqa: BLE001 - the run itself is finished and saved
            self.log(f"warning: MLflow tracking could not finish the run {self.run_id} ({type(exc).__name__}: {exc}); "
                     f"the run directory holds everything it would have logged.")

    def fail(self, exc: BaseException, files: Iterable[Path] = ()) -> None:
        """The run stopped on ``exc``: status KILLED (Ctrl-C) or FAILED, the error as the tag ``error``, and
        ``files`` (run.json with the error...). Never raises: ``exc`` says more than a tracking error."""
        try:
            self.client.set_tag(self.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
            self._artifacts(files)
            self.client.set_terminated(self.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        except Exception:  # noqa: BLE001
            pass

    def _artifacts(self, files: Iterable[Path]) -> None:
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))


def _client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri``; MLflow's notes on creating a new database are kept quiet."""
    try:
        from mlflow.tracking import MlflowClient  # optional: the mlflow extra; about 1 s to import
    except ImportError as exc:
        raise MultiturboError(f"train.tracking: mlflow needs the MLflow extra ({exc}). Install it with {MLFLOW_INSTALL}, "
                              f"or set train.tracking=none.") from None
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """A new experiment's artifact root: beside a SQLite database (``mlartifacts/``); None (the
    store's own) for a server or another database."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS_DIR).as_uri()


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException  # optional: the mlflow extra

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException:  # another process created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise MultiturboError(f"The MLflow experiment {name!r} in {uri} is deleted. Restore it (`mlflow experiments restore "
                              f"--experiment-id {experiment.experiment_id}`), or set train.tracking_experiment to another name.")
    return experiment.experiment_id


def _open(uri: str, experiment: str, previous: Mapping[str, Any] | None, name: str, tags: Mapping[str, str], log: Log) -> tuple[MlflowRun, bool]:
    """The MLflow run ``previous`` names (set RUNNING again) when it is in this store, else a new one;
    returns it and whether it is new. Any MLflow failure is a MultiturboError naming the store."""
    try:
        client = _client(uri)
        if previous and previous.get("uri") == uri and previous.get("run_id"):
            try:
                old = client.get_run(previous["run_id"])
            except Exception:  # noqa: BLE001 - gone from the store: a new run takes its place
                old = None
            if old is not None and old.info.lifecycle_stage == "active":
                client.update_run(old.info.run_id, status="RUNNING")
                last = int(old.data.tags.get(LAST_EPOCH_TAG, 0))
                return MlflowRun(client, uri, old.info.experiment_id, old.info.run_id, log, last), False
        experiment_id = _experiment_id(client, experiment, uri)
        run = client.create_run(experiment_id, tags=dict(tags), run_name=name)
        return MlflowRun(client, uri, experiment_id, run.info.run_id, log), True
    except MultiturboError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's own errors (a refused store, a server not reached...)
        raise MultiturboError(
            f"MLflow tracking could not start with the store {uri} ({type(exc).__name__}: {exc}). Check train.tracking_uri "
            f"(or $MLFLOW_TRACKING_URI): e.g. sqlite:///runs/mlflow.db or http://host:5000; or set train.tracking=none."
        ) from None


def experiment_name(cfg: ExperimentConfig) -> str:
    """``train.tracking_experiment``, else the config's name (else ``multiturbo``)."""
    return cfg.train.tracking_experiment or cfg.name or "multiturbo"


def start_run_tracking(cfg: ExperimentConfig, out: Path, *, tags: Mapping[str, str] | None = None, root: Path | None = None,
                       previous: Mapping[str, Any] | None = None, log: Log = print) -> MlflowRun | None:
    """Start (or, after a resume, continue) the MLflow run of the training run in ``out``; None when
    ``train.tracking`` is none. ``tags`` are added to :func:`run_tags` (``mlflow.runName`` names the
    run: default the directory's name); ``root``: where the default store goes (default ``out``'s
    parent); ``previous``: run.json's ``tracking`` of the run being resumed. Logs the parameters the
    run lacks and any epoch of metrics.jsonl after the last one MLflow has."""
    if cfg.train.tracking == "none":
        return None
    out = Path(out)
    tags = {**run_tags(cfg, out), **(tags or {})}
    name = tags.pop("mlflow.runName", out.name)
    run, _ = _open(tracking_uri(cfg.train, root or out.resolve().parent), experiment_name(cfg), previous, name, tags, log)
    try:
        run.log_params(config_params(cfg))
        for record in rundir.read_log(out):
            if int(record["epoch"]) > run.last_epoch:
                run.epoch(record)
    except Exception as exc:  # noqa: BLE001
        raise MultiturboError(f"MLflow tracking could not log the run's parameters to {run.uri} ({type(exc).__name__}: {exc}). "
                              f"Check the store, or set train.tracking=none.") from None
    return run


def start_plan_tracking(cfg: ExperimentConfig, out: Path, command: str, params: Mapping[str, Any], log: Log = print, *,
                        overwrite: bool = False) -> MlflowRun | None:
    """The parent run of a cv / compare into ``out`` (None when ``cfg.train.tracking`` is none): named
    ``<command> <out's name>``, tagged ``command``, with ``params`` (the plan: methods, folds, seeds).
    Its id is kept in ``out/tracking.json``, so a resumed cv / compare continues it (``overwrite``:
    a new parent)."""
    if cfg.train.tracking == "none":
        return None
    out = Path(out)
    state = out / PLAN_TRACKING_FILE
    previous = json.loads(state.read_text(encoding="utf-8")) if state.is_file() and not overwrite else None
    run, new = _open(tracking_uri(cfg.train, out), experiment_name(cfg), previous, f"{command} {out.name}",
                     {"command": command, "run_dir": str(out.resolve()), "multiturbo_version": __version__}, log)
    if new:
        out.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"uri": run.uri, "run_id": run.run_id}, indent=2) + "\n", encoding="utf-8")
        try:
            run.log_params({k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()})
        except Exception as exc:  # noqa: BLE001
            raise MultiturboError(f"MLflow tracking could not log the plan to {run.uri} ({type(exc).__name__}: {exc}). "
                                  f"Check the store, or set train.tracking=none.") from None
    return run
