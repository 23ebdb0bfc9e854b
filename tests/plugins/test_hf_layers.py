"""The HF encoders' ``layers``, ``freeze_layers`` and ``output_dropout`` options, and their layer
ids for layer-wise learning-rate decay (tiny models built in the test, no hub access)."""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from multiturbo.errors import ConfigError  # noqa: E402
from multiturbo_hf import HFAudio, HFText, HFWhisper  # noqa: E402

from tiny_hf import build_tiny_models  # noqa: E402

FAMILIES = {"wav2vec2": HFAudio, "wavlm": HFAudio, "whisper": HFWhisper, "bert": HFText, "gpt2": HFText}
RAW = {"audio": [torch.randn(4003).numpy(), torch.randn(16000).numpy()], "text": ["hello world", "this is a much more long sentence"]}
KIND = {HFAudio: "audio", HFWhisper: "audio", HFText: "text"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("hf_layers"))


def build(models, family: str, **options):
    cls = FAMILIES[family]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(cls.Options(model=models[family], dropout=0.2, **options))


def encode(enc, train: bool = False):
    enc.train(train)
    return enc(enc.collate(RAW[KIND[type(enc)]]))


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_ids_cover_embeddings_layers_and_top(models, family):
    enc = build(models, family)
    assert enc.num_layers == 2  # the tiny models have 2 layers
    ids = {name: enc.layer_id(name) for name, _ in enc.named_parameters()}
    assert {i for i in ids.values() if i is not None} == {0, 1, 2}
    layer_1 = [n for n, i in ids.items() if i == 1]
    assert layer_1 and all(".0." in n for n in layer_1)  # the first block of the list
    top = [n for n, i in ids.items() if i is None]
    if family in ("wavlm", "whisper", "gpt2"):  # a final LayerNorm after the last layer
        assert top and all("norm" in n or "ln_f" in n for n in top)


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_index_last_equals_the_default_output(models, family):
    enc = build(models, family)
    default = encode(enc)
    assert torch.allclose(encode(build(models, family, layers=2)), default, atol=1e-6)
    assert torch.allclose(encode(build(models, family, layers=-1)), default, atol=1e-6)
    middle = build(models, family, layers=1)
    assert not torch.allclose(encode(middle), default, atol=1e-4)
    # what lies above the chosen layer never reaches the loss: it is frozen, the rest trains
    assert all(p.requires_grad == (middle.layer_id(n) in (0, 1)) for n, p in middle.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_weighted_layers_start_as_the_mean_of_all_hidden_states_and_learn(models, family):
    enc = build(models, family, layers="weighted")
    states = [encode(build(models, family, layers=i)) for i in range(3)]
    # pooling is linear (mean over the same valid positions), so the uniform mix pools to the mean
    assert torch.allclose(encode(enc), torch.stack(states).mean(0), atol=1e-5)
    enc.zero_grad()
    encode(enc, train=True).pow(2).sum().backward()
    assert enc.hidden.mix.weights.grad is not None and enc.hidden.mix.weights.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "bert"])
def test_frozen_weighted_encoder_still_gives_two_different_views_in_training(models, family):
    """freeze: all + layers: weighted (the SUPERB protocol) with K = 2: the model's dropout acts
    in train mode, so the two copies of a batch differ; only the layer weights learn."""
    enc = build(models, family, freeze="all", layers="weighted")
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable == ["hidden.mix.weights"]
    raw = RAW[KIND[type(enc)]]
    enc.train()
    batch = enc.collate(raw + raw)  # the batch repeated twice, as TurboModel's K passes
    out = enc(batch)
    one, two = out[: len(raw)], out[len(raw):]
    assert not torch.allclose(one, two, atol=1e-4)
    out.sum().backward()
    assert enc.hidden.mix.weights.grad is not None
    enc.eval()
    with torch.no_grad():
        out = enc(batch)
    assert torch.allclose(out[: len(raw)], out[len(raw):], atol=1e-5)  # eval: dropout off, identical


def test_output_dropout_differs_views_even_without_model_dropout(models):
    enc = build(models, "bert", freeze="all", output_dropout=0.3)
    enc.model.eval()  # the model's own dropout off: only output_dropout is left
    enc.hidden.train()
    raw = RAW["text"]
    out = enc(enc.collate(raw + raw))
    assert not torch.allclose(out[:2], out[2:], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_layers_freezes_the_front_end_and_the_first_layers(models, family):
    enc = build(models, family, freeze_layers=1)
    for name, p in enc.named_parameters():
        lid = enc.layer_id(name)
        assert p.requires_grad == (lid is None or lid > 1), name
    assert any(p.requires_grad for p in enc.parameters())
    zero = build(models, family, freeze_layers=0)
    assert all(not p.requires_grad for n, p in zero.named_parameters() if zero.layer_id(n) == 0)
    assert all(p.requires_grad for n, p in zero.named_parameters() if zero.layer_id(n) != 0)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "bert"])
def test_layers_and_freeze_layers_beyond_the_depth_are_clear_errors(models, family):
    with pytest.raises(ConfigError, match="layers: 30 is out of range: .* has 2 layers"):
        build(models, family, layers=30)
    with pytest.raises(ConfigError, match="freeze_layers: 3 is more than the 2 layers"):
        build(models, family, freeze_layers=3)


def test_layer_decay_groups_of_a_hf_encoder(models):
    from torch import nn

    from multiturbo.config import TrainConfig
    from multiturbo.optim import param_groups

    model = nn.Module()
    model.encoders = nn.ModuleDict({"text": build(models, "bert", layers="weighted")})
    groups = param_groups(model, TrainConfig(lr=1.0, layer_decay=0.5, weight_decay=0.1))
    lrs = {g.layer: g.lr for g in groups}
    assert lrs == {0: 0.125, 1: 0.25, 2: 0.5, 3: 1.0}  # embeddings, layer 1, layer 2, top (pooler, layer weights)
    embeddings = next(g for g in groups if g.layer == 0 and g.decay)
    word = model.encoders["text"].model.embeddings.word_embeddings.weight
    assert any(p is word for p in embeddings.params)
    top = [g for g in groups if g.layer == 3 and not g.decay]
    assert any(p is model.encoders["text"].hidden.mix.weights for g in top for p in g.params)


def test_a_run_with_the_fine_tuning_recipe_and_a_hf_encoder(models, tiny_raw, tmp_path):
    import json

    from multiturbo.config import check_config, validate_config
    from multiturbo.run import run_experiment

    tiny_raw["modalities"]["text"] = {"encoder": "hf_text", "options": {
        "model": models["bert"], "dropout": 0.2, "layers": "weighted", "freeze_layers": 1, "max_tokens": 16}}
    tiny_raw["train"].update(
        epochs=2, optimizer="adamw", weight_decay=0.01, layer_decay=0.8, lr_groups={"text": 1e-3, "head": 1e-2},
        schedule={"decay": "cosine", "warmup_fraction": 0.25}, class_weights="balanced", sampler="balanced",
    )
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run_experiment(check_config(validate_config(tiny_raw)), out)
    assert 0.0 <= metrics["ua"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [set(r["lr"]) for r in records] == [{"audio", "text", "projections", "head"}] * 2
    assert records[-1]["lr"]["head"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at 0

    tiny_raw["modalities"]["text"]["options"].update(layers=30, freeze_layers=None)
    with pytest.raises(ConfigError, match="layers: 30 is out of range: the hf_text model BertModel has 2 layers"):
        run_experiment(check_config(validate_config(tiny_raw)), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # found before anything is written or trained
