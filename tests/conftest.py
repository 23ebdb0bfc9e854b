"""Shared fixtures: a tiny experiment config that trains in seconds on a CPU."""

from __future__ import annotations

import copy
import importlib.util
import pathlib
from types import ModuleType

import pytest
import yaml

from multiturbo.progress import ProgressReporter

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "options": {"size": 60, "num_classes": 3, "sample_rate": 4000, "seconds": 0.25}},
    "modalities": {
        "audio": {"encoder": "logmel_cnn", "options": {"sample_rate": 4000, "n_fft": 128, "hop_length": 64, "n_mels": 16, "channels": 4, "output_dim": 16}},
        "text": {"encoder": "hashed_transformer", "options": {"vocab_size": 256, "dim": 16, "layers": 1, "heads": 2}},
    },
    "model": {"dim": 16},
    "train": {"batch_size": 8, "epochs": 2, "lr": 0.003},
}


def import_tiny_hf():
    """tests/plugins/tiny_hf.py (tiny Hugging Face models saved to a directory), imported by path."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    try:
        return importlib.import_module("tiny_hf")
    finally:
        sys.path.pop(0)


@pytest.fixture
def tiny_raw() -> dict:
    """The tiny experiment as a raw mapping (a fresh copy per test)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_config_path(tmp_path, tiny_raw):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny experiment trained once per test session: a finished run directory. Tests that
    change files in it work on a copy (shutil.copytree)."""
    from multiturbo.config import check_config, validate_config
    from multiturbo.run import run_experiment

    out = tmp_path_factory.mktemp("tiny") / "run"
    run_experiment(check_config(validate_config(copy.deepcopy(TINY))), out)
    return out


@pytest.fixture
def folds_config(tmp_path, tiny_raw):
    """The tiny experiment on a 3-fold synthetic data set, one epoch per run."""
    tiny_raw["data"]["options"]["folds"] = 3
    tiny_raw["train"]["epochs"] = 1
    path = tmp_path / "tiny3.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    return path


class RecordingReporter(ProgressReporter):
    """A quiet ProgressReporter that keeps the lines logged to it (``lines``), for tests of warnings."""

    def __init__(self):
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def load_benchmark(name: str) -> ModuleType:
    """The script benchmarks/<name>.py imported as a module (benchmarks/ is not a package)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
