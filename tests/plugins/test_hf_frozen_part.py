"""train.frozen_features: cache for a partly frozen encoder: hf_audio with a frozen feature encoder
(freeze: feature_encoder) caches the conv stack's output per item and runs only the layers above it
on the K passes. Tiny wav2vec2 (GroupNorm front end, as wav2vec2-base) built from a config."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import multiturbo.feature_cache as fc  # noqa: E402
from multiturbo.build import build_experiment  # noqa: E402
from multiturbo.config import check_config, validate_config  # noqa: E402
from multiturbo.data import Collator, make_loader  # noqa: E402
from multiturbo.dataset import Sample, Splits  # noqa: E402
from multiturbo.encoder import Encoder  # noqa: E402
from multiturbo.errors import ConfigError  # noqa: E402
from multiturbo.feature_cache import FROZEN_PART_KEY, cache_frozen_features, check_frozen_features  # noqa: E402
from multiturbo.progress import ProgressReporter  # noqa: E402

from conftest import RecordingReporter  # noqa: E402
from tiny_hf import GROUP, _save_audio, _save_bert, _save_whisper, build_group_norm_models, build_tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory) -> str:
    return build_group_norm_models(tmp_path_factory.mktemp("hf"))["wav2vec2_group"]


@pytest.fixture(scope="module")
def audio_models(tmp_path_factory) -> dict[str, str]:
    """Tiny wav2vec2 ("group", post-LayerNorm; "layer", stable LayerNorm), HuBERT and WavLM, dropout on, no SpecAugment
    (it acts below layer 1: cached, it is lost like the dropout there, and its numpy draws would differ)."""
    root = tmp_path_factory.mktemp("hf")
    off = {"mask_time_prob": 0.0}
    three = _save_audio(root / "three", transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, num_hidden_layers=3, **off)
    wavlm_group = _save_audio(root / "wavlm_group", transformers.WavLMConfig, transformers.WavLMModel, return_attention_mask=False,
                              num_buckets=16, max_bucket_distance=32, **GROUP, **off)  # post-LayerNorm, as WavLM-base
    return {**build_group_norm_models(root / "g", off), **build_tiny_models(root / "l", off), "wav2vec2_3_layers": three,
            "wavlm_group": wavlm_group}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory) -> str:
    return _save_whisper(tmp_path_factory.mktemp("hf") / "whisper")


def _experiment(tiny_raw, model: str, freeze: str = "feature_encoder", encoder: str = "hf_audio", modality: str = "audio",
                train: dict | None = None, **options):
    tiny_raw["data"]["options"].update(sample_rate=16000, seconds=0.25, size=24)
    tiny_raw["modalities"][modality] = {"encoder": encoder, "options": {"model": model, "freeze": freeze, "local_files_only": True, **options}}
    tiny_raw["train"].update(frozen_features="cache", **(train or {}))
    return build_experiment(check_config(validate_config(tiny_raw)))


def _unequal_audio(splits: Splits) -> Splits:
    """``splits`` with item i's audio cut to 40 %, 60 %, 80 % or 100 % of its samples (i % 4): unequal lengths in every batch."""
    def cut(split):
        out = []
        for i, s in enumerate(split):
            w = s.inputs["audio"]  # [T] samples
            out.append(Sample(inputs={**s.inputs, "audio": w[: len(w) * (2 + i % 4) // 5]}, label=s.label, meta=s.meta))
        return out
    return Splits(train=cut(splits.train), val=cut(splits.val), test=cut(splits.test))


def _same_rng(fn):
    torch.manual_seed(5)
    np.random.seed(5)  # SpecAugment's masks come from numpy
    return fn()


def _assert_cached_step_equals_full(exp, in_frozen_part, modality: str = "audio", eval_in_full: Sequence[torch.nn.Module] = (),
                                    splits: Splits | None = None) -> dict:
    """A training step (K = 2, dropout on) on cached frozen-part outputs against one through the full encoder:
    the loss and every trainable gradient equal (float32 rounding), none of ``in_frozen_part``'s parameters
    gets a gradient. ``eval_in_full``: the frozen part's modules with dropout, in eval mode for the full step
    (the cache computes them once in eval mode, so that is the step it must equal). Returns the cached
    training batch's inputs."""
    model, cpu = exp.model, torch.device("cpu")
    splits = splits or exp.splits
    cached_splits = cache_frozen_features(splits, model.encoders, "cache", cpu, 5, ProgressReporter(quiet=True), part_dropout="eval")
    collator = Collator(model.encoders, num_classes=3)
    cached = next(iter(make_loader(cached_splits.train, collator, batch_size=8, shuffle=False)))
    raw = next(iter(make_loader(splits.train, collator, batch_size=8, shuffle=False)))
    assert FROZEN_PART_KEY in cached.inputs[modality]
    model.train()
    results = []
    for batch in (raw, cached):
        model.zero_grad(set_to_none=True)
        for module in eval_in_full:
            module.train(batch is cached)  # (the cached step does not run them)
        out = _same_rng(lambda b=batch: model.step(b.inputs, b.labels))
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_raw, grads_raw), (loss_cached, grads_cached) = results
    torch.testing.assert_close(loss_cached, loss_raw, rtol=1e-5, atol=1e-6)
    assert set(grads_cached) == set(grads_raw) and not any(in_frozen_part(n) for n in grads_raw)
    scale = max(float(g.abs().max()) for g in grads_raw.values())  # float32 rounding, amplified by 1 / temperature
    for name, g in grads_raw.items():
        torch.testing.assert_close(grads_cached[name], g, rtol=1e-4, atol=1e-4 * scale, msg=name)
    return cached.inputs


def test_the_cached_step_equals_the_uncached_one_with_dropout_on(tiny_raw, wav2vec2):
    """Training mode, K = 2, dropout inside the trainable layers: the loss and every trainable gradient
    of a step on cached frozen-part outputs equal those of the full encoder (no dropout in the conv stack).
    The synthetic clips all have one length; the padding path is checked below with unequal items."""
    fc._MEMO.clear()
    exp = _experiment(tiny_raw, wav2vec2)
    model = exp.model
    assert fc.partial_modalities(model.encoders) == ["audio"] and fc.frozen_modalities(model.encoders) == []
    cached = _assert_cached_step_equals_full(exp, lambda name: "feature_extractor" in name)
    assert "input_values" not in cached["audio"]
    views = _same_rng(lambda: model.views(cached))["audio"]
    assert not torch.allclose(views[0], views[1])  # the K views still differ (dropout above the conv stack)


def test_unequal_lengths_give_the_encoders_own_output(tiny_raw, wav2vec2):
    exp = _experiment(tiny_raw, wav2vec2, pooling="mean")
    enc = exp.model.encoders["audio"].train()
    rng = np.random.default_rng(0)
    batch = enc.collate([rng.standard_normal(n).astype(np.float32) for n in (4003, 16000, 9000)])
    with torch.no_grad():
        enc.eval()
        parts = enc.frozen_part(batch)
        enc.train()
    assert [p["conv"].shape[0] for p in parts] == [int(enc.model._get_feat_extract_output_lengths(torch.tensor(n))) for n in (4003, 16000, 9000)]
    a = _same_rng(lambda: enc(batch))
    b = _same_rng(lambda: enc.trainable_part(enc.collate_frozen(parts)))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert "forward" not in vars(enc.model.feature_extractor)  # the stand-in for the conv stack is gone


def test_whisper_caches_its_conv_front_end_and_steps_equal_the_full_encoders(tiny_raw, whisper):
    """hf_whisper with freeze: feature_encoder: conv1/conv2 per item, cached; a training step (K = 2, output
    dropout on) on the cached outputs equals the full encoder's, and unequal (odd) lengths agree too."""
    fc._MEMO.clear()
    exp = _experiment(tiny_raw, whisper, encoder="hf_whisper", output_dropout=0.1)
    assert fc.partial_modalities(exp.model.encoders) == ["audio"]
    _assert_cached_step_equals_full(exp, lambda name: ".conv1." in name or ".conv2." in name)
    enc = exp.model.encoders["audio"]
    rng = np.random.default_rng(0)
    batch = enc.collate([rng.standard_normal(n).astype(np.float32) for n in (1650, 4000, 2890)])  # odd and even frame counts
    with torch.no_grad():
        enc.eval()
        parts = enc.frozen_part(batch)
        torch.testing.assert_close(enc.trainable_part(enc.collate_frozen(parts)), enc(batch), rtol=1e-5, atol=1e-6)
    assert [p["conv"].shape[0] for p in parts] == [(int(n) + 1) // 2 for n in batch["frame_mask"].sum(1)]


def test_disk_entries_are_recomputed_when_corrupt_and_never_shared_across_models(tiny_raw, wav2vec2, tmp_path):
    fc._MEMO.clear()
    exp = _experiment(tiny_raw, wav2vec2)
    cpu, store = torch.device("cpu"), tmp_path / "parts"
    first = cache_frozen_features(exp.splits, exp.model.encoders, "cache", cpu, 8, RecordingReporter(), store="disk", directory=store)
    files = sorted(store.rglob("*.safetensors"))
    assert len(files) == 24 and len({f.parent for f in files}) == 1  # one per item, one directory per encoder
    fc._MEMO.clear()
    files[0].write_bytes(b"damaged")
    lines = RecordingReporter()
    again = cache_frozen_features(exp.splits, exp.model.encoders, "cache", cpu, 8, lines, store="disk", directory=store)
    assert any("1 cache entry could not be used and were computed again" in line for line in lines.lines)
    for name in ("train", "val", "test"):
        for a, b in zip(getattr(again, name).parts["audio"], getattr(first, name).parts["audio"]):
            torch.testing.assert_close(a["conv"], b["conv"], rtol=0, atol=1e-6)
    # another front end (other frozen weights), or other options: another key, nothing reused
    fc._MEMO.clear()
    other = _experiment(tiny_raw, wav2vec2, pooling="last")
    with torch.no_grad():
        other.model.encoders["audio"].model.feature_extractor.conv_layers[0].conv.weight.add_(0.1)
    rows, reused = fc.compute_parts(other.model.encoders["audio"], other.splits.train, "audio", cpu, 8, ProgressReporter(quiet=True), fc.DiskStore(store))
    assert reused == 0 and not torch.allclose(rows[0]["conv"], first.train.parts["audio"][0]["conv"])
    # the trainable weights do not enter the key: a trained encoder reuses its cached front end
    fc._MEMO.clear()
    with torch.no_grad():
        next(p for p in exp.model.encoders["audio"].parameters() if p.requires_grad).add_(1.0)
    _, reused = fc.compute_parts(exp.model.encoders["audio"], exp.splits.train, "audio", cpu, 8, ProgressReporter(quiet=True), fc.DiskStore(store))
    assert reused == len(exp.splits.train)


class _NoisyFront(Encoder):
    """A fake encoder whose frozen part would have dropout inside."""

    frozen_part_dropout = True

    def __init__(self):
        super().__init__(Encoder.Options())
        self.front, self.top = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        self.front.requires_grad_(False)

    def has_frozen_part(self) -> bool:
        return True


def test_a_frozen_part_with_dropout_needs_the_opt_in():
    encoders = {"audio": _NoisyFront()}
    with pytest.raises(ConfigError, match="frozen part of the audio encoder has dropout inside.*train.frozen_part_dropout: eval"):
        check_frozen_features("cache", encoders)
    assert check_frozen_features("cache", encoders, "eval") == []  # opted in: cached, nothing fully frozen
    assert check_frozen_features("recompute", encoders) == []


def _frozen_below(model, n: int, stable: bool) -> list[torch.nn.Module]:
    """The modules of a wav2vec2-family model with dropout at or below layer n (no SpecAugment in these models)."""
    enc = model.encoder
    return [model.feature_projection, enc.dropout, *enc.layers[:n]] + ([] if stable else [enc.layer_norm])


@pytest.mark.parametrize("family,layers,extra", [
    ("wav2vec2_group", "last", {}), ("hubert_group", "last", {}), ("wav2vec2", "last", {}), ("wav2vec2", 2, {}), ("wavlm", "last", {}), ("wavlm_group", 2, {}),
    ("wav2vec2_3_layers", 2, {}), ("wav2vec2_group", "last", {"gradient_checkpointing": True, "pooling": "last"}),
])
def test_freeze_layers_caches_the_first_layers_and_steps_equal_the_full_encoders(tiny_raw, audio_models, family, layers, extra):
    """hf_audio with freeze_layers: 1 of 2: each item's hidden state after layer 1 is cached and the K passes run
    layer 2 (+ the final LayerNorm of stable-layer-norm models) only (with 3 layers and layers: 2, layer 2's output,
    before the final LayerNorm, is pooled; layer 3 is frozen and unused). A training step (K = 2, dropout on in the
    trainable layer, items of unequal lengths) equals the full encoder's step with its frozen part in eval mode."""
    fc._MEMO.clear()
    exp = _experiment(tiny_raw, audio_models[family], freeze="none", freeze_layers=1, layers=layers, **{"pooling": "mean", **extra},
                      train={"frozen_part_dropout": "eval"})
    enc = exp.model.encoders["audio"]
    assert enc.cached_layers == 1 and enc.frozen_part_dropout  # hidden_dropout etc. act in layer 1: the opt-in is needed
    hf = enc.model
    cached = _assert_cached_step_equals_full(exp, lambda name: name.startswith("encoders.audio.model.") and (
                                                 ".layers.0." in name or "feature_" in name or "pos_conv" in name),
                                             eval_in_full=_frozen_below(hf, 1, hf.config.do_stable_layer_norm),
                                             splits=_unequal_audio(exp.splits))
    frames = cached["audio"]["frames"]
    assert cached["audio"]["hidden"].shape[-1] == enc.output_dim and len(set(frames.tolist())) > 1
    views = _same_rng(lambda: exp.model.views(cached))["audio"]
    assert not torch.allclose(views[0], views[1])  # the K views still differ (dropout in layer 2)


@pytest.mark.parametrize("encoder", ["hf_audio", "hf_whisper"])
def test_freeze_layers_without_the_opt_in_caches_the_conv_front_end_only(tiny_raw, audio_models, whisper, encoder):
    """Without train.frozen_part_dropout: eval, frozen layers with dropout are not cached: the audio encoders cache
    their conv front end (no dropout there), say so with the opt-in, and the step equals the full encoder's
    (dropout on in the frozen layers too). Its cache entries are not those of the layer cache."""
    fc._MEMO.clear()
    model = whisper if encoder == "hf_whisper" else audio_models["wav2vec2_group"]
    extra = {"dropout": 0.1} if encoder == "hf_whisper" else {}
    exp = _experiment(tiny_raw, model, freeze="none", encoder=encoder, freeze_layers=1, **extra)
    enc = exp.model.encoders["audio"]
    assert enc.cached_layers == 0 and not enc.frozen_part_dropout
    lines = RecordingReporter()
    cache_frozen_features(exp.splits, exp.model.encoders, "cache", torch.device("cpu"), 8, lines)
    notes = [line for line in lines.lines if "the frozen part cached" in line]
    assert len(notes) == 1 and "conv" in notes[0] and "not the first 1 layers" in notes[0] and "frozen_part_dropout: eval" in notes[0]
    cached = _assert_cached_step_equals_full(exp, lambda name: "feature_extractor" in name or ".conv" in name, splits=_unequal_audio(exp.splits))
    assert "conv" in cached["audio"]
    layered = _experiment(tiny_raw, model, freeze="none", encoder=encoder, freeze_layers=1, **extra, train={"frozen_part_dropout": "eval"})
    assert layered.model.encoders["audio"].cached_layers == 1
    assert fc._digest_module(layered.model.encoders["audio"], True) != fc._digest_module(enc, True)  # never each other's entries


def test_text_freeze_layers_without_the_opt_in_is_refused(tiny_raw, bert):
    """hf_text has no frozen part below its embeddings' dropout: without the opt-in, the cache is refused, saying why."""
    with pytest.raises(ConfigError, match=r"frozen part of the text encoder has dropout inside.*\(text \(HFText\): each item's "
                                          r"token-level hidden states after layer 1 of 2.*frozen_part_dropout: eval"):
        _experiment(tiny_raw, bert, freeze="none", encoder="hf_text", modality="text", freeze_layers=1)


def test_freeze_layers_falls_back_to_the_conv_cache_with_a_logged_reason(tiny_raw, audio_models):
    """layers: weighted (every hidden state) caches the conv stack only, says why once, needs no opt-in (no
    dropout there) and still gives the full encoder's step."""
    fc._MEMO.clear()
    why = "layers: weighted"
    exp = _experiment(tiny_raw, audio_models["wav2vec2_group"], freeze="none", freeze_layers=1, layers="weighted")
    enc = exp.model.encoders["audio"]
    assert enc.cached_layers == 0 and not enc.frozen_part_dropout
    lines = RecordingReporter()
    cache_frozen_features(exp.splits, exp.model.encoders, "cache", torch.device("cpu"), 8, lines)
    notes = [line for line in lines.lines if "the frozen part cached" in line]
    assert len(notes) == 1 and "conv feature encoder's output" in notes[0] and why in notes[0], lines.lines
    _assert_cached_step_equals_full(exp, lambda name: "feature_extractor" in name, splits=_unequal_audio(exp.splits))


def test_the_cache_key_follows_freeze_layers(tiny_raw, audio_models):
    """A cache written with freeze_layers: 1 is never read for another freeze_layers (nor the conv-only cache)."""
    fc._MEMO.clear()
    cpu, quiet = torch.device("cpu"), ProgressReporter(quiet=True)
    one = _experiment(tiny_raw, audio_models["wav2vec2_group"], freeze="none", freeze_layers=1, train={"frozen_part_dropout": "eval"})
    rows, _ = fc.compute_parts(one.model.encoders["audio"], one.splits.train, "audio", cpu, 8, quiet)
    for options in ({"freeze_layers": 2, "output_dropout": 0.1}, {"freeze": "feature_encoder"}):
        other = _experiment(tiny_raw, audio_models["wav2vec2_group"], **{"freeze": "none", **options}, train={"frozen_part_dropout": "eval"})
        again, reused = fc.compute_parts(other.model.encoders["audio"], other.splits.train, "audio", cpu, 8, quiet)
        assert reused == 0
        assert set(again[0]) != set(rows[0]) if "conv" in again[0] else not torch.equal(again[0]["hidden"], rows[0]["hidden"])


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return _save_bert(tmp_path_factory.mktemp("hf") / "bert")


@pytest.fixture(scope="module")
def roberta(tmp_path_factory, bert) -> str:
    """A tiny RoBERTa (positions counted from its padding id, as RoBERTa does) with the tiny BERT's tokenizer."""
    path = tmp_path_factory.mktemp("hf") / "roberta"
    transformers.AutoTokenizer.from_pretrained(bert).save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=37, max_position_embeddings=66, pad_token_id=0)
    transformers.RobertaModel(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("family,pooling,layers", [("bert", "mean", "last"), ("bert", "cls", 2), ("bert", "last", "last"),
                                                   ("roberta", "mean", "last")])
def test_text_freeze_layers_caches_the_first_layers_and_steps_equal_the_full_encoders(tiny_raw, request, family, pooling, layers):
    """hf_text (BERT, RoBERTa) with freeze_layers: 1 of 2: each text's token states after layer 1 are cached, the K passes run
    layer 2. A training step (K = 2, dropout on in layer 2; texts of 6-12 words, so padded) equals the full encoder's
    step with its embeddings and layer 1 in eval mode."""
    fc._MEMO.clear()
    exp = _experiment(tiny_raw, request.getfixturevalue(family), freeze="none", encoder="hf_text", modality="text", freeze_layers=1, pooling=pooling,
                      layers=layers, train={"frozen_part_dropout": "eval"})
    enc = exp.model.encoders["text"]
    assert fc.partial_modalities(exp.model.encoders) == ["text"] and enc.frozen_part_dropout
    hf = enc.model
    cached = _assert_cached_step_equals_full(exp, lambda name: name.startswith("encoders.text.model.") and (
        ".layer.0." in name or "embeddings" in name), modality="text", eval_in_full=[hf.embeddings, hf.encoder.layer[0]])
    assert len(set(cached["text"]["tokens"].tolist())) > 1  # unequal lengths in the batch
    views = _same_rng(lambda: exp.model.views(cached))["text"]
    assert not torch.allclose(views[0], views[1])


def test_text_without_a_cacheable_part_says_why(tiny_raw, bert):
    """layers: weighted needs every hidden state: no frozen part, and cache (with nothing else to cache) says why."""
    with pytest.raises(ConfigError, match=r"text \(HFText\): nothing \(freeze_layers: 1 of 2, but layers: weighted"):
        _experiment(tiny_raw, bert, freeze="none", encoder="hf_text", modality="text", freeze_layers=1, layers="weighted")


@pytest.mark.parametrize("layers", ["last", 2])
def test_whisper_freeze_layers_caches_the_first_layers_and_steps_equal_the_full_encoders(tiny_raw, whisper, layers):
    """hf_whisper with freeze_layers: 1 of 2 (dropout 0.1 everywhere): each item's state after layer 1 is cached and the
    K passes run layer 2 and the final LayerNorm. A training step on items of unequal lengths equals the full encoder's
    step with its frozen part in eval mode (layer 1 in eval, no dropout after the positions)."""
    fc._MEMO.clear()
    exp = _experiment(tiny_raw, whisper, freeze="none", encoder="hf_whisper", freeze_layers=1, dropout=0.1, layers=layers,
                      train={"frozen_part_dropout": "eval"})
    enc = exp.model.encoders["audio"]
    assert enc.cached_layers == 1 and enc.frozen_part_dropout
    enc.model.dropout = 0.0  # the dropout after the positions: below layer 1, so in eval mode (off) in the cached part
    cached = _assert_cached_step_equals_full(exp, lambda name: name.startswith("encoders.audio.model.") and (
        ".layers.0." in name or ".conv" in name), eval_in_full=[enc.model.layers[0]], splits=_unequal_audio(exp.splits))
    assert "hidden" in cached["audio"] and len(set(cached["audio"]["steps"].tolist())) > 1
    views = _same_rng(lambda: exp.model.views(cached))["audio"]
    assert not torch.allclose(views[0], views[1])  # dropout in layer 2
