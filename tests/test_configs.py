"""Every shipped config validates: keys, types, plugin names and plugin options."""

from __future__ import annotations

import pathlib

import pytest

from multiturbo.config import PRESETS, load_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_reference_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "audio_text_iemocap.yaml", "audio_text_iemocap_whisper_gpt2.yaml"} <= names


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
