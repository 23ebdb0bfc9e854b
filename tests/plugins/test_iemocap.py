"""Tests of the IEMOCAP data set plugin, on a generated miniature release."""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydantic
import pytest

import multiturbo_iemocap
from multiturbo.audio import Waveform
from multiturbo.config.load import check_config, validate_config
from multiturbo.dataset import Dataset, Sample
from multiturbo.errors import DataError
from multiturbo.run import run_experiment
from multiturbo.plugins import get_plugin_manager, get_registries, plugin_registered
from multiturbo_iemocap import IemocapDataset, speaker_of, write_mini_iemocap


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """Three sessions (6 speakers), 20 kept + 8 dropped utterances per session."""
    root = tmp_path_factory.mktemp("iemocap")
    written = write_mini_iemocap(root, sessions=(1, 2, 3))
    assert written == Counter({k: 12 for k in ("neu", "hap", "ang", "sad", "exc", "xxx", "fru")})
    return root


@pytest.fixture
def copy(mini, tmp_path) -> Path:
    """A private copy of the miniature release, for tests that break it."""
    return Path(shutil.copytree(mini, tmp_path / "copy"))


def make(root, **options) -> IemocapDataset:
    options.setdefault("sessions", [1, 2, 3])
    return IemocapDataset(IemocapDataset.Options(root=root, **options), seed=0)


def everything(ds: IemocapDataset, fold: int = 0):
    s = ds.splits(fold)
    return [s.train, s.val, s.test]


def test_speaker_of_utterance_name():
    assert speaker_of("Ses01F_impro01_F000") == "Ses01F"
    assert speaker_of("Ses01F_impro01_M012") == "Ses01M"
    assert speaker_of("Ses05M_script01_1_F003") == "Ses05F"


def test_counts_merge_and_dropped_labels(mini):
    ds = make(mini)
    assert isinstance(ds, Dataset)
    assert ds.classes == ["neu", "hap", "ang", "sad"] and ds.modalities == ("audio", "text")
    assert len(ds.utterances) == 60
    assert ds.counts == Counter({"hap": 24, "neu": 12, "ang": 12, "sad": 12})  # exc merged into hap
    assert ds.dropped == Counter({"xxx": 12, "fru": 12})
    hap = [u for u in ds.utterances if u.meta["emotion"] == "exc"]
    assert len(hap) == 12 and {u.label for u in hap} == {1}


def test_merge_and_classes_are_configurable(mini):
    ds = make(mini, classes=["neu", "hap", "ang", "sad", "exc", "fru"], merge={})
    assert ds.counts == Counter({c: 12 for c in ["neu", "hap", "ang", "sad", "exc", "fru"]})
    assert ds.dropped == Counter({"xxx": 12})
    ds = make(mini, classes=["ang", "sad"], merge={"fru": "ang"})
    assert ds.counts == Counter({"ang": 24, "sad": 12})
    assert ds.utterances[0].label in (0, 1)


def test_metadata_and_lazy_loading(mini, monkeypatch):
    ds = make(mini)
    test = ds.splits(0).test
    assert len(test.labels) == len(test) == len(test.meta) == 10
    assert Counter(test.labels) == Counter({1: 4, 0: 2, 2: 2, 3: 2})
    m = test.meta[0]
    assert m == {
        "utterance": "Ses01F_impro01_F000", "speaker": "Ses01F", "session": 1, "gender": "F",
        "dialog": "Ses01F_impro01", "emotion": "neu", "start": 1.0, "end": 2.5,
    }
    assert {x["speaker"] for x in test.meta} == {"Ses01F"}
    # Ses01M_script01_1_F000: the speaker comes from the utterance's last part, not the dialog name.
    assert any(x["dialog"] == "Ses01M_script01_1" for x in test.meta)

    calls = []
    monkeypatch.setattr(multiturbo_iemocap, "load_audio", lambda p: calls.append(p) or Waveform(np.zeros(4, np.float32), 16000))
    lazy = make(mini).splits(0).train
    assert calls == [] and len(lazy.labels) == 40  # labels without reading audio
    sample = lazy[3]
    assert len(calls) == 1 and calls[0].name == f"{lazy.meta[3]['utterance']}.wav"
    assert isinstance(sample, Sample) and sample.label == lazy.labels[3]


def test_items_hold_real_audio_and_text(mini):
    ds = make(mini)
    x = ds.splits(0).test[0]
    assert set(x.inputs) == {"audio", "text"}
    assert isinstance(x.inputs["audio"], Waveform) and x.inputs["audio"].sample_rate == 16000
    assert x.inputs["audio"].samples.shape == (3200,)
    assert x.inputs["text"] == "Okay i will be there at noon."
    sliced = ds.splits(0).test[:3]
    assert len(sliced) == 3 and sliced.labels == ds.splits(0).test.labels[:3]
    only_text = make(mini, modalities=["text"]).splits(0).test[0]
    assert set(only_text.inputs) == {"text"}


def _speakers(split) -> set[str]:
    return {m["speaker"] for m in split.meta}


def test_speaker10_folds_are_speaker_disjoint_and_rotate(mini):
    ds = make(mini)
    assert ds.num_folds == 6 and ds.speakers == ["Ses01F", "Ses01M", "Ses02F", "Ses02M", "Ses03F", "Ses03M"]
    tested = []
    for f in range(ds.num_folds):
        train, val, test = (_speakers(s) for s in everything(ds, f))
        assert test == {ds.speakers[f]} and val == {ds.speakers[(f + 1) % 6]}
        assert train == set(ds.speakers) - test - val and len(train) == 4
        assert sum(len(s) for s in everything(ds, f)) == 60
        tested += sorted(test)
    assert sorted(tested) == sorted(ds.speakers)  # every speaker is tested exactly once
    assert ds.splits() is ds.splits(0)  # fold 0 by default, cached


def test_session5_folds_leave_one_session_out(mini):
    ds = make(mini, protocol="session5")
    assert ds.num_folds == 3
    for f, s in enumerate([1, 2, 3]):
        train, val, test = (_speakers(x) for x in everything(ds, f))
        nxt = [2, 3, 1][f]
        assert test == {f"Ses0{s}F", f"Ses0{s}M"} and val == {f"Ses0{nxt}F"}
        assert train == set(ds.speakers) - test - val
        assert {m["session"] for m in ds.splits(f).test.meta} == {s}


def test_full_release_gives_ten_speaker_folds(tmp_path):
    write_mini_iemocap(tmp_path, sessions=range(1, 6), dialogs_per_session=1, utterances_per_dialog=7, seconds=0.01)
    ds = IemocapDataset(IemocapDataset.Options(root=tmp_path), seed=0)
    assert ds.num_folds == 10 and len(ds.speakers) == 10
    assert IemocapDataset(IemocapDataset.Options(root=tmp_path, protocol="session5")).num_folds == 5
    train, val, test = (_speakers(s) for s in everything(ds, 9))
    assert test == {"Ses05M"} and val == {"Ses01F"} and len(train) == 8


def test_absent_fold_is_a_clear_error(mini):
    ds = make(mini, sessions=[1, 2])
    assert ds.num_folds == 4
    for fold in (4, -1, "a"):
        with pytest.raises(DataError, match=r"fold .* does not exist.*4 folds"):
            ds.splits(fold)
    with pytest.raises(DataError, match="needs at least 3 speakers"):
        make(mini, sessions=[1])


def test_missing_root_and_session(mini, tmp_path):
    with pytest.raises(DataError, match="does not exist.*option `root`"):
        make(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"Session4 does not exist \(found: \['Session1', 'Session2', 'Session3'\]\).*`sessions`"):
        make(mini, sessions=[1, 4])
    with pytest.raises(DataError, match="Session1 does not exist"):
        IemocapDataset(IemocapDataset.Options(root=tmp_path))


def test_label_file_without_transcriptions_or_wav_dir(copy):
    (copy / "Session2/dialog/transcriptions/Ses02F_impro01.txt").unlink()
    with pytest.raises(DataError, match="Ses02F_impro01.txt has no matching transcription file.*transcriptions"):
        make(copy)
    assert len(make(copy, modalities=["audio"]).utterances) == 60  # text not needed
    shutil.rmtree(copy / "Session3/sentences/wav/Ses03M_script01_1")
    with pytest.raises(DataError, match="no matching wav directory .*Ses03M_script01_1"):
        make(copy, modalities=["audio"])


def test_utterance_without_transcript(copy):
    path = copy / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    path.write_text("".join(l for l in path.read_text().splitlines(True) if not l.startswith("Ses01F_impro01_M001")))
    with pytest.raises(DataError, match="utterance Ses01F_impro01_M001 has a label .* but no transcript"):
        make(copy)


def test_missing_wavs_are_reported_at_construction(copy):
    wavs = sorted((copy / "Session2/sentences/wav/Ses02F_impro01").glob("*.wav"))
    for w in wavs:
        w.unlink()
    with pytest.raises(DataError, match=r"10 labelled IEMOCAP utterance\(s\) cannot be used: .*Ses02F_impro01_F000.wav does not exist.*\.\.\. \(10 in all\)") as err:
        make(copy)
    assert str(err.value).count(".wav") == 5  # the first few, then the count
    assert len(make(copy, modalities=["text"]).utterances) == 60


def test_unusable_wavs_and_empty_transcripts_are_found_up_front_by_file_or_dropped(copy):
    import soundfile as sf

    wav_dir = copy / "Session1/sentences/wav/Ses01F_impro01"
    (wav_dir / "Ses01F_impro01_F000.wav").write_bytes(b"not a wav")
    nan = np.zeros(800, np.float32)
    nan[3] = np.nan
    sf.write(str(wav_dir / "Ses01F_impro01_F001.wav"), nan, 16000, subtype="FLOAT")
    text = copy / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    text.write_text(text.read_text().replace("Ses01F_impro01_M001 [", "Ses01F_impro01_M001 [0.0-1.0]:  \n#", 1))
    with pytest.raises(DataError) as err:
        make(copy)  # at construction, before any batch is read
    msg = str(err.value)
    assert "3 labelled IEMOCAP utterance(s) cannot be used" in msg and "bad_items: drop" in msg
    assert "Ses01F_impro01_F000.wav cannot be read" in msg
    assert "Ses01F_impro01_F001.wav holds non-finite samples (NaN or inf), 1 of 800, the first at sample 3" in msg
    assert "Ses01F_impro01_M001 has an empty transcript" in msg
    ds = make(copy, bad_items="drop")
    assert len(ds.utterances) == 60 - 3 and len(ds.dropped_items) == 3  # the mini release has 60 labelled utterances
    assert {u.meta["utterance"] for u in ds.utterances}.isdisjoint({"Ses01F_impro01_F000", "Ses01F_impro01_F001", "Ses01F_impro01_M001"})


@pytest.mark.parametrize(
    "options, match",
    [
        ({"protocol": "speaker5"}, "protocol"),
        ({"merge": {"exc": "joy"}}, "not in `classes`"),
        ({"classes": ["neu"]}, "classes"),
        ({"classes": ["neu", "neu"]}, "must not repeat"),
        ({"modalities": ["video"]}, "modalities"),
        ({"sessions": [6]}, "sessions 1 to 5"),
        ({"folds": 3}, "folds"),
    ],
)
def test_bad_options_are_rejected(options, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        IemocapDataset.Options(root="x", **options)


@contextlib.contextmanager
def registered():
    """The plugin registered (it already is once listed in FIRST_PARTY_PLUGINS)."""
    if get_plugin_manager().is_registered(multiturbo_iemocap):
        yield
    else:
        with plugin_registered(multiturbo_iemocap, "iemocap-test"):
            yield


def test_registers_as_iemocap():
    with registered():
        assert get_registries().datasets.get("iemocap") is IemocapDataset


def test_a_tiny_experiment_trains_on_the_fixture(mini, tiny_raw, tmp_path):
    tiny_raw["data"] = {"name": "iemocap", "options": {"root": str(mini), "sessions": [1, 2, 3]}, "fold": 2}
    tiny_raw["train"]["epochs"] = 1
    with registered():
        cfg = check_config(validate_config(tiny_raw))
        metrics = run_experiment(cfg, tmp_path / "run")
    assert cfg.data.options["merge"] == {"exc": "hap"} and cfg.data.options["protocol"] == "speaker10"
    assert 0.0 <= metrics["wa"] <= 1.0
