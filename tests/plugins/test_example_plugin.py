"""The example third-party plugin (plugins/multiturbo-char-ngrams) installs on its own, registers
through its entry point, and trains; every hook is exercised by a plugin registered in a test."""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

from multiturbo import hookimpl, hookspecs
from multiturbo.plugins import ENTRY_POINT_GROUP, get_registries, plugin_registered

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "plugins" / "multiturbo-char-ngrams"
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
HOOKS = [name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "multiturbo_spec")]


def test_example_is_its_own_package_with_an_entry_point():
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"][ENTRY_POINT_GROUP] == {"char_ngrams": "multiturbo_char_ngrams"}
    from setuptools import find_packages

    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = {p for where in main["where"] for p in find_packages(where=str(ROOT / where), include=main["include"])}
    assert "multiturbo_char_ngrams" not in found  # not swallowed by the main package's find


def test_example_encoder_meets_the_encoder_contract(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    import multiturbo_char_ngrams as plugin

    with plugin_registered(plugin, "char_ngrams"):
        cls = get_registries().encoders.get("char_ngrams")
        torch.manual_seed(0)
        enc = cls(cls.Options(dim=8, buckets=64))
        raw = ["hello", "a much longer sentence with padding"]
        enc.eval()
        with torch.no_grad():
            both, alone = enc(enc.collate(raw)), enc(enc.collate(raw[:1]))
        assert both.shape == (2, 8)
        torch.testing.assert_close(both[:1], alone)
        enc.train()
        batch = enc.collate(raw)
        with torch.no_grad():
            assert not torch.allclose(enc(batch), enc(batch))
    assert "char_ngrams" not in get_registries().encoders.names()


TRAIN = """
import json, sys
from multiturbo.config import check_config, validate_config
from multiturbo.plugins import get_registries, plugin_source
from multiturbo.run import run_experiment
entry = get_registries().encoders.entry("char_ngrams")
raw = {
    "name": "example", "seed": 0,
    "data": {"name": "synthetic", "options": {"size": 48, "num_classes": 2, "sample_rate": 4000, "seconds": 0.25}},
    "modalities": {
        "audio": {"encoder": "logmel_cnn", "options": {"sample_rate": 4000, "n_fft": 128, "hop_length": 64, "n_mels": 16, "channels": 4, "output_dim": 16}},
        "text": {"encoder": "char_ngrams", "options": {"dim": 16, "buckets": 256}},
    },
    "model": {"dim": 16}, "train": {"batch_size": 8, "epochs": 1},
}
metrics = run_experiment(check_config(validate_config(raw)), sys.argv[1])
print(json.dumps({"plugin": entry.plugin, "source": plugin_source(entry.plugin), "wa": metrics["wa"]}))
"""


def test_installed_example_plugin_registers_through_its_entry_point_and_trains(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr
    assert (site / "multiturbo_char_ngrams").is_dir()
    env = {k: v for k, v in os.environ.items() if k not in ("MULTITURBO_NO_EXTERNAL_PLUGINS", "MULTITURBO_BLOCK_PLUGINS")}
    env["PYTHONPATH"] = str(site)
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "run")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["plugin"] == "char_ngrams" and out["source"] == "multiturbo-char-ngrams 0.1.0"
    assert 0.0 <= out["wa"] <= 1.0


def test_writing_plugins_doc_shows_the_example_files_verbatim():
    text = (ROOT / "docs" / "writing-plugins.md").read_text()
    blocks = dict(re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", text, re.S))
    assert {"pyproject.toml", "src/multiturbo_char_ngrams/__init__.py"} <= set(blocks)
    for name, code in blocks.items():
        assert code == (EXAMPLE / name).read_text(), f"docs/writing-plugins.md shows an outdated {name}"


# ---------------------------------------------------------------- every hook is exercised
class _Probe:
    """A plugin implementing every hook, registering one existing class under a new name."""

    @hookimpl
    def register_encoders(self, register):
        register("probe_encoder", get_registries_cls("encoders", "small_cnn"))

    @hookimpl
    def register_datasets(self, register):
        register("probe_dataset", get_registries_cls("datasets", "synthetic"))

    @hookimpl
    def register_heads(self, register):
        register("probe_head", get_registries_cls("heads", "mean_linear"))

    @hookimpl
    def register_input_readers(self, register):
        register("probe_input_reader", get_registries_cls("input_readers", "text"))

    @hookimpl
    def register_transcribers(self, register):
        register("probe_transcriber", get_registries_cls("transcribers", "whisper"))


_FIRST_PARTY = {}


def get_registries_cls(kind, name):
    return _FIRST_PARTY[kind][name]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_registered_plugin(hook):
    regs = get_registries()
    _FIRST_PARTY.update({k: {n: getattr(regs, k).get(n) for n in getattr(regs, k).names()} for k in ("encoders", "datasets", "heads", "input_readers", "transcribers")})
    kind = hook.removeprefix("register_")
    assert hasattr(_Probe, hook), f"the probe plugin does not implement the hook {hook}: add it"
    with plugin_registered(_Probe(), "probe"):
        entry = getattr(get_registries(), kind).entry(f"probe_{kind.rstrip('s')}")
        assert entry.plugin == "probe"
