"""Every shipped config validates: keys, types, plugin names and plugin options."""

from __future__ import annotations

import pathlib

import pytest

from multiturbo.config import PRESETS, load_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_reference_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "audio_text_iemocap.yaml", "audio_text_iemocap_whisper_gpt2.yaml", "audio_text_iemocap_recipe.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("method", list(PRESETS))
def test_config_validates_for_every_method(path, method):
    cfg = load_config(path, [f"method={method}"])
    assert cfg.name == path.stem


def test_paper_settings():
    cfg = load_config(CONFIGS[[p.name for p in CONFIGS].index("audio_text_iemocap.yaml")])
    assert cfg.modalities["audio"].options["model"] == "facebook/wav2vec2-base"
    assert cfg.modalities["text"].options["model"] == "bert-base-uncased"
    assert cfg.model.dim == 768 and cfg.model.dropout == 0.2
    assert all(m.options["dropout"] == 0.2 for m in cfg.modalities.values())
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.patience) == ("adam", 1e-5, 64, 10)
    assert (cfg.turbo.ce_weight, cfg.turbo.passes, cfg.turbo.in_modal, cfg.turbo.cross_modal) == (0.5, 2, True, True)
    assert cfg.data.options["protocol"] == "speaker10" and cfg.data.options["merge"] == {"exc": "hap"}


def test_recipe_settings():
    """The recommended recipe: per-part learning rates, warm-up + decay, weighted layers, class weights."""
    cfg = load_config(CONFIGS[[p.name for p in CONFIGS].index("audio_text_iemocap_recipe.yaml")])
    paper = load_config(CONFIGS[[p.name for p in CONFIGS].index("audio_text_iemocap.yaml")])
    t = cfg.train
    assert t.lr_groups["audio"] < t.lr_groups["text"] < t.lr < t.lr_groups["head"]
    assert t.schedule is not None and t.schedule.warmup_fraction == 0.1 and t.schedule.decay in ("linear", "cosine")
    assert t.class_weights == "balanced" and t.optimizer == "adamw" and t.weight_decay > 0
    assert all(m.options["layers"] == "weighted" for m in cfg.modalities.values())
    assert (cfg.data, cfg.turbo, cfg.model) == (paper.data, paper.turbo, paper.model)  # only the training recipe differs
    p = paper.train
    assert (p.lr_groups, p.schedule, p.class_weights, p.sampler, p.layer_decay) == ({}, None, "none", "random", None)
