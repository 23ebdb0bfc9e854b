"""train.frozen_features: cache — frozen encoders run once per item, before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multiturbo.build import build_experiment
from multiturbo.config import check_config, validate_config
from multiturbo.data import Collator, make_loader
from multiturbo.errors import ConfigError
from multiturbo.feature_cache import FEATURES_KEY, FeatureSplit, cache_frozen_features, frozen_modalities
from multiturbo.progress import ProgressReporter
from multiturbo.run import run_experiment

from conftest import RecordingReporter


def _experiment(tiny_raw, **train):
    tiny_raw["train"].update(train)
    return build_experiment(check_config(validate_config(tiny_raw)))


def _freeze(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def test_cached_views_equal_the_encoders_eval_output(tiny_raw):
    exp = _experiment(tiny_raw)
    model = exp.model
    _freeze(model.encoders["text"])
    assert frozen_modalities(model.encoders) == ["text"]
    splits = cache_frozen_features(exp.splits, model.encoders, "cache", torch.device("cpu"), 7, ProgressReporter(quiet=True))
    assert isinstance(splits.val, FeatureSplit) and len(splits.val) == len(exp.splits.val)
    collator = Collator(model.encoders, num_classes=len(exp.dataset.classes))
    cached = next(iter(make_loader(splits.val, collator, batch_size=16, shuffle=False)))
    raw = next(iter(make_loader(exp.splits.val, collator, batch_size=16, shuffle=False)))
    assert set(cached.inputs["text"]) == {FEATURES_KEY} and FEATURES_KEY not in cached.inputs["audio"]
    model.eval()
    with torch.no_grad():
        a, b = model.views(cached.inputs, passes=1), model.views(raw.inputs, passes=1)
    for m in ("audio", "text"):
        torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)


def test_cached_features_still_give_different_dropout_views(tiny_raw):
    exp = _experiment(tiny_raw)
    model = exp.model
    _freeze(model.encoders["text"])
    splits = cache_frozen_features(exp.splits, model.encoders, "cache", torch.device("cpu"), 8, ProgressReporter(quiet=True))
    batch = next(iter(make_loader(splits.train, Collator(model.encoders, num_classes=3), batch_size=8, shuffle=False)))
    model.train()
    views = model.views(batch.inputs)  # K = 2 passes
    assert not torch.allclose(views["text"][0], views["text"][1])  # the dropout before the projection acts


def test_cache_without_a_frozen_encoder_is_a_config_error_before_training(tiny_raw, tmp_path):
    with pytest.raises(ConfigError, match="frozen_features: cache needs a modality whose encoder is fully frozen"):
        _experiment(tiny_raw, frozen_features="cache")
    with pytest.raises(ConfigError):
        run_experiment(check_config(validate_config({**tiny_raw, "train": {**tiny_raw["train"], "frozen_features": "cache"}})), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_run_with_a_frozen_hf_encoder_and_cached_features(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    from tiny_hf import _save_bert

    bert = _save_bert(tmp_path / "bert")
    tiny_raw["modalities"]["text"] = {"encoder": "hf_text", "options": {"model": bert, "freeze": "all", "local_files_only": True}}
    tiny_raw["train"].update(frozen_features="cache", epochs=2, frozen_features_store="disk", frozen_features_dir=str(tmp_path / "features"))
    out = tmp_path / "run"
    metrics = run_experiment(check_config(validate_config(tiny_raw)), out)
    assert 0.0 <= metrics["ua"] <= 1.0
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 60  # one per item of the synthetic set
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["terms"] for r in records)


def test_features_are_reused_only_for_the_same_encoder_and_input(tiny_raw):
    import multiturbo.feature_cache as fc

    fc._MEMO.clear()
    exp = _experiment(tiny_raw)
    _freeze(exp.model.encoders["text"])
    quiet = ProgressReporter(quiet=True)
    first = cache_frozen_features(exp.splits, exp.model.encoders, "cache", torch.device("cpu"), 8, quiet)
    (memo,) = fc._MEMO.values()
    n_texts = len({s.inputs["text"] for split in (exp.splits.train, exp.splits.val, exp.splits.test) for s in split})
    assert len(memo) == n_texts
    _, _, reused = fc.compute_features(exp.model.encoders["text"], exp.splits.val, "text", torch.device("cpu"), 8, quiet)
    assert reused == len(exp.splits.val)
    again = cache_frozen_features(exp.splits, exp.model.encoders, "cache", torch.device("cpu"), 8, quiet)
    torch.testing.assert_close(again.train.features["text"], first.train.features["text"], rtol=0, atol=0)
    with torch.no_grad():  # other weights: computed anew
        next(exp.model.encoders["text"].parameters()).add_(1.0)
    other = cache_frozen_features(exp.splits, exp.model.encoders, "cache", torch.device("cpu"), 8, quiet)
    assert len(fc._MEMO) == 2 and not torch.equal(other.train.features["text"], first.train.features["text"])


def test_the_disk_store_serves_another_process_and_recomputes_corrupt_or_foreign_entries(tiny_raw, tmp_path):
    import multiturbo.feature_cache as fc

    fc._MEMO.clear()
    exp = _experiment(tiny_raw)
    _freeze(exp.model.encoders["text"])
    text = exp.model.encoders["text"]
    cpu, store = torch.device("cpu"), tmp_path / "features"
    first = cache_frozen_features(exp.splits, exp.model.encoders, "cache", cpu, 8, RecordingReporter(), store="disk", directory=store)
    files = sorted(store.rglob("*.safetensors"))
    n_texts = len({s.inputs["text"] for split in (exp.splits.train, exp.splits.val, exp.splits.test) for s in split})
    assert len(files) == n_texts and len({f.parent for f in files}) == 1  # one directory per encoder

    fc._MEMO.clear()  # as a new process: everything comes from the disk, bit for bit
    disk = fc.DiskStore(store)
    features, _, reused = fc.compute_features(text, exp.splits.train, "text", cpu, 8, ProgressReporter(quiet=True), disk)
    assert reused == len(exp.splits.train) and not disk.recomputed
    torch.testing.assert_close(features, first.train.features["text"], rtol=0, atol=0)

    fc._MEMO.clear()
    files[0].write_bytes(b"not a safetensors file")
    files[1].write_bytes(files[2].read_bytes())  # a valid file of another input
    lines = RecordingReporter()
    again = cache_frozen_features(exp.splits, exp.model.encoders, "cache", cpu, 8, lines, store="disk", directory=store)
    for name in ("train", "val", "test"):  # the two recomputed items ran in a smaller batch: equal to float rounding
        torch.testing.assert_close(getattr(again, name).features["text"], getattr(first, name).features["text"], rtol=0, atol=1e-6)
    warned = [line for line in lines.lines if "could not be used and were computed again" in line]
    import re

    assert sum(int(re.search(r"disk: (\d+) cache entr", w).group(1)) for w in warned) == 2
    assert any("another encoder or input" in w or "SafetensorError" in w for w in warned)
    fc._MEMO.clear()
    disk = fc.DiskStore(store)
    fc.compute_features(text, exp.splits.train, "text", cpu, 8, ProgressReporter(quiet=True), disk)
    fc.compute_features(text, exp.splits.val, "text", cpu, 8, ProgressReporter(quiet=True), disk)
    fc.compute_features(text, exp.splits.test, "text", cpu, 8, ProgressReporter(quiet=True), disk)
    assert not disk.recomputed  # both bad entries were rewritten

    fc._MEMO.clear()
    with torch.no_grad():  # another model: never served from the first one's entries
        next(text.parameters()).add_(1.0)
    other = cache_frozen_features(exp.splits, exp.model.encoders, "cache", cpu, 8, RecordingReporter(), store="disk", directory=store)
    assert not torch.equal(other.train.features["text"], first.train.features["text"])
    assert len({f.parent for f in store.rglob("*.safetensors")}) == 2
