"""Writing a run directory: preparing it, config.yaml, the run.json lifecycle, the epoch
records, the weights, the test metrics, the analysis and report files, the encoders' assets.

Every write is atomic (multiturbo.checkpoint), so a killed run never leaves half a file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..checkpoint import _atomic, load_weights, save_weights, write_error, write_json
from ..config import ExperimentConfig, config_to_yaml
from ..errors import MultiturboError, RunDirError, RunStopped
from . import layout
from .read import BINDING_KEY, binding_digest, check_binding


def default_run_dir(cfg: ExperimentConfig) -> Path:
    """``runs/<name>-<date>-<time>``."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name or 'run'}-{stamp}"


def check_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into a directory that already holds files (unless ``overwrite``)."""
    if out.exists() and any(p.name != layout.LOCK for p in out.iterdir()) and not overwrite:
        raise MultiturboError(f"The run directory {out} already exists and is not empty. Pass another --out, or --overwrite to replace its contents.")


def prepare_run_dir(out: Path, overwrite: bool) -> Path:
    """Create ``out``; with ``overwrite``, remove what an earlier run wrote there (only that)."""
    check_run_dir(out, overwrite)
    if out.exists() and any(out.iterdir()):
        for name in layout.RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in layout.RUN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


class RunLock:
    """``run.lock`` in a run directory while a process trains in it: a second process that would
    write there (a resume, an --overwrite) is refused. A lock left by a process that died (a
    SIGKILL) is taken over: it names its process id and host, and that process is gone.
    Used as ``with RunLock() as lock: ... lock.take(run_dir)``; released on exit."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def take(self, run_dir: Path) -> None:
        path = layout.path(run_dir, layout.LOCK)
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(path)
                if holder is not None:
                    raise MultiturboError(
                        f"The run directory {run_dir} is in use by another process ({holder}; lock file {path}). Wait for "
                        f"it to finish, or use another --out. If that process no longer runs, delete {path}."
                    ) from None
                path.unlink(missing_ok=True)  # a stale lock of a process that died
                continue
            except OSError as exc:
                raise write_error(path, exc) from None
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.path = path
            return
        raise MultiturboError(f"Cannot take the lock {path}: other processes keep replacing it. Use another --out.")

    def release(self) -> None:
        if self.path is not None:
            try:
                if self.path.read_text().split()[:1] == [str(os.getpid())]:
                    self.path.unlink()
            except OSError:
                pass
            self.path = None


def _lock_holder(path: Path) -> str | None:
    """'process PID on HOST' of a live lock, None for a stale one (its process is gone, or the file is unreadable)."""
    try:
        pid_text, host = (path.read_text().split() + ["", ""])[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host and host != socket.gethostname():
        return f"process {pid} on {host}"  # cannot be checked from here: assume it runs
    if pid == os.getpid():
        return f"process {pid}, this one"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return f"process {pid} on {host or 'this machine'}"


def write_config(out: Path, cfg: ExperimentConfig) -> None:
    _write_text(layout.path(out, layout.CONFIG), config_to_yaml(cfg))


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


class RunInfo:
    """``run.json`` through a run's life: ``running`` (with ``started``, and ``resumed`` times),
    then ``finished``, ``failed`` (with the error) or a hook's status (``pruned``). ``write=False`` (the other ranks of a
    multi-process run) keeps the record without writing it."""

    def __init__(self, out: Path, facts: dict[str, Any], previous: dict[str, Any] | None = None, *, write: bool = True):
        self.path, self.write = layout.path(out, layout.INFO), write
        self.data = {**facts, "started": _now(), "status": "running"}
        if previous is not None:  # a resumed run keeps its start and lists its resumptions
            self.data["started"] = previous.get("started", self.data["started"])
            self.data["resumed"] = [*previous.get("resumed", []), _now()]
        self.save()

    def save(self) -> None:
        if self.write:
            write_json(self.path, self.data)

    def failed(self, exc: BaseException, seconds: float) -> None:
        """The run stopped on ``exc``: status ``interrupted`` (Ctrl-C), ``failed``, or the status of a
        :class:`~multiturbo.errors.RunStopped` (e.g. ``pruned``, with its ``reason``); each resumes with --resume.
        Never raises (a full disk must not hide ``exc``)."""
        if isinstance(exc, KeyboardInterrupt):
            self.data.update(status="interrupted", error="KeyboardInterrupt: stopped by the user (Ctrl-C)", seconds=seconds)
        elif isinstance(exc, RunStopped):  # stopped on purpose by an on_epoch hook (a pruned trial)
            self.data.update(status=exc.status, reason=str(exc), seconds=seconds)
        else:
            self.data.update(status="failed", error=f"{type(exc).__name__}: {exc}", seconds=seconds)
        try:
            self.save()
        except Exception:  # noqa: BLE001 - e.g. the disk is full: the error being raised says more than this one
            pass

    def update(self, **facts: Any) -> None:
        """Add facts to run.json (e.g. the timings, once the outputs are written)."""
        self.data.update(facts)
        self.save()

    def finished(self, seconds: float, **facts: Any) -> None:
        self.data.update(status="finished", finished=_now(), seconds=seconds, **facts)
        self.save()


# -- training outputs -------------------------------------------------------------------------------
def checkpoint_path(run_dir: Path) -> Path:
    return layout.path(run_dir, layout.CHECKPOINT)


def remove_checkpoint(run_dir: Path) -> None:
    """The run is finished: nothing is left to resume."""
    checkpoint_path(run_dir).unlink(missing_ok=True)


def weights_metadata(run_dir: Path) -> dict[str, str]:
    """The safetensors metadata of the run's weights and checkpoint: the digest binding them to
    config.yaml and the classes of run.json (none when the directory holds neither)."""
    digest = binding_digest(run_dir)
    return {BINDING_KEY: digest} if digest else {}


def save_best(run_dir: Path, model: nn.Module) -> None:
    save_weights(model, layout.path(run_dir, layout.BEST), weights_metadata(run_dir))


def load_best(model: nn.Module, run_dir: Path) -> None:
    """Load ``best.safetensors`` into ``model``, verified: a safetensors file, written with the
    config.yaml and classes now in ``run_dir``, every weight finite (a :class:`RunDirError`
    naming the file otherwise)."""
    path = layout.path(run_dir, layout.BEST)
    check_binding(run_dir, path)
    load_weights(model, path)
    bad = [name for name, t in model.state_dict().items() if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]
    if bad:
        raise RunDirError(
            f"{path} holds non-finite weights (NaN or inf) in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: it is "
            f"damaged and would predict garbage. Restore it from a copy of the run directory, or train the run again."
        )


def write_epoch(run_dir: Path, model: nn.Module, record: dict[str, Any]) -> None:
    """An epoch's outputs: the best weights (when ``record["best"]``), the last weights, and
    the record as one line of metrics.jsonl."""
    if record["best"]:
        save_best(run_dir, model)
    save_weights(model, layout.path(run_dir, layout.LAST), weights_metadata(run_dir))
    path = layout.path(run_dir, layout.LOG)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise write_error(path, exc) from None


def truncate_log(run_dir: Path, keep_below: int) -> None:
    """Keep only the metrics.jsonl lines of epochs < ``keep_below`` (a resume rewrites the rest)."""
    path = layout.path(run_dir, layout.LOG)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            epoch = json.loads(line).get("epoch")
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(epoch, int) and epoch < keep_below:
            kept.append(line)
    _write_text(path, "".join(f"{line}\n" for line in kept))


def write_splits(run_dir: Path, membership: dict[str, Any]) -> None:
    """``splits.json``: the ids of each split's items (:func:`multiturbo.composition.split_membership`)."""
    write_json(layout.path(run_dir, layout.SPLITS), membership)


def write_test_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_json(layout.path(run_dir, layout.TEST_METRICS), metrics)


PREDICTION_COLUMNS = ("item", "id", "label", "pred")  # test_predictions.csv: split position, splits.json id, class indices


def write_test_predictions(run_dir: Path, ids: Sequence[Any], labels: Sequence[int], preds: Sequence[int]) -> None:
    """``test_predictions.csv``: one row per test item in split order: ``item`` (its position in the
    test split), ``id`` (its id in splits.json), ``label`` and ``pred`` (class indices into run.json's
    classes). ``ids``, ``labels``, ``preds``: [N], in split order."""
    if not (len(ids) == len(labels) == len(preds)):
        raise ValueError(f"test predictions need one id, label and prediction per item, got {len(ids)}, {len(labels)} and {len(preds)}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    writer.writerows((i, item_id, int(y), int(p)) for i, (item_id, y, p) in enumerate(zip(ids, labels, preds)))
    _write_text(layout.path(run_dir, layout.TEST_PREDICTIONS), buf.getvalue())


# -- after training ----------------------------------------------------------------------------------
def write_analysis_file(run_dir: Path, result: dict[str, Any]) -> Path:
    """``analysis/analysis.json``."""
    path = layout.analysis_path(run_dir)
    write_json(path, result)
    return path


def figure_path(run_dir: Path, name: str) -> Path:
    """Where a figure of the run goes: ``analysis/<name>.png`` (the directory is created)."""
    path = layout.analysis_path(run_dir, f"{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_report(run_dir: Path, text: str) -> Path:
    return _write_text(layout.path(run_dir, layout.REPORT), text)


def fresh_tensorboard_dir(run_dir: Path) -> Path:
    """``tensorboard/``, emptied (an export replaces the earlier one)."""
    out = layout.path(run_dir, layout.TENSORBOARD_DIR)
    if out.exists():
        shutil.rmtree(out)
    return out


def _write_text(path: Path, text: str) -> Path:
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def export_assets(encoders: Any, run_dir: str | Path) -> dict[str, Any]:
    """Call every encoder's ``export_assets`` with ``run_dir/assets/<modality>/``; write ``assets.json``.

    ``encoders``: {modality: Encoder} (e.g. ``model.encoders``). Returns what ``assets.json``
    holds: ``{modality: {"encoder": class name, "options": overrides, "paths": [option
    names whose values are paths relative to the run directory]}}``; empty (and no file,
    no directory) when no encoder needs assets. Called by ``run_experiment`` after it wrote
    ``config.yaml``.
    """
    run_dir = Path(run_dir)
    root = layout.path(run_dir, layout.ASSETS_DIR)
    layout.path(run_dir, layout.ASSETS_FILE).unlink(missing_ok=True)  # a previous run's assets (--overwrite) must not linger
    if root.is_dir():
        shutil.rmtree(root)
    record: dict[str, Any] = {}
    for m, enc in dict(encoders).items():
        directory = root / m
        directory.mkdir(parents=True)
        overrides = enc.export_assets(directory) or {}
        options, paths = {}, []
        for key, value in overrides.items():
            if isinstance(value, Path):
                try:
                    value = value.resolve().relative_to(run_dir.resolve()).as_posix()
                except ValueError:
                    raise RunDirError(
                        f"The {type(enc).__name__} encoder ({m}) exported the option {key}={value}, a path outside its "
                        f"assets directory {directory}; export_assets must save inside the directory it is given."
                    ) from None
                paths.append(key)
            options[key] = value
        if options:
            record[m] = {"encoder": type(enc).__name__, "options": options, "paths": paths}
        elif not any(directory.iterdir()):
            directory.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if record:
        write_json(layout.path(run_dir, layout.ASSETS_FILE), record)
    return record


def copy_preprocessing(run_dir: str | Path, directory: str | Path) -> Path:
    """Copy what rebuilds the run's preprocessing (the encoders' collate: tokenizers, feature
    extractors, options) into ``directory``, without weights: config.yaml, run.json and the
    encoders' assets (assets.json, assets/). :func:`multiturbo.rundir.load.build_encoders` reads it."""
    run_dir, directory = Path(run_dir), Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name in (layout.CONFIG, layout.INFO, layout.ASSETS_FILE):
        if layout.path(run_dir, name).is_file():
            shutil.copy2(layout.path(run_dir, name), layout.path(directory, name))
    if layout.path(run_dir, layout.ASSETS_DIR).is_dir():
        shutil.copytree(layout.path(run_dir, layout.ASSETS_DIR), layout.path(directory, layout.ASSETS_DIR))
    return directory
