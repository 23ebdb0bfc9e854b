"""One contract test, parametrised over every registered encoder.

For each: output [B, output_dim]; an item's vector does not depend on the batch around it
(padding masks respected); in train mode two passes differ (dropout, Turbo's views), in eval
mode they agree. A new encoder must add a case here (the first test fails until it does).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_hf import build_tiny_models

from multiturbo.plugins import get_registries

_rng = np.random.default_rng(1)
AUDIO = [_rng.standard_normal(4003).astype(np.float32), _rng.standard_normal(12000).astype(np.float32)]
TEXT = ["hello world", "this is a much more long sentence, with padding!"]
IMAGES = [_rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), _rng.integers(0, 255, (24, 20), dtype=np.uint8)]

# encoder name -> (options given the tiny HF model directories, two raw items of different size)
CASES = {
    "logmel_cnn": (lambda hf: {"channels": 4, "output_dim": 8}, AUDIO),
    "hashed_transformer": (lambda hf: {"dim": 16, "layers": 1, "heads": 2, "vocab_size": 128}, TEXT),
    "small_cnn": (lambda hf: {"width": 4, "output_dim": 8}, IMAGES),
    "hf_audio": (lambda hf: {"model": hf["wav2vec2"], "dropout": 0.2}, AUDIO),
    "hf_whisper": (lambda hf: {"model": hf["whisper"], "dropout": 0.2}, AUDIO),
    "hf_text": (lambda hf: {"model": hf["bert"], "dropout": 0.2}, TEXT),
    "timm": (lambda hf: {"model": "test_vit", "image_size": 32, "drop_rate": 0.2}, IMAGES),
}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("contract_models"))


def build(name: str, hf_models):
    cls = get_registries().encoders.get(name)
    torch.manual_seed(0)
    return cls(cls.Options(**CASES[name][0](hf_models)))


def test_every_registered_encoder_has_a_contract_case():
    assert set(get_registries().encoders.names()) == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_encoder_contract(name, hf_models):
    enc = build(name, hf_models)
    raw = CASES[name][1]
    enc.eval()
    with torch.no_grad():
        batch = enc(enc.collate(raw))  # the short item padded to the long one
        alone = enc(enc.collate(raw[:1]))
        again = enc(enc.collate(raw))
    assert batch.shape == (2, enc.output_dim)
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=1e-4)  # masks respected
    torch.testing.assert_close(batch, again)  # eval: deterministic
    enc.train()
    collated = enc.collate(raw)
    with torch.no_grad():
        first, second = enc(collated), enc(collated)
    assert not torch.allclose(first, second)  # train: dropout gives different views
