"""Parameter groups, weight decay rules, layer-wise decay and the learning-rate schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch

from multiturbo.build import build_experiment
from multiturbo.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from multiturbo.config import check_config, validate_config
from multiturbo.errors import ConfigError
from multiturbo.optim import decays, group_lrs, make_optimizer, make_scheduler, param_groups, part_of, steps_per_epoch
from multiturbo.run import run_experiment


def _cfg(raw, turbo=None, **train):
    raw["train"].update(train)
    if turbo:
        raw["turbo"] = turbo
    return check_config(validate_config(raw))


def _model(raw, turbo=None, **train):
    cfg = _cfg(raw, turbo, **train)
    return cfg, build_experiment(cfg).model


def test_every_trainable_parameter_is_in_one_group_named_after_its_part(tiny_raw):
    cfg, model = _model(tiny_raw, {"learn_temperature": True}, lr_groups={"audio": 1e-5, "head": 1e-2}, weight_decay=0.1,
                        weight_decay_groups={"head": 0.5})
    groups = param_groups(model, cfg.train)
    seen = [id(p) for g in groups for p in g.params]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert {g.name for g in groups} == {"audio", "text", "projections", "head", "temperature"}
    lr = {g.name: g.lr for g in groups}
    assert lr == {"audio": 1e-5, "text": cfg.train.lr, "projections": cfg.train.lr, "head": 1e-2, "temperature": cfg.train.lr}
    named = dict(model.named_parameters())
    for g in groups:
        for p in g.params:
            name = next(n for n, q in named.items() if q is p)
            assert part_of(name) == g.name
            expected = (0.5 if g.name == "head" else 0.1) if (p.ndim >= 2 and "norm" not in name) else 0.0
            assert g.weight_decay == expected, name
    assert [g.weight_decay for g in groups if g.name == "temperature"] == [0.0]


def test_decay_rule_follows_open_clip():
    w, b = torch.zeros(3, 3), torch.zeros(3)
    assert decays("encoders.text.model.encoder.layer.0.attention.self.query.weight", w)
    assert not decays("encoders.text.model.encoder.layer.0.attention.self.query.bias", b)
    assert not decays("encoders.text.model.h.0.ln_1.weight", w)  # a norm by name, whatever its shape
    assert not decays("encoders.audio.model.encoder.layer_norm.weight", w)
    assert not decays("contrastive.log_temperature", torch.zeros(()))


def test_weight_decay_leaves_the_learnt_temperature_alone(tiny_raw):
    """AdamW with a zero gradient: decayed weights shrink, the temperature does not move (the
    former single-group optimiser decayed log_temperature like any weight)."""
    cfg, model = _model(tiny_raw, {"learn_temperature": True, "temperature": 0.2}, optimizer="adamw", weight_decay=0.5, lr=0.1)
    opt = make_optimizer(model, cfg.train)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    log_t = model.contrastive.log_temperature.detach().clone()
    head = next(p for n, p in model.named_parameters() if n.startswith("head.") and p.ndim == 2)
    before = head.detach().clone()
    opt.step()
    assert torch.equal(model.contrastive.log_temperature.detach(), log_t)
    assert torch.allclose(head.detach(), before * (1 - 0.1 * 0.5))


def test_layer_decay_scales_each_layer_of_an_encoder_with_layers(tiny_raw):
    cfg, model = _model(tiny_raw, lr=1e-3, lr_groups={"text": 1e-2})
    train = cfg.train.model_copy(update={"layer_decay": 0.5})
    text = model.encoders["text"]
    text.num_layers = 2  # what a transformer encoder plugin declares
    names = [n for n, _ in text.named_parameters()]
    ids = {n: (0 if i < 2 else 1 if i < len(names) // 2 else None) for i, n in enumerate(names)}
    text.layer_id = ids.get
    groups = param_groups(model, train)
    text_groups = {g.layer: g.lr for g in groups if g.name == "text"}
    assert text_groups == {0: 1e-2 * 0.5**3, 1: 1e-2 * 0.5**2, 3: 1e-2}  # top (None) -> layer N + 1, unscaled
    assert {g.layer for g in groups if g.name != "text"} == {None}  # audio has no layers: unscaled
    opt = make_optimizer(model, train)
    assert group_lrs(opt)["text"] == 1e-2  # the logged lr of a part is its top layer's


def test_layer_decay_without_any_layered_encoder_is_an_error(tiny_raw):
    with pytest.raises(ConfigError, match="train.layer_decay: none of the encoders"):
        build_experiment(_cfg(tiny_raw, layer_decay=0.8))


def test_a_group_naming_no_part_is_an_error_listing_the_parts(tiny_raw):
    with pytest.raises(ConfigError) as info:
        _cfg(tiny_raw, lr_groups={"video": 1e-4, "head": 1e-3}, weight_decay_groups={"projection": 0.1})
    lines = info.value.lines
    assert len(lines) == 2
    assert lines[0].startswith("train.lr_groups.video: 'video' names no part of the model")
    assert "audio, text, projections, head, temperature" in lines[0]
    assert lines[1].startswith("train.weight_decay_groups.projection:")


@pytest.mark.parametrize(("decay", "expected"), [
    ("constant", [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [1 / 3, 2 / 3, 1.0, (1 + math.cos(math.pi * 0.25)) / 2, 0.5, (1 + math.cos(math.pi * 0.75)) / 2]),
])
def test_schedule_warms_up_then_decays_per_step(tiny_raw, decay, expected):
    cfg = _cfg(tiny_raw, epochs=2, schedule={"decay": decay, "warmup_steps": 2}, lr=0.1, lr_groups={"head": 1.0})
    model = build_experiment(cfg).model
    opt = make_optimizer(model, cfg.train)
    sched = make_scheduler(opt, cfg.train, per_epoch=3)  # 6 steps in all
    seen = []
    for _ in range(6):
        seen.append(group_lrs(opt))
        opt.step()
        sched.step()
    assert [s["head"] for s in seen] == pytest.approx(expected)
    assert [s["audio"] for s in seen] == pytest.approx([0.1 * x for x in expected])


def test_warmup_fraction_counts_all_steps(tiny_raw):
    cfg = _cfg(tiny_raw, epochs=5, schedule={"decay": "linear", "warmup_fraction": 0.1}, lr=1.0)
    opt = make_optimizer(build_experiment(cfg).model, cfg.train)
    sched = make_scheduler(opt, cfg.train, per_epoch=10)  # 50 steps: warm-up 5
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 6) and lrs[4] == pytest.approx(5 / 6) and lrs[5] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(1 / 45)


def test_no_schedule_keeps_the_paper_constant_lr(tiny_raw):
    cfg = _cfg(tiny_raw)
    assert make_scheduler(make_optimizer(build_experiment(cfg).model, cfg.train), cfg.train, per_epoch=3) is None


@pytest.mark.parametrize("schedule", [{"warmup_steps": 12}, {"warmup_fraction": 0.99}])
def test_a_warmup_as_long_as_training_is_found_before_training(tiny_raw, tmp_path, schedule):
    # tiny: 42 training items, batch 8 -> 6 steps per epoch, 2 epochs = 12 steps
    assert steps_per_epoch(42, 8, drop_singleton=True) == 6
    cfg = _cfg(tiny_raw, schedule=schedule)
    with pytest.raises(ConfigError, match=r"the whole training has 12 optimiser steps \(train.epochs 2 x 6 steps per epoch: 42 training items / batch_size 8\)"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_steps_per_epoch_drops_a_last_batch_of_one_only_when_asked():
    assert steps_per_epoch(17, 8) == 3 and steps_per_epoch(17, 8, drop_singleton=True) == 2
    assert steps_per_epoch(16, 8, drop_singleton=True) == 2 and steps_per_epoch(18, 8, drop_singleton=True) == 3


def test_scheduler_state_survives_a_checkpoint(tiny_raw, tmp_path):
    cfg = _cfg(tiny_raw, epochs=3, schedule={"decay": "cosine", "warmup_steps": 2})
    model = build_experiment(cfg).model
    opt = make_optimizer(model, cfg.train)
    sched = make_scheduler(opt, cfg.train, per_epoch=4)
    for _ in range(5):
        opt.step()
        sched.step()
    save_checkpoint(tmp_path / "c.safetensors", model, opt, {}, scheduler=sched)
    opt2 = make_optimizer(model, cfg.train)
    sched2 = make_scheduler(opt2, cfg.train, per_epoch=4)
    restore_checkpoint(load_checkpoint(tmp_path / "c.safetensors"), model, opt2, scheduler=sched2, rng=False)
    for _ in range(4):
        assert group_lrs(opt2) == group_lrs(opt)
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


def test_each_epoch_logs_the_lr_of_every_group(tiny_raw, tmp_path):
    cfg = _cfg(tiny_raw, lr=0.01, lr_groups={"head": 0.1}, schedule={"decay": "linear", "warmup_steps": 3})
    run_experiment(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 6 steps per epoch, 12 in all: after epoch 1 (step 6) the factor is (12 - 6) / (12 - 3)
    assert records[0]["lr"]["head"] == pytest.approx(0.1 * 6 / 9) and records[0]["lr"]["audio"] == pytest.approx(0.01 * 6 / 9)
    assert set(records[0]["lr"]) == {"audio", "text", "projections", "head"}
    assert records[1]["lr"]["head"] == pytest.approx(0.0)
    from multiturbo.plots import learning_series

    assert list(learning_series(records)["lr/head"][1]) == pytest.approx([0.1 * 6 / 9, 0.0])
