"""run_experiment: what run.json records about the run's inputs."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from multiturbo.config import check_config, validate_config
from multiturbo.run import run_experiment


def test_run_json_counts_the_items_cut_to_an_encoders_limit(tiny_raw, tmp_path):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    try:
        from tiny_hf import _save_bert
    finally:
        sys.path.pop(0)
    raw = copy.deepcopy(tiny_raw)
    raw["modalities"]["text"] = {"encoder": "hf_text", "options": {"model": _save_bert(tmp_path / "bert"), "max_tokens": 4}}
    raw["train"]["epochs"] = 1
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="cut"):
        run_experiment(check_config(validate_config(raw)), out)
    cut = json.loads((out / "run.json").read_text())["cut_items"]
    assert set(cut) == {"text"} and cut["text"] > 0  # logmel_cnn has no length limit; every synthetic text is longer than 4 tokens


def manifest_run(tmp_path: Path, seed: int, split_seed: int | None, name: str) -> dict:
    """A text + optional note manifest (90 rows, 3 classes, every 9th note empty, 6 speakers), random split."""
    import csv

    path = tmp_path / "m.csv"
    if not path.exists():
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "note", "speaker", "label"])
            for i in range(90):
                w.writerow([f"item {i} word{i % 3}", "" if i % 9 == 0 else f"note {i}", f"spk{i % 6}", "abc"[i % 3]])
    text = {"encoder": "hashed_transformer", "options": {"vocab_size": 256, "dim": 16, "layers": 1, "heads": 2}}
    raw = {
        "name": "m", "seed": seed,
        "data": {"name": "manifest", "options": {"path": str(path), "modalities": {
            "text": {"column": "text", "kind": "text"}, "note": {"column": "note", "kind": "text", "optional": True}}},
            **({"split_seed": split_seed} if split_seed is not None else {})},
        "modalities": {"text": text, "note": text},
        "model": {"dim": 16}, "train": {"batch_size": 16, "epochs": 1, "lr": 0.003},
    }
    run_experiment(check_config(validate_config(raw)), tmp_path / name)
    return json.loads((tmp_path / name / "run.json").read_text())


def test_run_json_and_report_carry_the_split_composition_and_seeds_share_the_split(tmp_path):
    a, b = manifest_run(tmp_path, 0, None, "seed0"), manifest_run(tmp_path, 1, None, "seed1")
    assert (a["seed"], a["split_seed"], b["seed"], b["split_seed"]) == (0, 0, 1, 0)
    fingerprints = lambda info: {s: info["split_composition"][s]["fingerprint"] for s in ("train", "val", "test")}  # noqa: E731
    assert fingerprints(a) == fingerprints(b)  # two training seeds, one split
    other = manifest_run(tmp_path, 0, 4, "split4")
    assert other["split_seed"] == 4 and fingerprints(other)["test"] != fingerprints(a)["test"]
    comp = a["split_composition"]
    assert {s: comp[s]["items"] for s in comp} == a["split_sizes"] == {"train": 63, "val": 9, "test": 18}
    assert comp["test"]["classes"] == {"a": 6, "b": 6, "c": 6}
    assert sum(comp[s]["missing"]["note"] for s in comp) == 10 and all(comp[s]["missing"]["text"] == 0 for s in comp)
    assert any("validation split has 9 items" in w for w in a["split_warnings"])
    assert any(w.startswith("The test split has fewer than 10 items of some classes (a 6, b 6, c 6)") for w in a["split_warnings"])
    timings = a["timings"]  # seconds per phase; the process's start-up only in a run of its own process
    assert {"build", "run_dir", "loaders", "train", "test", "analysis", "tensorboard", "report", "outside_training"} <= set(timings)
    assert timings["outside_training"] == pytest.approx(sum(v for k, v in timings.items() if k not in ("train", "outside_training")), abs=0.01)
    report = (tmp_path / "seed0" / "report.md").read_text()
    assert "## Splits" in report and "| class a | 21 | 3 | 6 |" in report and "lacking note" in report
    assert "**Warning**: The validation split has 9 items" in report


class _Lines:
    """A quiet progress reporter that keeps the logged lines."""

    def __init__(self):
        from multiturbo.progress import ProgressReporter

        self.reporter = ProgressReporter(quiet=True)
        self.lines: list[str] = []
        self.reporter.log = self.lines.append


def test_bucket_batching_records_the_padding_and_falls_back_to_random_without_lengths(tiny_raw, tmp_path, monkeypatch):
    import multiturbo.run

    tiny_raw["train"]["batching"] = "bucket"
    tiny_raw["train"]["epochs"] = 1
    run_experiment(check_config(validate_config(copy.deepcopy(tiny_raw))), tmp_path / "bucket")
    record = json.loads((tmp_path / "bucket" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(record["padding"]) == {"audio", "text"} and 0.0 <= record["padding"]["text"] < 1.0

    seen = []
    monkeypatch.setattr(multiturbo.run, "item_lengths", lambda split, max_seconds=None: seen.append(max_seconds))
    lines = _Lines()
    run_experiment(check_config(validate_config(copy.deepcopy(tiny_raw))), tmp_path / "unknown", progress=lines.reporter)
    assert any("train.batching: bucket needs item lengths" in line and "batches are random" in line for line in lines.lines)
    assert "padding" not in json.loads((tmp_path / "unknown" / "metrics.jsonl").read_text().splitlines()[0])
    audio_options = tiny_raw["modalities"]["audio"].get("options") or {}
    assert seen == [{"audio": audio_options.get("max_seconds", 10.0), "text": None}]  # each encoder's cut, for the lengths


def test_max_batch_seconds_warns_of_batches_over_the_budget_and_needs_lengths(tiny_raw, tmp_path, monkeypatch):
    import multiturbo.run
    from multiturbo.data import make_loader
    from multiturbo.errors import ConfigError

    tiny_raw["train"].update(max_batch_seconds=1500.0, min_batch_size=2)
    cfg = check_config(validate_config(copy.deepcopy(tiny_raw)))
    lengths = [{"audio": 1000.0, "text": float(3 + i % 5)} for i in range(42)]  # as the synthetic clips: 1000 samples
    loader = make_loader(list(range(42)), list, batch_size=8, shuffle=True, lengths=lengths, max_batch_seconds=1500.0, min_batch_size=2)
    lines = _Lines()
    total = multiturbo.run.budget_warning(loader, cfg.train, lines.reporter, "")
    assert total == loader.batch_sampler.total_batches(cfg.train.epochs) == 21 * cfg.train.epochs  # pairs: 2 x 1000 > 1500
    assert len(lines.lines) == 1 and "21 of epoch 1's 21 batches exceed the budget of 1500" in lines.lines[0] and "at least 2000" in lines.lines[0]
    fits = make_loader(list(range(42)), list, batch_size=8, shuffle=True, lengths=lengths, max_batch_seconds=2000.0, min_batch_size=2)
    assert multiturbo.run.budget_warning(fits, cfg.train, lines.reporter, "") == 21 * cfg.train.epochs and len(lines.lines) == 1

    longer = lengths[:41] + [{"audio": 3000.0, "text": 4.0}]  # one item longer than the budget of 2000 by itself
    mixed = make_loader(list(range(42)), list, batch_size=8, shuffle=True, lengths=longer, max_batch_seconds=2000.0, min_batch_size=2)
    lines = _Lines()
    multiturbo.run.budget_warning(mixed, cfg.train, lines.reporter, "")
    assert len(lines.lines) == 2 and "1 of epoch 1's 21 batches hold one item alone" in lines.lines[0]
    assert "the longest is 3000" in lines.lines[0] and "at least 6000" in lines.lines[0]
    assert "1 of epoch 1's 21 batches exceed the budget of 2000" in lines.lines[1]  # the 41st item joins a pair: 3 x 1000

    few = make_loader(list(range(3)), list, batch_size=8, shuffle=True, lengths=lengths[:3], max_batch_seconds=5000.0, min_batch_size=2, shard=(0, 2))
    with pytest.raises(ConfigError, match="cuts the 3 training items into fewer batches than the 2 processes"):
        multiturbo.run.budget_warning(few, cfg.train, lines.reporter, "")

    monkeypatch.setattr(multiturbo.run, "item_lengths", lambda split, max_seconds=None: None)
    with pytest.raises(ConfigError, match="train.max_batch_seconds: 1500.0 needs each item's length"):
        run_experiment(cfg, tmp_path / "unknown", progress=_Lines().reporter)


def test_items_longer_than_max_batch_seconds_train_alone_on_their_classification_loss(tiny_raw, tmp_path):
    """Every synthetic clip (1000 samples) is longer than a budget of 500: each trains alone in its batch,
    Turbo's terms have no negatives there and count zero, the classification loss alone trains."""
    tiny_raw["train"].update(epochs=2, max_batch_seconds=500.0, min_batch_size=2)
    lines = _Lines()
    run_experiment(check_config(validate_config(copy.deepcopy(tiny_raw))), tmp_path / "alone", progress=lines.reporter)
    assert any("42 of epoch 1's 42 batches hold one item alone" in line for line in lines.lines)
    log = [json.loads(line) for line in (tmp_path / "alone" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    cfg = check_config(validate_config(copy.deepcopy(tiny_raw)))
    assert [r["step"] for r in log] == [42, 84]  # one optimiser step per item
    for r in log:  # the loss is the classification term alone
        assert r["train"]["contrastive"] == 0.0 and 0.0 < r["train"]["ce"] < 10.0
        assert r["train"]["loss"] == pytest.approx(cfg.turbo.ce_weight * r["train"]["ce"])


def test_on_epoch_sees_each_epoch_record_after_it_is_written_and_may_stop_the_run(tiny_raw, tmp_path):
    """The hook trackers and tuners use: called after metrics.jsonl has the epoch; an exception
    raised from it ends the run with run.json marked failed and the epoch's outputs kept."""
    seen = []

    def stop_after_first(record: dict) -> None:
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        seen.append((record["epoch"], len(lines), sorted(record["val"])))
        raise KeyError("pruned")

    with pytest.raises(KeyError, match="pruned"):
        run_experiment(check_config(validate_config(tiny_raw)), tmp_path / "run", on_epoch=stop_after_first)
    assert [s[:2] for s in seen] == [(1, 1)] and "ua" in seen[0][2]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()


def test_test_predictions_csv_holds_what_metrics_json_scored(tiny_run):
    import csv

    import torch

    from multiturbo.metrics import accuracy, macro_f1, macro_recall

    with open(tiny_run / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    info = json.loads((tiny_run / "run.json").read_text())
    splits = json.loads((tiny_run / "splits.json").read_text())
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert list(rows[0]) == ["item", "id", "label", "pred"]
    assert len(rows) == info["split_sizes"]["test"] > 0
    assert [int(r["item"]) for r in rows] == list(range(len(rows)))
    assert [r["id"] for r in rows] == [str(i) for i in splits["test"]]
    labels = torch.tensor([int(r["label"]) for r in rows])
    preds = torch.tensor([int(r["pred"]) for r in rows])
    c = len(info["classes"])
    assert accuracy(preds, labels, c) == metrics["wa"]
    assert macro_recall(preds, labels, c) == metrics["ua"]
    assert macro_f1(preds, labels, c) == metrics["f1"]
    confusion = [[int(((labels == t) & (preds == p)).sum()) for p in range(c)] for t in range(c)]
    assert confusion == metrics["confusion"]
