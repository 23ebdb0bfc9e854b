"""Loading a finished run back: its config, classes and best weights.

``load_run(run_dir)`` rebuilds the model exactly as training built it (same seed, same
resolved config, same plugins) and loads ``best.safetensors`` into it, dropout off::

    run = load_run("runs/demo-20250101-120000")
    run.model(batch.inputs)          # logits [B, C]
    test = test_split(run)           # the test split the run was tested on

Self-contained runs: an encoder whose options name files that may be gone at inference time
(a hub id, a local model directory) saves what it needs into ``assets/<modality>/`` at the
start of the run (:meth:`multiturbo.encoder.Encoder.export_assets`, through
:func:`multiturbo.rundir.export_assets`); ``assets.json`` records the option overrides,
which ``load_run`` applies, so loading needs neither the training data nor a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..build import build_dataset, build_model
from ..config import ExperimentConfig, check_config, validate_config
from ..config.load import read_yaml
from ..data import Collator, make_loader
from ..dataset import Dataset, Sample, Splits
from ..encoder import Encoder
from ..errors import RunDirError
from ..model import TurboModel
from ..plugins import get_registries
from ..runtime import seed_everything
from . import layout
from .read import asset_overrides, check_loadable
from .write import load_best


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
            seed_everything(self.config.seed)
            config = self.config
            if "split_seed" not in self.info and config.data.split_seed is None:
                # written before data.split_seed existed: its data set was built with the training seed
                config = config.model_copy(update={"data": config.data.model_copy(update={"split_seed": config.seed})})
            dataset, splits = build_dataset(config, get_registries())
            if list(dataset.classes) != list(self.classes):
                raise RunDirError(
                    f"The data set of {self.run_dir} now has the classes {list(dataset.classes)}, but the run was "
                    f"trained on {self.classes}. The data changed since training; point the config at the original data."
                )
            self._data = (dataset, splits)
        return self._data


def resolved_config(run_dir: str | Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The saved config of ``run_dir`` with the option overrides of ``assets.json`` applied (paths
    made absolute), checked against the registered plugins; and those overrides {modality: options}."""
    run_dir = Path(run_dir)
    config_path = layout.path(run_dir, layout.CONFIG)
    raw = read_yaml(config_path)
    assets = asset_overrides(run_dir, (raw or {}).get("modalities", {}) if isinstance(raw, dict) else {})
    for m, overrides in assets.items():
        mc = raw["modalities"][m]
        if isinstance(mc, dict):  # anything else fails validation below, with its location
            mc["options"] = {**(mc.get("options") or {}), **overrides}
    return check_config(validate_config(raw, str(config_path)), get_registries(), str(config_path)), assets


def build_encoders(directory: str | Path) -> dict[str, Encoder]:
    """The encoders of the run (or exported preprocessing) in ``directory``, built from its config
    and assets without weights: for their ``collate`` (the preprocessing), e.g. beside an ONNX
    export (:mod:`multiturbo.export`). Needs ``config.yaml`` (and ``assets.json`` / ``assets/``
    when the run has them); raises RunDirError when the config is missing."""
    directory = Path(directory)
    if not layout.path(directory, layout.CONFIG).is_file():
        raise RunDirError(f"{directory} has no {layout.CONFIG}: it is not a run directory or exported preprocessing.")
    cfg, _ = resolved_config(directory)
    registries = get_registries()
    encoders = {}
    for m, mc in cfg.modalities.items():
        cls = registries.encoders.get(mc.encoder)
        encoders[m] = cls(cls.Options.model_validate(mc.options)).eval()
    return encoders


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", require_finished: bool = True) -> LoadedRun:
    """Load a run directory written by :func:`multiturbo.run.run_experiment`.

    Raises :class:`RunDirError` (a MultiturboError) when the directory is missing, lacks
    ``config.yaml`` / ``run.json`` / ``best.safetensors``, the run did not finish (unless
    ``require_finished=False``), or the weights do not fit the config's model. Seeds the
    global RNGs with the run's seed (as training did before building the model).
    """
    run_dir = Path(run_dir)
    info = check_loadable(run_dir, require_finished)
    registries = get_registries()
    config_path = layout.path(run_dir, layout.CONFIG)
    cfg, assets = resolved_config(run_dir)
    classes = list(info["classes"])
    seed_everything(cfg.seed)  # the same initial state as training had (non-saved state included)
    model = build_model(cfg, len(classes), registries)
    try:
        load_best(model, run_dir)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise RunDirError(
            f"{layout.path(run_dir, layout.BEST)} does not fit the model of {config_path} "
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
