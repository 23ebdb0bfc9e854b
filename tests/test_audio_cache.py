"""train.audio_cache: decoded audio resampled to the encoder's rate, in memory or on disk."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings

import multiturbo_iemocap
import numpy as np
import pydantic
import pytest
import soundfile as sf
from multiturbo_iemocap import IemocapDataset, IemocapOptions, write_mini_iemocap

from multiturbo.audio import Waveform, to_rate
from multiturbo.audio_cache import CachedAudioSplit, cache_splits, clear_memory_cache, encoder_rates
from multiturbo.config.schema import TrainConfig
from multiturbo.dataset import Sample, Splits

FILE_RATE, RATE = 44100, 16000


@pytest.fixture(autouse=True)
def _empty_process_memory():
    """Each test starts with an empty process-wide memory cache (it outlives the runs of a process)."""
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap44k")
    write_mini_iemocap(root, sessions=(1, 2), utterances_per_dialog=7, seconds=0.1, sample_rate=FILE_RATE)
    return root


def split_of(root):
    return IemocapDataset(IemocapOptions(root=root, sessions=[1, 2])).splits(0).train


def expected(split, i):
    s = split[i]
    return to_rate(s.inputs["audio"], RATE), s


def assert_same(cached: Sample, split, i):
    audio, s = expected(split, i)
    w = cached.inputs["audio"]
    assert isinstance(w, Waveform) and w.sample_rate == RATE and w.samples.dtype == np.float32
    np.testing.assert_array_equal(w.samples, audio)  # bit for bit
    np.testing.assert_array_equal(to_rate(w, RATE), audio)  # what the encoder computes from it
    assert cached.inputs["text"] == s.inputs["text"] and list(cached.inputs) == list(s.inputs)
    assert cached.label == s.label and dict(cached.meta) == dict(s.meta)


def forbid_reading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("an audio file was read")

    monkeypatch.setattr(multiturbo_iemocap, "load_audio", boom)
    monkeypatch.setattr(sf, "read", boom)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_items_equal_uncached_and_second_pass_reads_no_file(root, tmp_path, monkeypatch, mode):
    split = split_of(root)
    cached = CachedAudioSplit(split, rates={"audio": RATE}, mode=mode, directory=tmp_path / "c")
    first = [cached[i] for i in range(len(cached))]
    for i, s in enumerate(first):
        assert_same(s, split, i)
    assert cached.stats["misses"] == len(split)
    reference = [expected(split, i)[0] for i in range(len(split))]
    forbid_reading(monkeypatch)
    for i in range(len(cached)):
        s = cached[i]
        np.testing.assert_array_equal(s.inputs["audio"].samples, reference[i])
        assert s.inputs["text"] == first[i].inputs["text"] and s.label == first[i].label
    assert cached.stats["hits"] == len(split)


def test_the_memory_cache_is_shared_by_the_runs_of_one_process(root, tmp_path, monkeypatch):
    """compare / cv / tune build the data set again for every run: keyed items are decoded once per process."""
    split = split_of(root)
    first = CachedAudioSplit(split, rates={"audio": RATE}, mode="memory")
    _ = [first[i] for i in range(len(first))]
    forbid_reading(monkeypatch)
    again = CachedAudioSplit(split_of(root), rates={"audio": RATE}, mode="memory")  # another run's data set
    for i in range(len(again)):
        item = again[i]
        np.testing.assert_array_equal(item.inputs["audio"].samples, first[i].inputs["audio"].samples)
        assert item.label == split.labels[i] and dict(item.meta) == dict(split.meta[i])
    assert again.stats == {"hits": len(split), "partial_hits": 0, "misses": 0, "recomputed": 0}
    other_rate = CachedAudioSplit(split_of(root), rates={"audio": 8000}, mode="memory")
    with pytest.raises(AssertionError, match="an audio file was read"):
        other_rate[0]  # another rate is another item: decoded again (here: forbidden)


def test_disk_cache_survives_a_new_instance_and_a_new_process(root, tmp_path, monkeypatch):
    d = tmp_path / "c"
    split = split_of(root)
    writer = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=d)
    _ = [writer[i] for i in range(len(writer))]
    files = sorted(d.rglob("*.f32"))
    assert len(files) == len(split)
    code = (
        "import multiturbo_iemocap, soundfile\n"
        "from multiturbo.audio_cache import CachedAudioSplit\n"
        "def boom(*a, **k): raise AssertionError('read')\n"
        "multiturbo_iemocap.load_audio = boom; soundfile.read = boom\n"
        f"split = multiturbo_iemocap.IemocapDataset(multiturbo_iemocap.IemocapOptions(root={str(root)!r}, sessions=[1, 2])).splits(0).train\n"
        f"c = CachedAudioSplit(split, rates={{'audio': {RATE}}}, mode='disk', directory={str(d)!r})\n"
        "[c[i] for i in range(len(c))]\n"
        "print(c.stats['hits'], c.stats['misses'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == [str(len(split)), "0"]
    fresh = CachedAudioSplit(split_of(root), rates={"audio": RATE}, mode="disk", directory=d)
    for i in range(len(fresh)):
        assert_same(fresh[i], split, i)
    assert sorted(d.rglob("*.f32")) == files


def test_another_rate_is_another_entry(root, tmp_path):
    split = split_of(root)
    a = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path)
    b = CachedAudioSplit(split, rates={"audio": 8000}, mode="disk", directory=tmp_path)
    assert a[0].inputs["audio"].sample_rate == RATE
    w = b[0].inputs["audio"]
    assert w.sample_rate == 8000 and b.stats["misses"] == 1
    np.testing.assert_array_equal(w.samples, to_rate(split[0].inputs["audio"], 8000))


def test_a_changed_file_invalidates_its_entry(tmp_path):
    root = tmp_path / "data"
    write_mini_iemocap(root, sessions=(1, 2), utterances_per_dialog=7, seconds=0.1, sample_rate=FILE_RATE)
    split = split_of(root)
    c = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path / "c")
    _ = [c[i] for i in range(len(c))]
    wav = split._records[0].wav
    new = np.linspace(-0.5, 0.5, int(0.15 * FILE_RATE), dtype=np.float32)  # another size, another mtime
    sf.write(wav, new, FILE_RATE)
    c2 = CachedAudioSplit(split_of(root), rates={"audio": RATE}, mode="disk", directory=tmp_path / "c")
    s = c2[0]
    assert c2.stats["misses"] == 1
    np.testing.assert_array_equal(s.inputs["audio"].samples, to_rate(Waveform(sf.read(wav, dtype="float32")[0], FILE_RATE), RATE))
    _ = [c2[i] for i in range(1, len(c2))]
    assert c2.stats["hits"] == len(c2) - 1  # the others are still valid


def test_same_size_but_newer_file_is_recomputed(tmp_path):
    root = tmp_path / "data"
    write_mini_iemocap(root, sessions=(1, 2), utterances_per_dialog=7, seconds=0.1, sample_rate=FILE_RATE)
    split = split_of(root)
    c = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path / "c")
    old = c[0].inputs["audio"].samples
    wav = split._records[0].wav
    data, _ = sf.read(wav, dtype="float32")
    sf.write(wav, -data, FILE_RATE)
    st = os.stat(wav)
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    c2 = CachedAudioSplit(split_of(root), rates={"audio": RATE}, mode="disk", directory=tmp_path / "c")
    np.testing.assert_array_equal(c2[0].inputs["audio"].samples, to_rate(Waveform(-data, FILE_RATE), RATE))
    assert not np.array_equal(c2[0].inputs["audio"].samples, old)


@pytest.mark.parametrize("damage", [b"", b"not a cache entry", "truncate", "flip"])
def test_an_unreadable_entry_is_recomputed_with_a_warning(root, tmp_path, damage):
    split = split_of(root)
    c = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path)
    _ = c[0]
    (entry,) = tmp_path.rglob("*.f32")
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[-5] ^= 0x10  # a sample's bits: the checksum catches it
    entry.write_bytes(data[:100] if damage == "truncate" else data if damage == "flip" else damage)
    c2 = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path)
    with pytest.warns(UserWarning, match="cannot be read.*recomputing"):
        s = c2[0]
    assert_same(s, split, 0)
    assert c2.stats["recomputed"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path)[0], split, 0)  # rewritten


def test_an_unwritable_directory_warns_and_goes_on(root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    split = split_of(root)
    c = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=blocker / "cache")
    with pytest.warns(UserWarning, match="cannot write") as record:
        assert_same(c[0], split, 0)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert_same(c[1], split, 1)


def test_items_with_other_inputs_keep_the_audio_only(tmp_path):
    """An image input is not stored: a hit loads the item but skips the resampling."""
    from multiturbo.dataset import LazySplit

    sf.write(tmp_path / "a.wav", np.sin(np.arange(4410, dtype=np.float32)), FILE_RATE)
    split = LazySplit([{"wav": tmp_path / "a.wav", "label": 1}], _load_with_image, _label, _meta)
    c = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path / "c")
    first = c[0]
    second = c[0]
    assert c.stats == {"hits": 0, "partial_hits": 1, "misses": 1, "recomputed": 0}
    np.testing.assert_array_equal(first.inputs["audio"].samples, second.inputs["audio"].samples)
    np.testing.assert_array_equal(second.inputs["image"], np.ones((2, 2, 3), np.uint8))
    assert second.inputs["audio"].sample_rate == RATE


def _load_with_image(r):
    from multiturbo.audio import load_audio

    return Sample({"audio": load_audio(r["wav"]), "image": np.ones((2, 2, 3), np.uint8)}, r["label"], {"id": 0})


def _label(r):
    return r["label"]


def _meta(r):
    return {"id": 0}


def test_splits_in_memory_and_bare_arrays():
    rng = np.random.default_rng(0)
    wave = Waveform(rng.standard_normal(4410).astype(np.float32), FILE_RATE)
    bare = rng.standard_normal(1600).astype(np.float32)
    items = [Sample({"audio": wave, "text": "a"}, 0), Sample({"audio": bare, "text": "b"}, 1), Sample({"audio": None, "text": "c"}, 0)]
    c = CachedAudioSplit(items, rates={"audio": RATE}, mode="disk")  # a list: per-process memory, nothing written
    np.testing.assert_array_equal(c[0].inputs["audio"].samples, to_rate(wave, RATE))
    assert c[1].inputs["audio"] is bare and c[2].inputs["audio"] is None
    assert c[0] is c[0] and c[-1].inputs["text"] == "c" and len(c[0:2]) == 2
    with pytest.raises(IndexError):
        c[3]
    assert pickle.loads(pickle.dumps(c))._memory == {}  # workers start empty


def test_cache_splits_wraps_only_when_asked_and_useful(root):
    class Enc:
        def __init__(self, rate):
            self.input_sample_rate = rate

    s = split_of(root)
    splits = Splits(s, s, s)
    assert cache_splits(splits, {"audio": Enc(RATE)}, "off") is splits
    assert cache_splits(splits, {"text": Enc(None)}, "disk") is splits
    wrapped = cache_splits(splits, {"audio": Enc(RATE), "text": Enc(None)}, "memory")
    assert isinstance(wrapped.train, CachedAudioSplit) and wrapped.val.rates == {"audio": RATE}
    assert wrapped.train.labels == s.labels


def test_audio_encoders_declare_their_rate():
    from multiturbo.plugins import get_registries

    enc = get_registries().encoders
    logmel = enc.get("logmel_cnn")
    text = enc.get("hashed_transformer")
    rates = encoder_rates({"audio": logmel(logmel.Options(sample_rate=22050)), "text": text(text.Options())})
    assert rates == {"audio": 22050}


def test_config_fields():
    assert TrainConfig().audio_cache == "off" and TrainConfig().audio_cache_dir is None
    assert TrainConfig(audio_cache="disk", audio_cache_dir="/tmp/x").audio_cache == "disk"
    with pytest.raises(pydantic.ValidationError, match="audio_cache"):
        TrainConfig(audio_cache="ram")
    with pytest.raises(pydantic.ValidationError, match="audio_cache_dir"):
        TrainConfig(audio_cache_dir="")


def test_tiny_run_with_the_disk_cache_matches_the_uncached_run(tmp_path, tiny_raw):
    from multiturbo.config import check_config, validate_config
    from multiturbo.run import run_experiment

    root = tmp_path / "data"
    write_mini_iemocap(root, sessions=(1, 2), seconds=0.1, sample_rate=FILE_RATE)  # 40 utterances
    tiny_raw["data"] = {"name": "iemocap", "options": {"root": str(root), "sessions": [1, 2]}}
    tiny_raw["modalities"]["audio"]["options"]["sample_rate"] = RATE
    tiny_raw["train"]["epochs"] = 2
    metrics = {}
    for mode in ("off", "disk"):
        raw = {**tiny_raw, "train": {**tiny_raw["train"], "audio_cache": mode, "audio_cache_dir": str(tmp_path / "cache")}}
        metrics[mode] = run_experiment(check_config(validate_config(raw)), tmp_path / mode)
    assert len(list((tmp_path / "cache").rglob("*.f32"))) == 40  # every item of the three splits
    assert metrics["off"] == metrics["disk"]
    assert json.loads((tmp_path / "disk" / "metrics.json").read_text())["ua"] == metrics["off"]["ua"]


def test_hf_audio_encoders_declare_their_rate(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    from multiturbo_hf import HFAudio, HFText, HFWhisper
    from tiny_hf import RATE as HF_RATE
    from tiny_hf import build_tiny_models

    models = build_tiny_models(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoders = {m: cls(cls.Options(model=models[m])) for m, cls in (("wav2vec2", HFAudio), ("whisper", HFWhisper), ("bert", HFText))}
    assert encoder_rates(encoders) == {"wav2vec2": HF_RATE, "whisper": HF_RATE}


def test_loader_workers_share_the_disk_cache(root, tmp_path):
    import torch

    from multiturbo.data import Collator, make_loader
    from multiturbo.plugins import get_registries

    logmel = get_registries().encoders.get("logmel_cnn")
    collator = Collator({"audio": logmel(logmel.Options(sample_rate=RATE))}, num_classes=4)
    split = split_of(root)

    def batches(data):
        loader = make_loader(data, collator, batch_size=4, shuffle=True, seed=1, num_workers=2, pin_memory=False)
        return [b.inputs["audio"]["waveform"] for b in loader]

    plain = batches(split)
    for _ in range(2):  # cold, then warm
        cached = batches(CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path))
        assert len(cached) == len(plain) and all(torch.equal(a, b) for a, b in zip(plain, cached))
    assert len(list(tmp_path.rglob("*.f32"))) == len(split) and not list(tmp_path.rglob("*.tmp"))


def test_manifest_items_are_served_from_the_disk_cache(tmp_path, monkeypatch):
    import multiturbo_manifest
    from multiturbo_manifest import ManifestDataset, ManifestOptions

    rng = np.random.default_rng(0)
    lines = ["wav,text,label"]
    for i in range(12):
        sf.write(tmp_path / f"{i}.wav", rng.uniform(-0.5, 0.5, 2205 + 10 * i).astype(np.float32), FILE_RATE)
        lines.append(f"{i}.wav,item {i},{'ab'[i % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    options = ManifestOptions(path=tmp_path / "m.csv", modalities={"audio": {"column": "wav", "kind": "audio"}, "text": {"column": "text", "kind": "text"}})
    split = ManifestDataset(options).splits().train
    c = CachedAudioSplit(split, rates={"audio": RATE}, mode="disk", directory=tmp_path / "c")
    for i in range(len(c)):
        assert_same(c[i], split, i)
    reference = [expected(split, i)[0] for i in range(len(split))]
    monkeypatch.setattr(multiturbo_manifest, "LOADERS", {})  # any load would fail now
    forbid_reading(monkeypatch)
    c2 = CachedAudioSplit(ManifestDataset(options).splits().train, rates={"audio": RATE}, mode="disk", directory=tmp_path / "c")
    for i in range(len(c2)):
        s = c2[i]
        np.testing.assert_array_equal(s.inputs["audio"].samples, reference[i])
        assert s.inputs["text"] == split._records[i]["inputs"]["text"] and s.meta == split.meta[i]
    assert c2.stats["hits"] == len(split)


def test_resuming_may_change_the_cache_setting():
    from multiturbo.config import config_differences as _config_differences

    saved = {"train": {"audio_cache": "off", "audio_cache_dir": None, "lr": 0.1}}
    assert _config_differences(saved, {"train": {"audio_cache": "disk", "audio_cache_dir": "/c", "lr": 0.1}}) == []
