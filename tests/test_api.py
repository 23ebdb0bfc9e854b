"""The Python API (multiturbo.load) and the runnable example of docs/using-a-trained-model.md."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY

import multiturbo
from multiturbo.api import TrainedRun
from multiturbo.errors import MultiturboError
from multiturbo.rundir import test_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tiny_run):
    return multiturbo.load(tiny_run)


def items_of(run, n=None):
    split = test_split(run.loaded)
    return [{"audio": (np.asarray(s.inputs["audio"]), 4000), "text": s.inputs["text"]} for s in list(split)[:n]], split


def test_load_is_exported(run, tiny_run):
    assert "load" in multiturbo.__all__
    assert isinstance(run, TrainedRun) and run.run_dir == tiny_run
    assert run.classes == ["class0", "class1", "class2"] and run.modalities == ["audio", "text"]
    assert not run.model.training and "TrainedRun(" in repr(run)


def test_predict_returns_classes_and_probabilities(run):
    items, _ = items_of(run, 5)
    preds = run.predict(items)
    assert len(preds) == 5
    for p in preds:
        assert set(p) == {"id", "class", "probabilities"} and p["class"] in run.classes
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    probs = run.predict_proba(items)
    assert probs.shape == (5, 3)
    assert [run.classes[i] for i in probs.argmax(1).tolist()] == [p["class"] for p in preds]


def test_predict_is_independent_of_the_batch(run):
    items, _ = items_of(run, 6)
    together = run.predict_proba(items)
    alone = torch.cat([run.predict_proba([it]) for it in items])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_embed_normalised_or_not(run):
    items, _ = items_of(run, 4)
    emb = run.embed(items)
    raw = run.embed(items, normalize=False)
    assert set(emb) == {"audio", "text"} and emb["audio"].shape == (4, 16)
    torch.testing.assert_close(emb["text"].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(emb["audio"], torch.nn.functional.normalize(raw["audio"], dim=1))


def test_evaluate_a_data_set_config_and_retrieval(run, tiny_run):
    metrics = run.evaluate({"data": TINY["data"]})
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["confusion"] == saved["confusion"]
    assert metrics["retrieval"]["text->audio"]["n"] == metrics["n_items"]
    items, split = items_of(run)
    assert run.retrieval(items) == metrics["retrieval"]


def test_an_audio_path_is_an_input(run, tmp_path):
    items, _ = items_of(run, 1)
    samples, rate = items[0]["audio"]
    sf.write(tmp_path / "a.wav", samples, rate, subtype="FLOAT")
    from_file = run.predict_proba([{"audio": tmp_path / "a.wav", "text": items[0]["text"]}])
    torch.testing.assert_close(from_file, run.predict_proba(items))


def test_loading_errors_are_multiturbo_errors(tmp_path):
    with pytest.raises(MultiturboError, match="no such run directory"):
        multiturbo.load(tmp_path / "missing")


def test_the_example_runs(tiny_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["use_a_trained_model.py", str(tiny_run)])
    runpy.run_path(str(ROOT / "examples" / "use_a_trained_model.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "item 0:" in out and "item 1:" in out and "retrieval" in out and "'audio': (2, 16)" in out


def test_the_docs_show_every_command_and_method():
    text = (ROOT / "docs" / "using-a-trained-model.md").read_text()
    assert "examples/use_a_trained_model.py" in text
    for command in ("multiturbo predict", "multiturbo evaluate", "multiturbo embed"):
        assert command in text
    for method in ("predict", "predict_proba", "embed", "evaluate", "retrieval"):
        assert f"run.{method}(" in text and callable(getattr(TrainedRun, method))
