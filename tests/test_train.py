"""The training loop: non-finite losses and gradients (stop or skip), checkpoints, data order."""

from __future__ import annotations

import json
import math

import pytest
import torch

import multiturbo.model
from multiturbo.checkpoint import read_checkpoint_loop_state
from multiturbo.config import check_config, validate_config
from multiturbo.data import EpochSampler
from multiturbo.run import run_experiment
from multiturbo.rundir import CHECKPOINT as CHECKPOINT_NAME
from multiturbo.train import TrainingError

REAL_STEP = multiturbo.model.TurboModel.step


def _cfg(raw, **train):
    raw["train"].update(train)
    return check_config(validate_config(raw))


def _poison(monkeypatch, bad_calls: set[int] | None, kind: str):
    """Make the model's training forward non-finite on the given calls (1-based; None = all):
    kind "loss" -> the text in-modal term is NaN; kind "grad" -> the head's gradient is inf."""
    calls = {"n": 0, "hooked": set()}

    def poisoned() -> bool:
        return bad_calls is None or calls["n"] in bad_calls

    def step(self, inputs, labels):
        calls["n"] += 1
        out = REAL_STEP(self, inputs, labels)
        if kind == "grad":
            weight = next(p for n, p in self.named_parameters() if n.startswith("head."))
            if id(weight) not in calls["hooked"]:
                calls["hooked"].add(id(weight))
                weight.register_hook(lambda g: torch.full_like(g, math.inf) if poisoned() else g)
        elif poisoned():
            out.terms["text1~text2"] = out.terms["text1~text2"] * math.nan
            out.loss = out.loss + out.terms["text1~text2"]
        return out

    monkeypatch.setattr(multiturbo.model.TurboModel, "step", step)
    return calls


def test_a_nan_loss_stops_naming_the_step_and_term_and_keeps_the_checkpoint(tiny_raw, tmp_path, monkeypatch):
    calls = _poison(monkeypatch, {9}, "loss")  # epoch 1 has 6 steps (42 items, batch 8): step 9 is in epoch 2
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        run_experiment(_cfg(tiny_raw, checkpoint_every=2), out)
    msg = str(info.value)
    assert "Non-finite loss at epoch 2, step 9" in msg and "text1~text2" in msg and CHECKPOINT_NAME in msg
    assert read_checkpoint_loop_state(out / CHECKPOINT_NAME)["step"] == 8  # the last good one
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    # the run continues from its checkpoint with the skip policy (a setting a resume may change)
    calls["n"] = 8  # the poisoned call is the next one again
    run_experiment(_cfg(tiny_raw, checkpoint_every=2, nonfinite="skip"), out, resume=True)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["nonfinite_skipped"] == 1


def test_a_nonfinite_gradient_stops_naming_the_parameter(tiny_raw, tmp_path, monkeypatch):
    _poison(monkeypatch, {3}, "grad")
    with pytest.raises(TrainingError, match=r"Non-finite gradient at epoch 1, step 3 .*parameter\(s\) head\."):
        run_experiment(_cfg(tiny_raw), tmp_path / "run")


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_skip_policy_skips_and_counts_bad_steps(tiny_raw, tmp_path, monkeypatch, kind):
    _poison(monkeypatch, {2, 3, 8}, kind)
    out = tmp_path / "run"
    metrics = run_experiment(_cfg(tiny_raw, nonfinite="skip"), out)
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["nonfinite_skipped"] for e in epochs] == [2, 1]
    assert json.loads((out / "run.json").read_text())["nonfinite_skipped"] == 3
    assert all(math.isfinite(e["train"]["loss"]) for e in epochs)
    assert 0.0 <= metrics["wa"] <= 1.0


def test_skip_policy_still_stops_after_too_many_in_a_row(tiny_raw, tmp_path, monkeypatch):
    _poison(monkeypatch, None, "loss")
    with pytest.raises(TrainingError, match="4 steps in a row had a non-finite loss or gradient; the last one: Non-finite loss at epoch 1, step 4"):
        run_experiment(_cfg(tiny_raw, nonfinite="skip", nonfinite_max_skips=3), tmp_path / "run")


def test_a_huge_learning_rate_is_caught(tiny_raw, tmp_path):
    with pytest.raises(TrainingError, match="Non-finite (loss|gradient) at epoch"):
        run_experiment(_cfg(tiny_raw, lr=1e30, epochs=3), tmp_path / "run")


def test_epoch_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch():
    s = EpochSampler(10, shuffle=True, seed=3)
    first, second = list(s), list(s)  # iterating moves on to the next epoch
    assert sorted(first) == list(range(10)) and first != second
    fresh = EpochSampler(10, shuffle=True, seed=3)
    fresh.set_epoch(2, start=4)
    assert len(fresh) == 6 and list(fresh) == second[4:]
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    assert list(EpochSampler(10, shuffle=True, seed=4)) != first


def test_checkpoints_every_n_steps_and_at_epoch_ends(tiny_raw, tmp_path, monkeypatch):
    import multiturbo.train as train

    seen = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, model, opt, loop, **kw: seen.append((loop["epoch"], loop["batch"], loop["step"])) or real(path, model, opt, loop, **kw))
    run_experiment(_cfg(tiny_raw, checkpoint_every=4), tmp_path / "run")
    # 6 steps per epoch: mid-epoch at steps 4 and 8, epoch ends after steps 6 and 12 (the next epoch, batch 0)
    assert seen == [(1, 4, 4), (2, 0, 6), (2, 2, 8), (3, 0, 12)]
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()  # finished: removed
