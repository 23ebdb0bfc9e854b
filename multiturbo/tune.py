"""``multiturbo tune CONFIG --trials N``: hyperparameter search with Optuna.

The config's ``tune`` section (:class:`~multiturbo.config.TuneConfig`) names the search space
(dotted config paths with a range or choices), the validation metric, Optuna's sampler and
pruner, and the study's storage. Everything is checked before the first trial: each space key
is applied to the config, as ``--set`` does, at both ends of its range (and inside it, which
catches a float range on an integer field), and the whole config is validated; the storage URL's
scheme must be one SQLAlchemy (Optuna's RDB storage) knows.

Each trial is an ordinary run directory, ``OUT/trial-0007/`` (``OUT/trial-0007/fold3/`` per fold
with ``tune.folds``), trained by :func:`multiturbo.run.run_experiment`. After every epoch the
validation metric is reported to Optuna; when the pruner says so the run stops, and its run.json
reads ``status: pruned``. The objective is the metric's validation value at the run's best epoch
(the mean over folds with ``tune.folds``), never a test metric.

The study lives in ``OUT/study.db`` (SQLite) unless a storage URL is given; rerunning continues
it. Several processes, on one machine or many (a PostgreSQL / MySQL URL), may run
``multiturbo tune`` on one study at once: Optuna's storage hands each trial a distinct number,
hence a distinct run directory. The summary (:mod:`multiturbo.tune_report`) is rewritten by each
process at its end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (ExperimentConfig, SearchRange, TuneConfig, apply_values, check_config, config_differences,
                     describe_differences, load_raw, result_relevant, validate_config)
from .build import make_dataset
from .crossval import Fold, resolve_folds, with_fold_seed
from .errors import ConfigError, MultiturboError, RunStopped
from .metrics import METRICS, TABLE_METRICS
from .progress import ProgressReporter
from .run import run_experiment
from .tune_report import param_text

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "study.db"
# SQLAlchemy's dialects (the part of a URL before "://", less a "+driver"): the storages Optuna's RDBStorage accepts.
SQL_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
SQLITE_TIMEOUT_S = 60  # how long a SQLite writer waits for another process's lock before failing
HEARTBEAT_S = 60  # a running trial's heartbeat; one silent for GRACE_S (its process died) is failed and retried once
GRACE_S = 180
CONFIG_ATTR = "multiturbo_config"  # the study's user attributes: the base config and the metric, for the continuation check
METRIC_ATTR = "multiturbo_metric"


def optuna_module():
    """Optuna, imported on first use (an optional dependency: the ``tune`` extra)."""
    try:
        import optuna  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise MultiturboError('multiturbo tune needs Optuna, which is not installed: pip install "multiturbo[tune]".') from None
    return optuna


# -- checks before any trial -----------------------------------------------------------------------
def probe_values(spec: SearchRange) -> list[Any]:
    """Values of ``spec`` that :func:`check_space` validates: every choice, or both ends of the
    range and one point inside it (off the integers for a float range, so that a float range on
    an integer field is caught)."""
    if spec.choices is not None:
        return list(spec.choices)
    low, high = spec.low, spec.high
    if spec.log:
        inside = math.exp(math.log(low) + 0.37 * (math.log(high) - math.log(low)))
    elif spec.step is not None:
        inside = low + spec.step * round(0.37 * (high - low) / spec.step)
    else:
        inside = low + 0.37 * (high - low)
    if spec.is_int:
        return [int(low), int(high), int(round(inside))]
    return [float(low), float(high), float(inside)]


def check_space(raw: dict[str, Any], space: dict[str, SearchRange], source: str | None = None, registries=None) -> None:
    """Refuse a search space whose keys are not config paths or whose values make an invalid
    config: each key is set, as ``--set`` would, to each of :func:`probe_values` in ``raw`` (the
    config mapping without its ``tune`` section), and the config is validated and resolved.
    One ConfigError lists every bad key."""
    lines: list[str] = []
    for key, spec in space.items():
        if key == "tune" or key.startswith("tune.") or key in ("name", "train.monitor"):
            lines.append(f"tune.space.{key}: cannot be tuned ({'the tuned metric is tune.metric' if key == 'train.monitor' else 'not an experiment setting'}).")
            continue
        for value in probe_values(spec):
            try:
                check_config(validate_config(apply_values(raw, {key: value})), registries)
            except ConfigError as exc:
                problems = "; ".join(exc.lines)
                lines.append(f"tune.space.{key}: the value {value!r} gives an invalid config ({problems}). "
                             f"Use the path of a config value and a {'range' if spec.choices is None else 'list'} it accepts.")
                break
    if lines:
        raise ConfigError(lines, source)


def check_storage_url(url: str) -> str:
    """``url`` if it is a storage URL Optuna's RDB storage takes (sqlite, postgresql, mysql, ...,
    optionally with a ``+driver``), else a MultiturboError naming the scheme and the accepted ones."""
    scheme, sep, rest = url.partition("://")
    dialect = scheme.split("+", 1)[0].lower()
    examples = "sqlite:///path/study.db, postgresql://user:password@host/db, mysql+pymysql://user:password@host/db"
    if not sep or not scheme:
        raise MultiturboError(f"--storage / tune.storage {url!r} is not a storage URL (no scheme://). Give one like {examples}.")
    if dialect not in SQL_DIALECTS:
        raise MultiturboError(
            f"--storage / tune.storage {url!r}: unknown storage scheme {scheme!r}. Optuna's RDB storage takes SQLAlchemy URLs "
            f"of the databases {', '.join(SQL_DIALECTS)} (a driver may follow a +), e.g. {examples}."
        )
    if dialect == "sqlite" and not rest.lstrip("/"):
        raise MultiturboError(f"--storage {url!r}: a SQLite URL needs a file, e.g. sqlite:///runs/tune/study.db (three slashes, then the path).")
    return url


def default_storage(out: Path) -> str:
    """The embedded default: ``sqlite:///OUT/study.db`` (an absolute path)."""
    return f"sqlite:///{(Path(out) / STUDY_FILE).resolve()}"


def shown_url(url: str) -> str:
    """``url`` with its password hidden (for logs and tune.md)."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in auth:
        return url
    return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"


@dataclass(frozen=True)
class TunePlan:
    """What ``multiturbo tune`` will do, checked: the base config (``raw``: the file with ``--set``
    applied and no ``tune`` section; ``config``: it resolved), the tune settings, the metric and
    its direction, the folds, where the study lives and where the trials go."""

    raw: dict[str, Any]
    config: ExperimentConfig
    tune: TuneConfig
    metric: str
    direction: str  # "maximize" | "minimize"
    folds: list[Fold] | None  # None: the config's data.fold only (one run per trial)
    storage: str
    study_name: str
    out: Path
    source: str
    may_differ: tuple[str, ...] = ()  # config keys that may differ from the study's (e.g. a data path on another machine)


def plan_tuning(config: str | Path, overrides: Sequence[str] = (), out: Path | None = None, storage: str | None = None,
                study_name: str | None = None, registries=None, may_differ: Sequence[str] = ()) -> TunePlan:
    """Read and check everything ``multiturbo tune`` needs before its first trial (config, search
    space, metric, folds, storage URL); a MultiturboError naming the problem otherwise.
    ``may_differ``: config keys (and the keys under them) that may differ from the config the
    study was started with (``--may-differ``: e.g. ``data.options.root`` on another machine)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MultiturboError("multiturbo tune runs each trial in its own process and is not started with torchrun: start several "
                              "`multiturbo tune` processes on one study instead (docs/experiments.md, Tuning).")
    source = str(config)
    raw = load_raw(config, overrides)
    cfg = check_config(validate_config(raw, source), registries, source)
    if cfg.tune is None:
        raise MultiturboError(
            f"{source} has no tune section, so there is nothing to search. Add one, e.g. "
            "tune: {metric: ua, space: {turbo.temperature: {low: 0.03, high: 0.3, log: true}, turbo.ce_weight: {low: 0.2, high: 0.8}}} "
            "(docs/experiments.md, Tuning)."
        )
    t = cfg.tune
    base = {k: v for k, v in raw.items() if k != "tune"}
    check_space(base, t.space, source, registries)
    metric = t.metric or cfg.train.monitor
    _check_metric(cfg, metric, source, registries)
    folds = None if t.folds is None else resolve_folds(cfg, t.folds, registries)
    out = Path(out) if out is not None else Path("runs") / f"{cfg.name or 'run'}-tune"
    url = check_storage_url(storage or t.storage or default_storage(out))
    return TunePlan(raw=base, config=cfg.model_copy(update={"tune": None}), tune=t, metric=metric,
                    direction="maximize" if METRICS[metric].higher_is_better else "minimize", folds=folds,
                    storage=url, study_name=study_name or t.study_name or cfg.name or "multiturbo", out=out, source=source,
                    may_differ=tuple(may_differ))


def _check_metric(cfg: ExperimentConfig, metric: str, source: str, registries=None) -> None:
    """A metric defined for some numbers of classes only (EER: two) must suit the data set."""
    m = METRICS[metric]
    if m.classes is None:
        return
    n = len(make_dataset(cfg.data.name, cfg.data.options, cfg.data.data_seed, registries).classes)
    if not m.defined_for(n):
        others = ", ".join(name for name, other in METRICS.items() if other.defined_for(n))
        raise ConfigError([f"tune.metric: {metric} is defined for {m.classes} classes; the data set {cfg.data.name!r} has {n}. Tune one of {others}."], source)


# -- Optuna's objects ---------------------------------------------------------------------------------
def make_storage(url: str):
    """Optuna's RDB storage for ``url``: SQLite with a long lock timeout (several local processes),
    other databases with pre-ping; a heartbeat so a trial of a killed process is failed and
    retried once. Missing drivers and unreachable databases are MultiturboErrors."""
    optuna = optuna_module()
    sqlite = url.lower().startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if sqlite else {"pool_pre_ping": True}
    if sqlite:
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(5):  # two processes creating the tables of a new SQLite file at once may collide: try again
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                  **_retry_stale(optuna))
        except ImportError as exc:
            raise MultiturboError(f"The storage {shown_url(url)} needs a database driver that is not installed ({exc}). "
                                  f"Install it (e.g. pip install psycopg2-binary for postgresql, pymysql for mysql+pymysql).") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors: judged below
            if not type(exc).__module__.startswith("sqlalchemy"):
                raise
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise MultiturboError(f"Cannot open the Optuna storage {shown_url(url)}: {type(last).__name__}: {str(last).splitlines()[0]}. "
                          f"Check that the database is reachable and the URL right.")


def _retry_stale(optuna) -> dict[str, Any]:
    """The RDBStorage argument that retries (once) a trial failed for a stale heartbeat: Optuna >= 4.9
    names it ``heartbeat_stale_trial_callback``, earlier versions ``failed_trial_callback``."""
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}


def make_sampler(t: TuneConfig):
    optuna = optuna_module()
    if t.sampler == "random":
        return optuna.samplers.RandomSampler(seed=t.sampler_seed)
    return optuna.samplers.TPESampler(seed=t.sampler_seed)


def make_pruner(t: TuneConfig, direction: str):
    optuna = optuna_module()
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if t.pruner == "threshold":
        side = {"lower": t.threshold} if direction == "maximize" else {"upper": t.threshold}
        return optuna.pruners.ThresholdPruner(**side, n_warmup_steps=t.warmup_epochs)
    return optuna.pruners.NopPruner()


def open_study(plan: TunePlan):
    """Create the study, or load it when it exists (a rerun, or another process on the same
    storage); a continued study must have the same metric and, but for the tuned keys, the same
    config."""
    optuna = optuna_module()
    study = optuna.create_study(storage=make_storage(plan.storage), study_name=plan.study_name, direction=plan.direction,
                                sampler=make_sampler(plan.tune), pruner=make_pruner(plan.tune, plan.direction), load_if_exists=True)
    mine = result_relevant(plan.config.model_dump(mode="json"))
    attrs = study.user_attrs
    if METRIC_ATTR in attrs and attrs[METRIC_ATTR] != plan.metric:
        raise MultiturboError(f"The study {plan.study_name!r} in {shown_url(plan.storage)} optimises val {attrs[METRIC_ATTR]}, this config "
                              f"val {plan.metric}. Use another --study-name (or --out), or the study's metric.")
    if CONFIG_ATTR in attrs:
        diffs = [d for d in config_differences(json.loads(attrs[CONFIG_ATTR]), mine)
                 if not any(d[0] == k or d[0].startswith(k + ".") for k in (*plan.tune.space, *plan.may_differ))]
        if diffs:
            raise MultiturboError(
                f"The study {plan.study_name!r} in {shown_url(plan.storage)} was started with another config, so its trials would not "
                f"compare: " + "; ".join(describe_differences(diffs, 8, "{key}: study {old!r}, given {new!r}"))
                + ". Use another --study-name or --out for this config, or, for a key that does not change what a trial computes "
                "(a data path on another machine), --may-differ KEY."
            )
    else:
        study.set_user_attr(CONFIG_ATTR, json.dumps(mine))
        study.set_user_attr(METRIC_ATTR, plan.metric)
    return study


# -- the trials -------------------------------------------------------------------------------------------
def suggest(trial, space: dict[str, SearchRange]) -> dict[str, Any]:
    """One value per space key from Optuna's ``trial`` (suggest_float / suggest_int / suggest_categorical)."""
    params: dict[str, Any] = {}
    for key, s in space.items():
        if s.choices is not None:
            params[key] = trial.suggest_categorical(key, s.choices)
        elif s.is_int:
            params[key] = trial.suggest_int(key, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        else:
            params[key] = trial.suggest_float(key, float(s.low), float(s.high), step=s.step, log=s.log)
    return params


def trial_config(plan: TunePlan, params: dict[str, Any]) -> ExperimentConfig:
    """The base config with ``params`` applied and ``train.monitor`` set to the tuned metric."""
    raw = apply_values(plan.raw, {**params, "train.monitor": plan.metric})
    return check_config(validate_config(raw, plan.source), None, plan.source)


def trial_dir(out: Path, number: int) -> Path:
    """``OUT/trial-0007``."""
    return Path(out) / f"trial-{number:04d}"


class Objective:
    """Optuna's objective: one trial = one run (per fold) with the sampled config; returns the
    tuned metric's validation value at the best epoch (mean over folds)."""

    def __init__(self, plan: TunePlan, progress: ProgressReporter):
        self.plan, self.progress = plan, progress

    def __call__(self, trial) -> float:
        optuna = optuna_module()
        plan = self.plan
        run_dir = trial_dir(plan.out, trial.number)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, plan.tune.space)
        try:
            cfg = trial_config(plan, params)  # a combination of values may break a rule between fields: the trial fails
            trial.set_user_attr("run_dir", str(run_dir.resolve()))
            values, tests = [], []
            folds = plan.folds or [None]
            for i, fold in enumerate(folds):
                fold_cfg = cfg if plan.folds is None else with_fold_seed(cfg, fold, cfg.seed)
                out = run_dir if plan.folds is None else run_dir / ("all" if fold is None else f"fold{fold}")
                value, test = self.run_one(trial, fold_cfg, out, offset=i * cfg.train.epochs)
                values.append(value)
                tests.append(test)
        except RunStopped as exc:
            trial.set_user_attr("reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except MultiturboError as exc:
            trial.set_user_attr("error", " ".join(line.strip() for line in str(exc).splitlines())[:1000])
            raise
        trial.set_user_attr("test", {k: sum(t[k] for t in tests) / len(tests) for k in tests[0]})
        if len(values) > 1:
            trial.set_user_attr("fold_values", values)
        return sum(values) / len(values)

    def run_one(self, trial, cfg: ExperimentConfig, out: Path, offset: int) -> tuple[float, dict[str, float]]:
        """One run into ``out``; (the metric at its best epoch, its test metrics). Each epoch's value
        goes to Optuna as step ``offset + epoch``; a pruned run raises RunStopped."""
        metric, seen = self.plan.metric, {}

        def on_epoch(record: dict) -> None:
            if metric not in record["val"]:
                raise MultiturboError(f"tune.metric {metric!r} is not computed on this data set's validation split "
                                      f"(it has {sorted(k for k in record['val'] if k in METRICS)}). Choose one of those.")
            value = float(record["val"][metric])
            seen[record["epoch"]] = value
            trial.report(value, offset + record["epoch"])
            if trial.should_prune():
                raise RunStopped("pruned", f"pruned by Optuna's {self.plan.tune.pruner} pruner after epoch {record['epoch']} "
                                           f"(val {metric} {value:.4f})")

        if out.exists() and any(out.iterdir()):
            raise MultiturboError(f"The trial directory {out} already exists: OUT holds trials of another study. Use another --out, "
                                  f"or the study that made them (--storage / --study-name).")
        label = f"trial {trial.number}{'' if out.name.startswith('trial-') else ' ' + out.name}: "
        tags = {"command": "tune", "study": self.plan.study_name, "trial": str(trial.number),
                "mlflow.runName": label.removesuffix(": ")}  # with train.tracking: mlflow (one store: OUT/mlflow.db)
        metrics = run_experiment(cfg, out, progress=self.progress, label=label, on_epoch=on_epoch, tags=tags,
                                 tracking_root=self.plan.out)
        trial.set_user_attr("best_epoch", metrics["best_epoch"])
        return seen[metrics["best_epoch"]], {k: metrics[k] for k in TABLE_METRICS if isinstance(metrics.get(k), float)}


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's own log lines off (this module reports each trial), its experimental warnings silenced."""
    optuna = optuna_module()
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


def run_study(plan: TunePlan, trials: int, progress: ProgressReporter | None = None):
    """Run ``trials`` trials of the plan's study in this process (others may run on the same
    storage at once); returns the study. Failed trials (a MultiturboError: e.g. a non-finite loss
    at a high learning rate) are recorded and the search goes on."""
    progress = progress or ProgressReporter(quiet=True)
    with _quiet_optuna():
        study = open_study(plan)
        progress.log(f"study {plan.study_name!r} in {shown_url(plan.storage)}: {len(study.trials)} trial(s) so far; "
                     f"{trials} more here, optimising val {plan.metric} ({plan.direction})")

        def after(study, frozen) -> None:
            progress.log(trial_line(frozen, plan.metric))

        study.optimize(Objective(plan, progress), n_trials=trials, catch=(MultiturboError,), callbacks=[after])
    return study


def trial_line(frozen, metric: str) -> str:
    """``trial 3 complete: val ua 0.5123 | turbo.ce_weight=0.43 ...`` (or the pruning / failure reason)."""
    state = frozen.state.name.lower()
    params = " ".join(f"{k}={param_text(v)}" for k, v in frozen.params.items())
    if frozen.value is not None:
        what = f"val {metric} {frozen.value:.4f}"
    else:
        what = frozen.user_attrs.get("reason") or frozen.user_attrs.get("error") or ""
    return f"trial {frozen.number} {state}: {what} | {params}"

