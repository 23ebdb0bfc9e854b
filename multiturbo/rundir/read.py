"""Reading a run directory: run.json, the saved config, the test metrics, the epoch log, the
analysis, the assets' overrides; the version check and the resume check.

Compatibility: ``run.json`` records ``multiturbo_version``. A run loads when its version has
the same major and minor number as the installed multiturbo (0.1.x loads any 0.1.y; a run
from another minor or major version, or one without a version, is refused with a
:class:`RunDirError` naming both versions).
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..version import __version__
from ..checkpoint import read_checkpoint_loop_state, read_header_metadata
from ..config import ExperimentConfig, config_differences, config_to_yaml, describe_differences
from ..errors import MultiturboError, RunDirError
from . import layout


def _json_or_none(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_info(run_dir: str | Path, *, strict: bool = False) -> dict[str, Any] | None:
    """``run.json`` (None when absent). ``strict``: a damaged file, or one that multiturbo run did
    not write, raises :class:`RunDirError`; otherwise it reads as None."""
    path = layout.path(run_dir, layout.INFO)
    try:
        info = _json_or_none(path)
    except (ValueError, OSError) as exc:
        if strict:
            raise RunDirError(f"{path} is not valid JSON ({exc}). The run directory is damaged.") from None
        return None
    if info is not None and (not isinstance(info, dict) or "classes" not in info):
        if strict:
            raise RunDirError(f"{path} has no 'classes' entry; it was not written by multiturbo run.")
        return info if isinstance(info, dict) else None
    return info


def read_test_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """``metrics.json``: the test metrics of the best weights (None before the run is tested)."""
    try:
        return _json_or_none(layout.path(run_dir, layout.TEST_METRICS))
    except ValueError:
        return None


@dataclass(frozen=True)
class ItemPredictions:
    """``test_predictions.csv`` of a run: per test item, in split order, its ``ids`` (as splits.json
    names it), true ``labels`` and predicted ``preds`` (class indices into run.json's classes), [N] each."""

    ids: list[str]
    labels: list[int]
    preds: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def read_test_predictions(run_dir: str | Path) -> ItemPredictions | None:
    """``test_predictions.csv`` (None when absent: a run from before the file existed, or one not
    tested yet); a damaged file raises :class:`RunDirError` naming it."""
    path = layout.path(run_dir, layout.TEST_PREDICTIONS)
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        return ItemPredictions([r["id"] for r in rows], [int(r["label"]) for r in rows], [int(r["pred"]) for r in rows])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path} is damaged ({type(exc).__name__}: {exc}); expected the columns item, id, label, pred with "
                          "class indices. Run `multiturbo run` again to rewrite it, or delete it.") from None


def finished_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The test metrics of a finished run directory, or None (absent, failed, partial, unreadable)."""
    info, metrics = read_info(run_dir), read_test_metrics(run_dir)
    if not isinstance(info, dict) or info.get("status") != "finished" or not isinstance(metrics, dict):
        return None
    return metrics


def run_seconds(run_dir: str | Path) -> float:
    """How long the run trained and tested (0 when unknown)."""
    try:
        return float((read_info(run_dir) or {}).get("seconds", 0.0))
    except (TypeError, ValueError):
        return 0.0


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (empty if the file is absent)."""
    path = layout.path(run_dir, layout.LOG)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tracked_outputs(run_dir: str | Path) -> list[Path]:
    """What an experiment tracker keeps of a run, those present: config.yaml, run.json, metrics.jsonl,
    metrics.json, test_predictions.csv, report.md, and the analysis/ directory (analysis.json and the
    figures report.md shows)."""
    names = (layout.CONFIG, layout.INFO, layout.LOG, layout.TEST_METRICS, layout.TEST_PREDICTIONS, layout.REPORT, layout.ANALYSIS_DIR)
    return [p for p in (layout.path(run_dir, n) for n in names) if p.exists()]


def read_analysis(run_dir: str | Path) -> dict[str, Any] | None:
    """``analysis/analysis.json``, or None when the run has not been analysed."""
    return _json_or_none(layout.analysis_path(run_dir))


def has_figure(run_dir: str | Path, name: str) -> bool:
    return layout.analysis_path(run_dir, f"{name}.png").is_file()


def read_saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """``config.yaml`` as a mapping (None when absent)."""
    path = layout.path(run_dir, layout.CONFIG)
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def same_config(run_dir: str | Path, cfg: ExperimentConfig) -> bool:
    """Whether the run in ``run_dir`` was made with ``cfg`` (up to the keys that do not change results)."""
    saved = read_saved_config(run_dir)
    return saved is not None and not config_differences(saved, yaml.safe_load(config_to_yaml(cfg)))


def report_target(run_dir: str | Path) -> Path:
    """What a comparison links for a run: its report.md, or the directory when it has none."""
    report = layout.path(run_dir, layout.REPORT)
    return report if report.is_file() else Path(run_dir)


# -- the binding of weights, config and classes ----------------------------------------------------------
BINDING_KEY = "multiturbo_binding"  # safetensors metadata of best / last / checkpoint: binding_digest() at write time


def binding_digest(run_dir: str | Path) -> str | None:
    """A digest of the saved config (config.yaml, as data: comments and layout do not count) and
    the class list of run.json, in order: what the weights of the run mean. None when either file
    is missing or unreadable (e.g. :func:`multiturbo.train.fit` called on a bare directory)."""
    try:
        saved = yaml.safe_load(layout.path(run_dir, layout.CONFIG).read_text(encoding="utf-8"))
        classes = json.loads(layout.path(run_dir, layout.INFO).read_text(encoding="utf-8"))["classes"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    text = json.dumps({"config": saved, "classes": classes}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_binding(run_dir: str | Path, path: str | Path) -> None:
    """Refuse weights (best / last / checkpoint) that were not written with the config.yaml and the
    class list now in ``run_dir``; a file that is not safetensors is a :class:`RunDirError` too. A
    file from before the digest existed loads with a warning."""
    try:
        meta = read_header_metadata(path)
    except MultiturboError as exc:
        raise RunDirError(str(exc)) from None
    stored = meta.get(BINDING_KEY)
    if stored is None:
        warnings.warn(f"{path} records no digest of its config and classes (written before multiturbo checked them); "
                      f"it is used unverified. Train the run again to have it verified.", stacklevel=3)
        return
    if stored != binding_digest(run_dir):
        raise RunDirError(
            f"{path} does not belong to the {layout.CONFIG} and the class list of {layout.INFO} now in {run_dir}: one of "
            f"them was edited after training (a changed option, a reordered or renamed class) or the weights were copied "
            f"from another run. Restore the original files, or train the run again."
        )


# -- checks -----------------------------------------------------------------------------------------
def _version_tuple(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in str(version).split("+")[0].split(".")[:2])
    except ValueError:
        return None


def check_version(run_dir: Path, info: dict[str, Any], installed: str = __version__) -> None:
    """Refuse a run whose ``multiturbo_version`` differs from ``installed`` in major or minor number."""
    version = info.get("multiturbo_version")
    where = layout.path(run_dir, layout.INFO)
    if version is None:
        raise RunDirError(
            f"{where} records no multiturbo_version, so its compatibility with multiturbo {installed} "
            f"is unknown. Train the run again with this version."
        )
    ran, now = _version_tuple(version), _version_tuple(installed)
    if ran is None or now is None or len(ran) < 2 or ran[:2] != now[:2]:
        raise RunDirError(
            f"The run in {run_dir} was trained with multiturbo {version}, but multiturbo {installed} is installed; "
            f"runs load only with the same major.minor version ({'.'.join(map(str, now or ())) or installed}.x). "
            f"Install multiturbo {version} to use it, or train it again."
        )


def check_loadable(run_dir: Path, require_finished: bool) -> dict[str, Any]:
    """run.json of a run directory that holds every file :func:`load_run` needs; a
    :class:`RunDirError` naming what is wrong otherwise."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory. Give the directory that multiturbo run wrote (its --out).")
    missing = [name for name in layout.REQUIRED_FILES if not layout.path(run_dir, name).is_file()]
    info = read_info(run_dir, strict=True) or {}
    status = info.get("status")
    if require_finished and status not in (None, "finished"):
        detail = f": {info['error']}" if info.get("error") else ""
        raise RunDirError(
            f"The run in {run_dir} did not finish (status {status!r}{detail}). Train it again with multiturbo run, "
            f"or use a run directory whose run.json says status: finished."
        )
    if missing:
        raise RunDirError(
            f"The run directory {run_dir} is incomplete: {', '.join(missing)} missing. "
            f"A finished run holds {', '.join(layout.REQUIRED_FILES)}, {layout.TEST_METRICS} and {layout.LOG}."
        )
    if require_finished and status is None:
        raise RunDirError(f"{layout.path(run_dir, layout.INFO)} has no status; the run did not finish or was not written by multiturbo run.")
    check_version(run_dir, info)
    return info


def asset_overrides(run_dir: Path, modalities: Any) -> dict[str, dict[str, Any]]:
    """The option overrides of ``assets.json`` with paths made absolute; checks that they exist."""
    path = layout.path(run_dir, layout.ASSETS_FILE)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}). The run directory is damaged.") from None
    out: dict[str, dict[str, Any]] = {}
    for m, rec in record.items():
        if m not in modalities:
            raise RunDirError(f"{path} has assets for the modality {m!r}, which config.yaml does not configure ({list(modalities)}).")
        options = dict(rec.get("options", {}))
        for key in rec.get("paths", []):
            target = run_dir / options[key]
            if not target.exists():
                raise RunDirError(
                    f"The run directory {run_dir} is incomplete: {options[key]} (the saved files of the {m} encoder, "
                    f"option {key}) is missing. Copy the whole run directory, assets/ included."
                )
            options[key] = str(target.resolve())
        out[m] = options
    return out


def check_resumable(cfg: ExperimentConfig, out: Path) -> dict:
    """The run.json of the run in ``out`` if ``cfg`` may continue it; a clear error otherwise."""
    if not layout.path(out, layout.CONFIG).is_file() or not layout.path(out, layout.INFO).is_file():
        raise MultiturboError(f"There is no run to resume in {out} (no {layout.CONFIG} / {layout.INFO}). Start it without --resume.")
    try:
        info = read_info(out, strict=True)
        saved = read_saved_config(out)
    except (RunDirError, ValueError, yaml.YAMLError) as exc:
        raise MultiturboError(f"The run directory {out} is damaged ({exc}); start the run again with --overwrite.") from None
    if info.get("status") == "finished":
        raise MultiturboError(
            f"The run in {out} has finished (test metrics in {layout.path(out, layout.TEST_METRICS)}); there is nothing to resume. "
            f"Use another --out, or --overwrite to run it again."
        )
    diff = config_differences(saved, yaml.safe_load(config_to_yaml(cfg)))
    if diff:
        raise MultiturboError(
            f"The config does not match the one the run in {out} was started with, so it cannot be resumed: "
            + "; ".join(describe_differences(diff, 10, "{key}: saved {old!r}, given {new!r}"))
            + f". Resume with the saved config (multiturbo run {out} --resume), or start a new run."
        )
    ckpt = layout.path(out, layout.CHECKPOINT)
    if not ckpt.is_file():
        raise MultiturboError(
            f"The run in {out} has no checkpoint ({layout.CHECKPOINT}): it stopped before the first one was written. "
            f"Start it again with --overwrite."
        )
    try:
        check_binding(out, ckpt)  # a safetensors file, written with this config and these classes
        read_checkpoint_loop_state(ckpt)  # a checkpoint of ours
    except MultiturboError as exc:
        raise MultiturboError(f"{exc} The run in {out} cannot be resumed; start it again with --overwrite.") from None
    return info
