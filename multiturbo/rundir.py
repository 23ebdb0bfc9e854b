"""Reading a finished run directory back: its config, classes and best weights.

``load_run(run_dir)`` rebuilds the model exactly as training built it (same seed, same
resolved config, same plugins) and loads ``best.safetensors`` into it, dropout off::

    run = load_run("runs/demo-20250101-120000")
    run.model(batch.inputs)          # logits [B, C]
    test = test_split(run)           # the test split the run was tested on

It is the base of ``multiturbo analyze``, ``predict`` / ``evaluate`` / ``embed`` and the
Python API (:mod:`multiturbo.api`).

Self-contained runs: an encoder whose options name files that may be gone at inference time
(a hub id, a local model directory) saves what it needs into ``assets/<modality>/`` at the
start of the run (:meth:`multiturbo.encoder.Encoder.export_assets`, through
:func:`export_assets`); ``assets.json`` records the option overrides, which ``load_run``
applies, so loading needs neither the training data nor a network.

Compatibility: ``run.json`` records ``multiturbo_version``. A run loads when its version has
the same major and minor number as the installed multiturbo (0.1.x loads any 0.1.y; a run
from another minor or major version, or one without a version, is refused with a
:class:`RunDirError` naming both versions).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from . import __version__
from .build import build_dataset, build_model
from .checkpoint import load_weights, write_json
from .config import ExperimentConfig, check_config, validate_config
from .config.load import read_yaml
from .data import Collator, make_loader
from .dataset import Dataset, Sample, Splits
from .errors import MultiturboError
from .model import TurboModel
from .plugins import get_registries

REQUIRED_FILES = ("config.yaml", "run.json", "best.safetensors")
ASSETS_DIR = "assets"
ASSETS_FILE = "assets.json"


class RunDirError(MultiturboError):
    """A run directory that is missing, incomplete or from a run that did not finish."""


@dataclass
class LoadedRun:
    """A trained run: its resolved config, the model holding the best weights (eval mode),
    the class names, the modalities and ``run.json``."""

    run_dir: Path
    config: ExperimentConfig
    model: TurboModel
    classes: list[str]
    modalities: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, Any] = field(default_factory=dict)  # {modality: option overrides applied from assets.json}
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _data: tuple[Dataset, Splits] | None = field(default=None, repr=False)

    def data(self) -> tuple[Dataset, Splits]:
        """The data set and the fold's splits, built as training built them (cached)."""
        if self._data is None:
            from .run import seed_everything

            seed_everything(self.config.seed)
            dataset, splits = build_dataset(self.config, get_registries())
            if list(dataset.classes) != list(self.classes):
                raise RunDirError(
                    f"The data set of {self.run_dir} now has the classes {list(dataset.classes)}, but the run was "
                    f"trained on {self.classes}. The data changed since training; point the config at the original data."
                )
            self._data = (dataset, splits)
        return self._data


def _read_info(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{run_dir / 'run.json'} is not valid JSON ({exc}). The run directory is damaged.") from None
    if not isinstance(info, dict) or "classes" not in info:
        raise RunDirError(f"{run_dir / 'run.json'} has no 'classes' entry; it was not written by multiturbo run.")
    return info


def _version_tuple(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in str(version).split("+")[0].split(".")[:2])
    except ValueError:
        return None


def check_version(run_dir: Path, info: dict[str, Any], installed: str = __version__) -> None:
    """Refuse a run whose ``multiturbo_version`` differs from ``installed`` in major or minor number."""
    version = info.get("multiturbo_version")
    if version is None:
        raise RunDirError(
            f"{run_dir / 'run.json'} records no multiturbo_version, so its compatibility with multiturbo {installed} "
            f"is unknown. Train the run again with this version."
        )
    ran, now = _version_tuple(version), _version_tuple(installed)
    if ran is None or now is None or len(ran) < 2 or ran[:2] != now[:2]:
        raise RunDirError(
            f"The run in {run_dir} was trained with multiturbo {version}, but multiturbo {installed} is installed; "
            f"runs load only with the same major.minor version ({'.'.join(map(str, now or ())) or installed}.x). "
            f"Install multiturbo {version} to use it, or train it again."
        )


def export_assets(encoders: Any, run_dir: str | Path) -> dict[str, Any]:
    """Call every encoder's ``export_assets`` with ``run_dir/assets/<modality>/``; write ``assets.json``.

    ``encoders``: {modality: Encoder} (e.g. ``model.encoders``). Returns what ``assets.json``
    holds: ``{modality: {"encoder": class name, "options": overrides, "paths": [option
    names whose values are paths relative to the run directory]}}``; empty (and no file,
    no directory) when no encoder needs assets. Called by ``run_experiment`` after it wrote
    ``config.yaml``.
    """
    run_dir = Path(run_dir)
    root = run_dir / ASSETS_DIR
    (run_dir / ASSETS_FILE).unlink(missing_ok=True)  # a previous run's assets (--overwrite) must not linger
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
        write_json(run_dir / ASSETS_FILE, record)
    return record


def _asset_overrides(run_dir: Path, modalities: Any) -> dict[str, dict[str, Any]]:
    """The option overrides of ``assets.json`` with paths made absolute; checks that they exist."""
    path = run_dir / ASSETS_FILE
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


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", require_finished: bool = True) -> LoadedRun:
    """Load a run directory written by :func:`multiturbo.run.run_experiment`.

    Raises :class:`RunDirError` (a MultiturboError) when the directory is missing, lacks
    ``config.yaml`` / ``run.json`` / ``best.safetensors``, the run did not finish (unless
    ``require_finished=False``), or the weights do not fit the config's model. Seeds the
    global RNGs with the run's seed (as training did before building the model).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory. Give the directory that multiturbo run wrote (its --out).")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    info = _read_info(run_dir) if (run_dir / "run.json").is_file() else {}
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
            f"A finished run holds {', '.join(REQUIRED_FILES)}, metrics.json and metrics.jsonl."
        )
    if require_finished and status is None:
        raise RunDirError(f"{run_dir / 'run.json'} has no status; the run did not finish or was not written by multiturbo run.")

    check_version(run_dir, info)

    registries = get_registries()
    source = str(run_dir / "config.yaml")
    raw = read_yaml(run_dir / "config.yaml")
    assets = _asset_overrides(run_dir, (raw or {}).get("modalities", {}) if isinstance(raw, dict) else {})
    for m, overrides in assets.items():
        mc = raw["modalities"][m]
        if isinstance(mc, dict):  # anything else fails validation below, with its location
            mc["options"] = {**(mc.get("options") or {}), **overrides}
    cfg = check_config(validate_config(raw, source), registries, source)
    classes = list(info["classes"])
    from .run import seed_everything

    seed_everything(cfg.seed)  # the same initial state as training had (non-saved state included)
    model = build_model(cfg, len(classes), registries)
    try:
        load_weights(model, run_dir / "best.safetensors")
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise RunDirError(
            f"{run_dir / 'best.safetensors'} does not fit the model of {run_dir / 'config.yaml'} "
            f"({' '.join(line.strip() for line in str(exc).splitlines() if line.strip())[:400]}). "
            f"The weights or the config were changed after training, or a plugin changed its model."
        ) from None
    device = torch.device(device)
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, model, classes, list(cfg.modalities), info, assets, device)


def test_split(run: LoadedRun) -> list[Sample] | Any:
    """The test split of the run's data set and fold, built as training built it."""
    return run.data()[1].test


test_split.__test__ = False  # not a pytest test, despite the name


def make_eval_loader(run: LoadedRun, split, batch_size: int | None = None):
    """A non-shuffled loader over ``split`` with the run's collation (encoders' collate)."""
    t = run.config.train
    collator = Collator(run.model.encoders, num_classes=len(run.classes))
    bs = batch_size or t.eval_batch_size or t.batch_size
    return make_loader(split, collator, batch_size=bs, shuffle=False, num_workers=t.num_workers)
