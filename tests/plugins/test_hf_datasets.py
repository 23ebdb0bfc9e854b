"""Tests of the hf_datasets data set plugin, on data sets built here with `datasets` (no download)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

datasets = pytest.importorskip("datasets")

from multiturbo.audio import Waveform, to_rate  # noqa: E402
from multiturbo.errors import DataError  # noqa: E402
from multiturbo.plugins import get_registries  # noqa: E402
from multiturbo_hf_datasets import HFDatasetsDataset  # noqa: E402

LABELS = ["neu", "hap", "ang"]


def wav_bytes(n: int, rate: int, value: float = 0.1) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(n, value, np.float32), rate, format="WAV")
    return buf.getvalue()


def png_bytes(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5, 4), level).save(buf, format="PNG")
    return buf.getvalue()


def table(n: int = 30, **extra) -> dict:
    """n rows: audio (16 kHz for even rows, 8 kHz for odd: 0.1 s each), a transcription, a speaker,
    an image, labels cycling over 3 classes."""
    cols = {
        "audio": [{"bytes": wav_bytes(1600 if i % 2 == 0 else 800, 16000 if i % 2 == 0 else 8000, 0.01 * (i + 1)), "path": f"{i}.wav"} for i in range(n)],
        "transcription": [f"utterance number {i}" for i in range(n)],
        "speaker": [f"spk{i // 5}" for i in range(n)],
        "picture": [{"bytes": png_bytes(i), "path": f"{i}.png"} for i in range(n)],
        "label": [LABELS[i % 3] for i in range(n)],
    }
    cols.update(extra)
    return cols


def to_dataset(cols: dict, class_label: bool = False):
    ds = datasets.Dataset.from_dict(cols)
    ds = ds.cast_column("audio", datasets.Audio()).cast_column("picture", datasets.Image())
    if class_label:
        ds = ds.cast_column("label", datasets.ClassLabel(names=LABELS))
    return ds


def make(path, seed: int = 0, **options) -> HFDatasetsDataset:
    options.setdefault("modalities", {"audio": "audio", "text": "transcription"})
    return HFDatasetsDataset(HFDatasetsDataset.Options(path=path, **options), seed=seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A Dataset with a ClassLabel label, and a DatasetDict train / validation / test, saved to disk."""
    root = tmp_path_factory.mktemp("hf")
    to_dataset(table(), class_label=True).save_to_disk(str(root / "single"))
    parts = {"train": table(18), "validation": table(6), "test": table(6)}
    for name, cols in parts.items():  # distinct items per split
        cols["audio"] = [{"bytes": wav_bytes(800, 8000, 0.001 * (i + 1) + {"train": 0, "validation": 0.1, "test": 0.2}[name]), "path": "x.wav"}
                         for i in range(len(cols["label"]))]
    datasets.DatasetDict({n: to_dataset(c) for n, c in parts.items()}).save_to_disk(str(root / "dict"))
    return root


def all_meta(ds, fold=None):
    s = ds.splits(fold)
    return [m for name in ("train", "val", "test") for m in getattr(s, name).meta]


def test_saved_dataset_classlabel_lazy_audio_text_and_image(saved, monkeypatch):
    ds = make(saved / "single", modalities={"audio": "audio", "text": "transcription", "image": "picture"})
    assert ds.classes == LABELS and ds.modalities == ("audio", "text", "image")  # ClassLabel names, in order
    s = ds.splits()
    assert (len(s.train), len(s.val), len(s.test)) == (21, 3, 6)  # stratified random split, the manifest's
    item = s.train[0]
    assert isinstance(item.inputs["audio"], Waveform) and item.inputs["text"].startswith("utterance number")
    assert item.inputs["image"].shape == (4, 5, 3) and item.inputs["image"].dtype == np.uint8
    i = item.meta["index"]
    rate = 16000 if i % 2 == 0 else 8000
    assert item.inputs["audio"].sample_rate == rate and len(item.inputs["audio"].samples) == rate // 10
    assert to_rate(item.inputs["audio"], 4000).shape == (400,)  # resampled to an encoder's rate
    assert LABELS[item.label] == LABELS[i % 3] and item.meta["speaker"] == f"spk{i // 5}"
    assert all("missing" not in m for m in all_meta(ds))  # no optional modality
    lengths = s.train.lengths()
    assert lengths[0]["audio"] == pytest.approx(0.1) and lengths[0]["text"] == 3.0
    pickle.loads(pickle.dumps(s.train))[1]  # DataLoader workers get the split
    # decoding is lazy: building the splits read no audio with soundfile's reader
    monkeypatch.setattr("multiturbo.audio.sf.read", lambda *a, **k: pytest.fail("decoded at construction"))
    make(saved / "single").splits()


def test_datasetdict_splits_are_used_and_can_be_pooled(saved):
    ds = make(saved / "dict", classes=LABELS)
    s = ds.splits()
    assert (len(s.train), len(s.val), len(s.test)) == (18, 6, 6)
    assert {m["hf_split"] for m in s.val.meta} == {"validation"} and s.test.meta[0]["hf_index"] == 0
    assert ds.classes == LABELS  # given; the string labels' own order would be sorted
    assert make(saved / "dict").classes == sorted(LABELS)
    pooled = make(saved / "dict", use_hf_splits=False, test_fraction=0.5, val_fraction=0.2).splits()
    assert (len(pooled.train), len(pooled.val), len(pooled.test)) == (9, 6, 15)
    only = make(saved / "dict", hf_splits=["train"], group_column="speaker")  # one split read: split by groups
    speakers = {name: {m["speaker"] for m in getattr(only.splits(), name).meta} for name in ("train", "val", "test")}
    assert not (speakers["train"] & speakers["test"]) and not (speakers["val"] & speakers["test"])
    with pytest.raises(DataError, match=r"no split \['dev'\] \(option hf_splits\); its splits are: \['train', 'validation', 'test'\]"):
        make(saved / "dict", hf_splits=["dev"])
    with pytest.raises(DataError, match="use_hf_splits needs a DatasetDict"):
        make(saved / "single", use_hf_splits=True)


def test_a_column_that_does_not_exist_lists_the_columns(saved):
    with pytest.raises(DataError) as err:
        make(saved / "single", modalities={"audio": "audio", "text": "transcript"})
    msg = str(err.value)
    assert "has no column 'transcript' (option modalities.text.column)" in msg
    assert "Its columns are: ['audio', 'transcription', 'speaker', 'picture', 'label']" in msg
    with pytest.raises(DataError, match=r"The column 'audio' of .* \(modality 'text'\) holds Audio\(.*\), which is not text\."):
        make(saved / "single", modalities={"text": {"column": "audio", "kind": "text"}})
    with pytest.raises(DataError, match=r"The column 'label' .* holds ClassLabel\(.*\), which is not audio, an image or text.*kind"):
        make(saved / "single", modalities={"x": "label"})
    with pytest.raises(DataError, match=r"The column 'label' .* holds ClassLabel\(.*\), which is not audio \(or a column of file paths\)"):
        make(saved / "single", modalities={"x": {"column": "label", "kind": "audio"}})


def test_split_and_fold_columns(tmp_path):
    cols = table(30, split=[["train", "train", "validation", "test", "train"][i % 5] for i in range(30)],
                 session=[i // 10 + 1 for i in range(30)])
    to_dataset(cols).save_to_disk(str(tmp_path / "d"))
    s = make(tmp_path / "d", split_column="split").splits()
    assert (len(s.train), len(s.val), len(s.test)) == (18, 6, 6)
    folds = make(tmp_path / "d", fold_column="session")
    assert folds.num_folds == 3
    f1 = folds.splits(1)
    assert {m["session"] for m in f1.test.meta} == {2} and {m["session"] for m in f1.val.meta} == {3}
    assert make(tmp_path / "d").splits().train.meta == make(tmp_path / "d").splits().train.meta  # the seed decides
    assert make(tmp_path / "d", seed=1).splits().train.meta != make(tmp_path / "d").splits().train.meta


def test_missing_modalities_and_data_checks_before_training(tmp_path):
    cols = table(12)
    cols["transcription"][2] = ""
    cols["transcription"][5] = None
    to_dataset(cols).save_to_disk(str(tmp_path / "m"))
    with pytest.raises(DataError) as err:
        make(tmp_path / "m")
    assert "empty cells in the column 'transcription' of the required text modality 'text': row 2; row 5 (2 in all)" in str(err.value)
    ds = make(tmp_path / "m", modalities={"audio": "audio", "text": {"column": "transcription", "optional": True}})
    meta = {m["index"]: m["missing"] for m in all_meta(ds)}
    assert [i for i, miss in meta.items() if miss] == [2, 5] and meta[2] == ["text"]
    s = ds.splits()
    missing = [x for split in (s.train, s.val, s.test) for x in split if x.meta["index"] in (2, 5)]
    assert [x.inputs["text"] for x in missing] == [None, None]

    bad = table(12)
    nan = io.BytesIO()
    samples = np.zeros(800, np.float32)
    samples[3] = np.nan
    sf.write(nan, samples, 8000, format="WAV", subtype="FLOAT")
    bad["audio"][1] = {"bytes": wav_bytes(0, 8000), "path": "empty.wav"}  # no samples
    bad["audio"][4] = {"bytes": nan.getvalue(), "path": "nan.wav"}
    bad["audio"][6] = {"bytes": b"not audio at all", "path": "junk.wav"}
    bad["transcription"][7] = "   "
    to_dataset(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError) as err:
        make(tmp_path / "bad")
    msg = str(err.value)
    assert "has 2 problems, found before training" in msg
    assert "(1) empty cells in the column 'transcription'" in msg and "row 7 (1 in all)" in msg
    assert "row 1: audio=its bytes has no samples" in msg
    assert "row 4: audio=its bytes holds non-finite samples (NaN or inf), 1 of 800, the first at sample 3" in msg
    assert "row 6: audio=its bytes cannot be read" in msg
    ds = make(tmp_path / "bad", bad_items="drop")  # or left out, each named (run.json's dropped_items)
    assert [d.split(":")[0] for d in ds.dropped_items] == ["row 1", "row 4", "row 6", "row 7"]
    assert sorted(m["index"] for m in all_meta(ds)) == [0, 2, 3, 5, 8, 9, 10, 11]


def test_duplicate_items_in_two_splits_and_untrained_classes_are_refused(saved, tmp_path):
    cols = table(30, split=[["train", "train", "validation", "test", "train"][i % 5] for i in range(30)])
    cols["audio"][3] = cols["audio"][0]
    cols["transcription"][3] = cols["transcription"][0]
    to_dataset(cols).save_to_disk(str(tmp_path / "dup"))
    with pytest.raises(DataError, match=r"the same item \(the same inputs\) in two splits \(fold 0\): row 0 \(train\) and row 3 \(test\)"):
        make(tmp_path / "dup", split_column="split").splits()

    from multiturbo.build import build_dataset
    from multiturbo.config import check_config, validate_config

    cols = table(30, split=[["train", "train", "validation", "test", "train"][i % 5] for i in range(30)])
    cols["split"] = ["val" if lab == "ang" and sp == "train" else sp for lab, sp in zip(cols["label"], cols["split"])]
    to_dataset(cols).save_to_disk(str(tmp_path / "untrained"))
    cfg = check_config(validate_config({
        "data": {"name": "hf_datasets", "options": {"path": str(tmp_path / "untrained"), "modalities": {"audio": "audio", "text": "transcription"},
                                                    "split_column": "split"}},
        "modalities": {"audio": {"encoder": "logmel_cnn", "options": {"sample_rate": 8000}}, "text": {"encoder": "hashed_transformer"}},
        "train": {"batch_size": 4, "epochs": 1},
    }))
    with pytest.raises(DataError, match=r"train split of data set 'hf_datasets' has no item of the class\(es\) 'ang'"):
        build_dataset(cfg, get_registries())


def test_audiofolder_with_metadata_and_csv_json_parquet_builders(tmp_path):
    root = tmp_path / "af"
    root.mkdir()
    lines = ["file_name,transcription,label"]
    for i in range(12):
        sf.write(str(root / f"{i}.wav"), np.full(800, 0.01 * (i + 1), np.float32), 8000)
        lines.append(f"{i}.wav,words {i},{LABELS[i % 3]}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    ds = make(root, builder="audiofolder", cache_dir=cache)
    item = ds.splits().train[0]
    assert ds.classes == sorted(LABELS) and item.inputs["audio"].sample_rate == 8000 and item.inputs["text"].startswith("words")

    rows = [{"wav": f"af/{i}.wav", "transcription": f"words {i}", "label": LABELS[i % 3]} for i in range(12)]
    (tmp_path / "m.csv").write_text("wav,transcription,label\n" + "".join(f"{r['wav']},{r['transcription']},{r['label']}\n" for r in rows))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "m.parquet"))
    mods = {"audio": {"column": "wav", "kind": "audio"}, "text": "transcription"}
    for builder, file in (("csv", "m.csv"), ("json", "m.jsonl"), ("parquet", "m.parquet")):
        ds = make(tmp_path / file, builder=builder, modalities=mods, cache_dir=cache)
        s = ds.splits()
        assert len(s.train) + len(s.val) + len(s.test) == 12 and ds.classes == sorted(LABELS), builder
        assert s.train[0].inputs["audio"].sample_rate == 8000  # paths relative to the file's directory
    rows[5]["wav"] = "af/missing.wav"
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"files that do not exist .*row 5: wav='.*missing.wav'"):
        make(tmp_path / "bad.jsonl", builder="json", modalities=mods, cache_dir=cache)
    with pytest.raises(DataError, match="is not a data set saved with save_to_disk"):
        make(root)


def test_imagefolder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (6, 5), (i * 20, 0, 0) if label == "cat" else (0, i * 20, 0)).save(tmp_path / "img" / label / f"{i}.png")
    ds = make(tmp_path / "img", builder="imagefolder", modalities={"image": "image"}, cache_dir=tmp_path / "cache")
    assert ds.classes == ["cat", "dog"] and ds.splits().train[0].inputs["image"].shape == (5, 6, 3)


def test_registered_and_trains_end_to_end(saved, tmp_path, tiny_raw):
    from multiturbo.config import check_config, validate_config
    from multiturbo.run import run_experiment

    assert get_registries().datasets.get("hf_datasets") is HFDatasetsDataset
    raw = tiny_raw
    raw["data"] = {"name": "hf_datasets", "options": {"path": str(saved / "dict"), "modalities": {"audio": "audio", "text": "transcription"}}}
    raw["train"]["epochs"] = 1
    metrics = run_experiment(check_config(validate_config(raw)), tmp_path / "run")
    assert 0.0 <= metrics["ua"] <= 1.0 and metrics["epochs_run"] == 1
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["id"] == "index" and len(splits["train"]) == 18 and splits["val"] == list(range(18, 24))


def test_the_disk_audio_cache_keys_items_by_their_content(saved, tmp_path):
    from multiturbo.audio_cache import cache_splits

    class Encoder:
        input_sample_rate = 4000

    ds = make(saved / "single")
    stats = []
    for _ in range(2):
        train = cache_splits(ds.splits(), {"audio": Encoder()}, "disk", tmp_path / "cache").train
        audio = [train[i].inputs["audio"] for i in range(len(train))]
        stats.append(dict(train.stats))
    assert stats[0]["misses"] == len(audio) and stats[1]["hits"] == len(audio)
    assert audio[0].sample_rate == 4000 and len(audio[0].samples) == 400  # 0.1 s at the encoder's rate


def test_without_the_datasets_package_the_error_names_the_extra(saved, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=r'needs the `datasets` package: pip install "multiturbo\[hf\]"'):
        make(saved / "single")
