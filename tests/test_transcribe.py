"""--transcribe: a missing text modality filled from the audio by speech recognition (multiturbo.transcribe)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_inference import write_manifest

import multiturbo
from multiturbo.cli import cli
from multiturbo.errors import MultiturboError
from multiturbo.inference import read_inputs
from multiturbo.rundir import load_run
from multiturbo.transcribe import TranscriptCache, transcript_modalities, with_transcripts, word_error_rate
from multiturbo.transcriber import Transcriber
from conftest import import_tiny_hf




class CountingTranscriber(Transcriber):
    """Transcribes every waveform as "hello world" (or "" for silence), counting the waveforms it sees."""

    def __init__(self, model: str = "fake", **kwargs):
        super().__init__(model, **kwargs)
        self.seen = 0

    def transcribe(self, audio):
        self.seen += len(audio)
        return ["" if not np.any(a) else "hello world" for a in audio]


@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run)


def _without_text(manifest: Path) -> Path:
    """The manifest with its text column removed (deployed where only the audio exists)."""
    rows = list(csv.DictReader(manifest.open()))
    out = manifest.with_name("audio_only.csv")
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "text"])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k != "text"} for r in rows)
    return out


def test_missing_text_is_filled_and_cached(run, tmp_path):
    inputs = read_inputs(run, _without_text(write_manifest(run, tmp_path / "d", labels=False)))
    assert all("text" not in item for item in inputs.items)
    asr, cache_path = CountingTranscriber(), tmp_path / "cache.json"
    filled, texts = with_transcripts(run, inputs, asr, cache=TranscriptCache(cache_path))
    assert len(texts) == len(inputs) and asr.seen == len(inputs)
    assert all(item["text"] == "hello world" for item in filled.items)
    assert all("text" not in item for item in inputs.items)  # the inputs given are left as they were
    assert len(json.loads(cache_path.read_text())) == len(inputs)
    again, _ = with_transcripts(run, inputs, asr, cache=TranscriptCache(cache_path))
    assert asr.seen == len(inputs) and again.items == filled.items  # all from the cache
    other = CountingTranscriber("another-model")
    with_transcripts(run, inputs, other, cache=TranscriptCache(cache_path))
    assert other.seen == len(inputs)  # the model id is part of the key


def test_a_manifest_without_text_needs_no_missing_modality_support(tiny_run, run, tmp_path, monkeypatch):
    """With a head that cannot handle missing modalities, a manifest without a text column is still
    read when --transcribe will fill the text (and refused without it)."""
    manifest = _without_text(write_manifest(run, tmp_path / "h", labels=False))
    trained = multiturbo.load(tiny_run, transcript_cache=tmp_path / "t.json")
    monkeypatch.setattr(trained.model.head, "handles_missing", False, raising=False)
    with pytest.raises(MultiturboError, match=r"no column for the modality 'text'"):
        trained.predict(manifest)
    rows = trained.predict(manifest, transcribe=CountingTranscriber())
    assert len(rows) == len(read_inputs(run, manifest))


def test_a_cache_that_cannot_be_written_is_a_warning(run, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    with pytest.warns(UserWarning, match=r"cannot be written.*--transcript-cache"):
        filled, texts = with_transcripts(run, read_inputs(run, [{"audio": np.ones(800, np.float32)}]), CountingTranscriber(), cache=TranscriptCache(blocked / "cache.json"))
    assert filled.items[0]["text"] == "hello world"


def test_a_changed_file_is_transcribed_again(run, tmp_path):
    manifest = _without_text(write_manifest(run, tmp_path / "c", labels=False))
    inputs = read_inputs(run, manifest)
    key = TranscriptCache.key(inputs.items[0]["audio"], "m", inputs.base)
    (manifest.parent / inputs.items[0]["audio"]).write_bytes((manifest.parent / inputs.items[1]["audio"]).read_bytes() + b"\0" * 8)
    assert TranscriptCache.key(inputs.items[0]["audio"], "m", inputs.base) != key


def test_gold_text_is_kept_for_predict_and_replaced_for_evaluate(run):
    items = [{"audio": (np.ones(800, np.float32), 4000), "text": "gold words"}, {"audio": np.zeros(1000, np.float32)}, {"audio": np.ones(900, np.float32), "text": " "}]
    inputs = read_inputs(run, items)
    filled, texts = with_transcripts(run, inputs, CountingTranscriber())
    assert [it["text"] for it in filled.items] == ["gold words", "", "hello world"]  # silence: an empty transcript is valid text
    assert sorted(texts) == [1, 2]
    replaced, _ = with_transcripts(run, inputs, CountingTranscriber(), replace_gold=True)
    assert [it["text"] for it in replaced.items] == ["hello world", "", "hello world"]
    probs = multiturbo.load(run.run_dir).predict_proba(items, transcribe=CountingTranscriber())
    assert probs.shape == (3, len(run.classes)) and np.isfinite(probs.numpy()).all()


def test_evaluate_reports_gold_and_asr_side_by_side_with_the_wer(tiny_run, run, tmp_path):
    pytest.importorskip("jiwer", reason="the word error rate needs jiwer (the asr extra)")
    manifest = write_manifest(run, tmp_path / "e")
    trained = multiturbo.load(tiny_run, transcript_cache=tmp_path / "t.json")
    metrics = trained.evaluate(manifest, transcribe=CountingTranscriber())
    gold = trained.evaluate(manifest)
    assert metrics["wa"] == gold["wa"] and set(metrics["asr"]) >= {"wa", "ua", "f1", "retrieval"}
    texts = [r["text"] for r in csv.DictReader(manifest.open())]
    assert metrics["transcription"]["wer"] == pytest.approx(word_error_rate(texts, ["hello world"] * len(texts)))
    assert metrics["transcription"]["n_transcribed"] == len(texts)


def test_word_error_rate():
    pytest.importorskip("jiwer", reason="the word error rate needs jiwer (the asr extra)")
    assert word_error_rate(["a b c d"], ["a b x d"]) == pytest.approx(0.25)
    assert word_error_rate(["a b", "c d"], ["", "c d"]) == pytest.approx(0.5)  # an empty transcript: every word deleted
    assert word_error_rate(["", "  "], ["x", "y"]) is None  # no gold words to compare with


def test_a_run_without_text_or_audio_is_a_clear_error(run):
    with pytest.raises(MultiturboError, match=r"has no text modality.*needs a run trained on both"):
        transcript_modalities(run, {"text": "image"})
    with pytest.raises(MultiturboError, match=r"has no audio modality"):
        transcript_modalities(run, {"audio": "image"})
    assert transcript_modalities(run) == ("audio", "text")


# -- the first-party Whisper transcriber (multiturbo_hf) ---------------------------------------------
@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return import_tiny_hf().save_whisper_asr(tmp_path_factory.mktemp("asr") / "whisper")


def test_whisper_transcribes_to_strings(whisper_dir, capfd):
    from multiturbo.transcribe import load_transcriber

    capfd.readouterr()
    asr = load_transcriber(whisper_dir)
    assert "Loading weights" not in capfd.readouterr().err  # transformers' bar is off while it loads, as for the encoders
    assert type(asr).__name__ == "WhisperTranscriber" and asr.model_id == str(Path(whisper_dir).resolve())
    texts = asr.transcribe([np.random.default_rng(0).normal(size=16000).astype(np.float32) * 0.1, np.zeros(4000, np.float32)])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_a_non_whisper_model_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    from multiturbo.transcribe import load_transcriber

    _save_bert = import_tiny_hf()._save_bert

    with pytest.raises(MultiturboError, match=r"it is a 'bert' model, not a Whisper one.*needs a Whisper speech-recognition model"):
        load_transcriber(_save_bert(tmp_path / "bert"))
    with pytest.raises(MultiturboError, match=r"no model config could be read"):
        load_transcriber(tmp_path / "nothing-here")
    with pytest.raises(MultiturboError, match=r"it has no usable tokenizer \(1 tokens for a vocabulary of 100\)"):
        load_transcriber(import_tiny_hf()._save_whisper(tmp_path / "whisper-without-tokenizer"))  # a Whisper saved for the hf_whisper encoder


def test_cli_predict_and_evaluate_with_a_tiny_whisper(whisper_dir, tiny_run, run, tmp_path):
    pytest.importorskip("jiwer", reason="the word error rate needs jiwer (the asr extra)")
    manifest = write_manifest(run, tmp_path / "m")
    cache = tmp_path / "cache.json"
    runner = CliRunner()
    res = runner.invoke(cli, ["predict", str(tiny_run), str(_without_text(manifest)), "--transcribe", whisper_dir,
                              "--transcript-cache", str(cache), "--output", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == len(json.loads(cache.read_text())) > 0
    res = runner.invoke(cli, ["evaluate", str(tiny_run), str(manifest), "--transcribe", whisper_dir,
                              "--transcript-cache", str(cache), "--output", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert "gold text" in res.output and "asr text" in res.output and "word error rate" in res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["transcription"]["wer"] >= 0 and "wa" in metrics["asr"]


def test_cli_transcribe_errors_are_one_paragraph(tiny_run, tmp_path):
    pytest.importorskip("transformers")
    _save_bert = import_tiny_hf()._save_bert
    res = CliRunner().invoke(cli, ["predict", str(tiny_run), "--input", f"audio={tmp_path}/x.wav", "--transcribe", _save_bert(tmp_path / "bert")])
    assert res.exit_code == 2 and "not a Whisper one" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(not os.environ.get("MULTITURBO_REAL_WHISPER"), reason="set MULTITURBO_REAL_WHISPER to a Whisper transformers directory with its tokenizer")
def test_a_real_whisper_loads_and_transcribes():
    from multiturbo.transcribe import load_transcriber

    asr = load_transcriber(os.environ["MULTITURBO_REAL_WHISPER"])
    texts = asr.transcribe([np.zeros(16000, np.float32), 0.05 * np.random.default_rng(0).standard_normal(24000).astype(np.float32)])
    assert len(texts) == 2 and all(isinstance(t, str) and len(t) < 400 for t in texts)
