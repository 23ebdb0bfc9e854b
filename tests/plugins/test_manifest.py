"""Tests of the manifest data set plugin (CSV / JSONL files listing the user's own data)."""

from __future__ import annotations

import contextlib
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydantic
import pytest
import soundfile as sf
from PIL import Image

import multiturbo_manifest
from multiturbo.audio import Waveform
from multiturbo.dataset import Dataset, Sample
from multiturbo.errors import DataError
from multiturbo.plugins import get_plugin_manager, get_registries, plugin_registered
from multiturbo_manifest import ManifestDataset

AUDIO_TEXT = {"audio": {"column": "wav", "kind": "audio"}, "text": {"column": "transcript", "kind": "text"}}
LABELS = ["neu", "hap", "ang"]


def write_csv(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    header = header or list(rows[0])
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(h, "") for h in header])
    return path


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[dict]]:
    """30 rows: 6 speakers x 5 clips, labels cycling over 3 classes, wavs in clips/."""
    (tmp_path / "clips").mkdir()
    rows = []
    for i in range(30):
        wav = f"clips/{i:02d}.wav"
        sf.write(str(tmp_path / wav), np.full(800, 0.01 * (i % 7), np.float32), 8000)
        rows.append({"wav": wav, "transcript": f"utterance {i}", "speaker": f"spk{i // 5}",
                     "session": str(i // 10 + 1), "split": ["train", "train", "val", "test", "train"][i % 5],
                     "label": LABELS[i % 3]})
    return tmp_path, rows


def make(path: Path, seed: int = 0, **options) -> ManifestDataset:
    options.setdefault("modalities", AUDIO_TEXT)
    return ManifestDataset(ManifestDataset.Options(path=path, **options), seed=seed)


def lines(split) -> list[int]:
    return [m["line"] for m in split.meta]


def test_csv_classes_items_and_lazy_audio(data, monkeypatch):
    root, rows = data
    ds = make(write_csv(root / "m.csv", rows), split_column="split")
    assert isinstance(ds, Dataset) and ds.num_folds == 1
    assert ds.classes == ["ang", "hap", "neu"]  # sorted unique labels
    assert ds.modalities == ("audio", "text")
    s = ds.splits()
    assert (len(s.train), len(s.val), len(s.test)) == (18, 6, 6)
    assert s.test.meta[0] == {"line": 5, "speaker": "spk0", "session": "1", "split": "test"}
    x = s.test[0]
    assert isinstance(x, Sample) and x.label == ds.classes.index("neu") == s.test.labels[0]
    assert isinstance(x.inputs["audio"], Waveform) and x.inputs["audio"].samples.shape == (800,)
    assert x.inputs["text"] == "utterance 3"

    calls = []
    monkeypatch.setattr(multiturbo_manifest, "LOADERS", {"audio": lambda p: calls.append(p) or "w", "image": None})
    lazy = make(root / "m.csv", split_column="split").splits().train
    assert calls == [] and len(lazy.labels) == 18
    assert lazy[1].inputs["audio"] == "w" and calls == [root / "clips/01.wav"]  # relative to the manifest
    assert len(lazy[2:5]) == 3 and lazy[2:5].labels == lazy.labels[2:5]


def test_item_lengths_come_from_the_audio_headers_and_the_words_without_decoding(data, monkeypatch):
    root, rows = data
    sf.write(str(root / "clips/00.wav"), np.zeros(16000, np.float32), 8000)  # 2 s instead of 0.1 s
    rows[0]["transcript"] = "a longer utterance of six words"
    monkeypatch.setattr(multiturbo_manifest, "LOADERS", {"audio": None, "image": None})  # decoding would fail
    train = make(write_csv(root / "m.csv", rows), split_column="split").splits().train
    lengths = train.lengths()
    assert lengths[0] == {"audio": 2.0, "text": 6.0} and lengths[1] == {"audio": 0.1, "text": 2.0}


def test_jsonl_with_given_classes_and_absolute_paths(data):
    root, rows = data
    path = root / "sub" / "m.jsonl"
    path.parent.mkdir()
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({**r, "wav": str(root / r["wav"]), "session": int(r["session"])}) + "\n\n")
    ds = make(path, classes=["neu", "hap", "ang", "sad"], split_column="split")
    assert ds.classes == ["neu", "hap", "ang", "sad"]
    assert Counter(ds.splits().train.labels) == Counter({0: 6, 1: 6, 2: 6})
    assert ds.splits().train.meta[0]["session"] == 1 and ds.splits().train.meta[0]["line"] == 1
    assert ds.splits().train[0].inputs["audio"].sample_rate == 8000


def test_random_splits_are_stratified_and_follow_the_seed(data):
    root, rows = data
    path = write_csv(root / "m.csv", rows)
    a, b, c = (make(path, seed=s, val_fraction=0.2, test_fraction=0.2).splits() for s in (1, 1, 2))
    assert (len(a.train), len(a.val), len(a.test)) == (18, 6, 6)
    for split in (a.val, a.test):
        assert Counter(split.labels) == Counter({0: 2, 1: 2, 2: 2})
    assert lines(a.test) == lines(b.test) and lines(a.test) != lines(c.test)
    assert sorted(lines(a.train) + lines(a.val) + lines(a.test)) == list(range(2, 32))


def test_group_splits_keep_each_group_in_one_split(data):
    root, rows = data
    path = write_csv(root / "m.csv", rows)
    seen = set()
    for seed in range(5):
        s = make(path, seed=seed, group_column="speaker", val_fraction=0.2, test_fraction=0.2).splits()
        groups = [{m["speaker"] for m in split.meta} for split in (s.train, s.val, s.test)]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
        assert (len(groups[1]), len(groups[2])) == (1, 1) and len(s.train) == 20  # 5 rows each, closest to 6
        seen.add(tuple(sorted(groups[2])))
    assert len(seen) > 1  # the seed picks the groups


def test_fold_column(data):
    root, rows = data
    ds = make(write_csv(root / "m.csv", rows), fold_column="session")
    assert ds.num_folds == 3
    for f, (test, val) in enumerate([("1", "2"), ("2", "3"), ("3", "1")]):
        s = ds.splits(f)
        assert {m["session"] for m in s.test.meta} == {test} and {m["session"] for m in s.val.meta} == {val}
        assert len(s.train) == len(s.val) == len(s.test) == 10
    assert ds.splits() is ds.splits(0)
    with pytest.raises(DataError, match=r"fold 3 does not exist.*3 fold\(s\).*\['1', '2', '3'\]"):
        ds.splits(3)
    with pytest.raises(DataError, match="at least 3"):
        make(write_csv(root / "two.csv", [r for r in rows if r["session"] != "3"]), fold_column="session")


def test_images_are_loaded_as_rgb_arrays(tmp_path):
    modes = {"L": 128, "RGBA": (10, 20, 30, 0), "RGB": (1, 2, 3), "P": 5}
    rows = []
    for i, (mode, colour) in enumerate(modes.items()):
        Image.new(mode, (6, 4), colour).save(tmp_path / f"{i}.png")
        rows.append({"img": f"{i}.png", "caption": f"picture {i}", "label": "ab"[i % 2]})
    mods = {"image": {"column": "img", "kind": "image"}, "text": {"column": "caption", "kind": "text"}}
    ds = make(write_csv(tmp_path / "m.csv", rows), modalities=mods, test_fraction=0.0, val_fraction=0.0)
    items = ds.splits().train
    assert len(items) == 4
    by_line = {m["line"]: items[i] for i, m in enumerate(items.meta)}
    for line, x in by_line.items():
        assert x.inputs["image"].dtype == np.uint8 and x.inputs["image"].shape == (4, 6, 3)
        assert x.inputs["text"] == f"picture {line - 2}"
    assert (by_line[2].inputs["image"] == 128).all()  # L: gray replicated
    assert (by_line[3].inputs["image"] == [10, 20, 30]).all()  # RGBA: alpha dropped
    (tmp_path / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"0.png cannot be read"):
        [items[i] for i in range(4)]


def test_missing_manifest_column_and_empty_files(data, tmp_path):
    root, rows = data
    with pytest.raises(DataError, match="does not exist.*option `path`"):
        make(root / "none.csv")
    path = write_csv(root / "m.csv", rows)
    with pytest.raises(DataError, match=r"no column 'text' \(option modalities.text.column\).*columns are: \['wav', 'transcript'"):
        make(path, modalities={**AUDIO_TEXT, "text": {"column": "text", "kind": "text"}})
    with pytest.raises(DataError, match=r"no column 'emotion' \(option label_column\)"):
        make(path, label_column="emotion")
    (root / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        make(root / "empty.csv")
    (root / "header.csv").write_text("wav,transcript,label\n")
    with pytest.raises(DataError, match="has no rows"):
        make(root / "header.csv")
    (root / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="has no rows"):
        make(root / "empty.jsonl")


def test_duplicate_header_and_malformed_rows(data):
    root, rows = data
    (root / "dup.csv").write_text("wav,transcript,label,label\nclips/00.wav,hi,neu,hap\n")
    with pytest.raises(DataError, match=r"repeats the column\(s\) \['label'\]"):
        make(root / "dup.csv")
    (root / "dup.jsonl").write_text('{"wav": "clips/00.wav", "transcript": "a", "label": "x", "label": "y"}\n')
    with pytest.raises(DataError, match=r"line 1, repeats the key\(s\) \['label'\]"):
        make(root / "dup.jsonl")
    (root / "ragged.csv").write_text("wav,transcript,label\nclips/00.wav,hi,neu\nclips/01.wav,a, b,hap\n")
    with pytest.raises(DataError, match="line 3, has 4 fields but the header has 3"):
        make(root / "ragged.csv")
    (root / "bad.jsonl").write_text('{"wav": "clips/00.wav"}\n{oops\n')
    with pytest.raises(DataError, match="line 2, is not valid JSON"):
        make(root / "bad.jsonl")


def test_labels_outside_classes_and_empty_labels(data):
    root, rows = data
    path = write_csv(root / "m.csv", rows)
    with pytest.raises(DataError, match=r"outside `classes` \['neu', 'hap'\]: line 4: 'ang'; line 7: 'ang'.*\(10 in all\)"):
        make(path, classes=["neu", "hap"])
    rows[4]["label"] = ""
    with pytest.raises(DataError, match="empty label .*line 6"):
        make(write_csv(root / "m2.csv", rows))
    with pytest.raises(DataError, match="single label"):
        make(write_csv(root / "m3.csv", [dict(r, label="neu") for r in rows]))


def test_missing_audio_files_are_reported_at_construction(data):
    root, rows = data
    for i in range(7):
        (root / f"clips/{i:02d}.wav").unlink()
    rows[20]["wav"] = "clips/none.wav"
    with pytest.raises(DataError, match=r"files that do not exist.*line 2: wav='clips/00.wav'.*\(8 in all\)") as err:
        make(write_csv(root / "m.csv", rows))
    assert str(err.value).count("line ") == 5  # the first few rows, then the count
    rows[20]["wav"] = ""  # an empty cell is named as such (before the missing files)
    with pytest.raises(DataError, match=r"empty cells in the column 'wav' of the required audio modality 'audio': line 22 \(1 in all\)"):
        make(write_csv(root / "m.csv", rows))
    assert len(make(root / "m.csv", modalities={"text": AUDIO_TEXT["text"]}).rows) == 30  # text only: no files needed


def test_bad_split_values(data):
    root, rows = data
    rows[3]["split"] = "holdout"
    rows[4]["split"] = "Validation"
    ds = make(write_csv(root / "m.csv", rows), split_column="split")
    with pytest.raises(DataError, match=r"must hold train, val or test: line 5: 'holdout' \(1 in all\)"):
        ds.splits()


def test_too_few_rows_to_train(tmp_path):
    write_csv(tmp_path / "m.csv", [{"t": "a", "label": "x", "g": "1"}, {"t": "b", "label": "y", "g": "2"}])
    with pytest.raises(DataError, match="no row to train on"):
        make(tmp_path / "m.csv", modalities={"text": {"column": "t", "kind": "text"}}, group_column="g",
             val_fraction=0.3, test_fraction=0.3).splits()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"modalities": {}}, "modalities"),
        ({"modalities": {"a": {"column": "x", "kind": "video"}}}, "kind"),
        ({"modalities": {"a": {"column": "x", "kind": "text", "extra": 1}}}, "extra"),
        ({"split_column": "s", "fold_column": "f"}, "at most one"),
        ({"group_column": "g", "split_column": "s"}, "random splits only"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "< 1"),
        ({"classes": ["a", "a"]}, "must not repeat"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_options_are_rejected(options, match):
    options.setdefault("modalities", AUDIO_TEXT)
    with pytest.raises(pydantic.ValidationError, match=match):
        ManifestDataset.Options(path="m.csv", **options)


def test_registers_as_manifest():
    if get_plugin_manager().is_registered(multiturbo_manifest):  # listed in FIRST_PARTY_PLUGINS
        ctx = contextlib.nullcontext()
    else:
        ctx = plugin_registered(multiturbo_manifest, "manifest-test")
    with ctx:
        assert get_registries().datasets.get("manifest") is ManifestDataset


def test_the_example_in_the_docs_loads(tmp_path):
    import re

    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs" / "datasets.md").read_text()
    manifest = text[text.index("## Manifest"):]
    csv_text = re.search(r"```csv\n(.*?)```", manifest, re.S).group(1)
    options = yaml.safe_load(re.search(r"```yaml\n(.*?)```", manifest, re.S).group(1))["data"]["options"]
    path = tmp_path / options.pop("path")
    path.parent.mkdir(parents=True)
    path.write_text(csv_text)
    (path.parent / "clips").mkdir()
    for i in (1, 2, 3):
        sf.write(str(path.parent / f"clips/000{i}.wav"), np.zeros(160, np.float32), 16000)
    options["val_fraction"] = 0.0  # 3 rows: a test group and a train group
    ds = ManifestDataset(ManifestDataset.Options(path=path, **options), seed=0)
    assert ds.classes == ["ang", "hap", "neu"] and len(ds.rows) == 3
    s = ds.splits()
    assert {m["speaker"] for m in s.test.meta}.isdisjoint(m["speaker"] for m in s.train.meta)
    assert ds.rows[2]["inputs"]["text"] is None  # optional: the empty transcript is a missing text


def test_group_key_and_missing_meta_for_the_split_composition(data):
    root, rows = data
    assert "missing" not in make(write_csv(root / "full.csv", rows)).splits().train.meta[0]  # no optional modality: meta as before
    for i in (0, 3):
        rows[i]["transcript"] = ""
    path = write_csv(root / "m.csv", rows)
    optional = {"audio": AUDIO_TEXT["audio"], "text": {**AUDIO_TEXT["text"], "optional": True}}
    ds = make(path, modalities=optional, group_column="speaker")
    assert ds.group_key == "speaker" and make(root / "full.csv").group_key is None
    meta = [m for name in ("train", "val", "test") for m in getattr(ds.splits(), name).meta]
    assert sorted(m["line"] for m in meta if m["missing"] == ["text"]) == [2, 5] and all(m["missing"] in ([], ["text"]) for m in meta)


@pytest.mark.parametrize("kind", ["text", "audio", "image"])
def test_an_empty_cell_of_a_required_modality_is_an_error_for_every_kind(tmp_path, kind):
    rows = []
    for i in range(9):
        if kind == "audio":
            sf.write(str(tmp_path / f"{i}.wav"), np.zeros(400, np.float32), 8000)
        elif kind == "image":
            Image.new("L", (4, 4), 9).save(tmp_path / f"{i}.png")
        value = {"text": f"words {i}", "audio": f"{i}.wav", "image": f"{i}.png"}[kind]
        rows.append({"x": "" if i in (2, 5) else "  " if i == 7 else value, "t": f"t{i}", "label": "ab"[i % 2]})
    path = write_csv(tmp_path / "m.csv", rows)
    mods = {"x": {"column": "x", "kind": kind}, "t": {"column": "t", "kind": "text"}}
    with pytest.raises(DataError) as err:
        make(path, modalities=mods)
    msg = str(err.value)
    assert f"empty cells in the column 'x' of the required {kind} modality 'x': line 4; line 7; line 9 (3 in all)" in msg
    assert "`optional: true`" in msg and "data.options.modalities.x.optional" in msg
    ds = make(path, modalities={**mods, "x": {**mods["x"], "optional": True}})  # the fix: the items lack x
    assert sorted(m["line"] for s in ("train", "val", "test") for m in getattr(ds.splits(), s).meta if m["missing"] == ["x"]) == [4, 7, 9]


# -- data checked before training (issue 15) ----------------------------------------------------------
def test_every_bad_audio_file_and_every_problem_is_listed_in_one_error(data):
    root, rows = data
    ok = (root / rows[0]["wav"]).read_bytes()
    (root / rows[1]["wav"]).write_bytes(ok[: len(ok) // 2])  # truncated
    sf.write(str(root / rows[2]["wav"]), np.zeros(0, np.float32), 8000)  # no samples
    nan = np.zeros(800, np.float32)
    nan[5] = np.nan
    sf.write(str(root / rows[3]["wav"]), nan, 8000, subtype="FLOAT")  # NaN samples
    (root / rows[4]["wav"]).write_bytes(b"not audio at all")
    rows[5]["wav"] = "clips/missing.wav"
    rows[6]["transcript"] = ""
    with pytest.raises(DataError) as info:
        make(write_csv(root / "m.csv", rows))
    msg = str(info.value)
    assert "has 3 problems, found before training" in msg
    assert "(1) empty cells in the column 'transcript'" in msg and "line 8" in msg
    assert "(2) files that do not exist" in msg and "missing.wav" in msg
    assert "line 3: wav=" in msg and "01.wav' is truncated: its header announces 1600 bytes" in msg
    assert "line 4: wav=" in msg and "02.wav' has no samples" in msg
    assert "line 5: wav=" in msg and "03.wav' holds non-finite samples (NaN or inf), 1 of 800, the first at sample 5" in msg
    assert "line 6: wav=" in msg and "04.wav' cannot be read" in msg


def test_a_cell_over_128_kb_is_read(data):
    root, rows = data
    rows[0]["transcript"] = "word " * 60_000  # 300 KB
    ds = make(write_csv(root / "m.csv", rows), split_column="split")
    assert any(len(r["inputs"]["text"]) > 131072 for r in ds.rows)


def test_the_same_item_in_two_splits_is_refused(data):
    root, rows = data
    rows.append({**rows[0], "split": "test"})  # line 2's item again, in the test split
    with pytest.raises(DataError, match=r"the same item \(the same inputs\) in two splits \(fold 0\): line 2 \(train\) and line 32 \(test\)"):
        make(write_csv(root / "m.csv", rows), split_column="split").splits()
    rows[-1]["split"] = "train"  # a duplicate within one split is not a leak
    make(write_csv(root / "m.csv", rows), split_column="split").splits()


def test_a_class_without_training_items_is_refused_before_training(data, tmp_path):
    from multiturbo.build import build_dataset
    from multiturbo.config import check_config, validate_config

    root, rows = data
    for r in rows:
        if r["label"] == "ang" and r["split"] == "train":
            r["split"] = "val"
    cfg = check_config(validate_config({
        "data": {"name": "manifest", "options": {"path": str(write_csv(root / "m.csv", rows)), "modalities": AUDIO_TEXT, "split_column": "split"}},
        "modalities": {"audio": {"encoder": "logmel_cnn", "options": {"sample_rate": 8000}}, "text": {"encoder": "hashed_transformer"}},
        "train": {"batch_size": 4, "epochs": 1},
    }))
    with pytest.raises(DataError, match=r"train split of data set 'manifest' has no item of the class\(es\) 'ang'"):
        build_dataset(cfg, get_registries())


def _spoil(root: Path, rows: list[dict]) -> list[dict]:
    """Rows 1-6 made unusable (truncated, empty, NaN, non-audio, missing file, empty text) and a
    repeat of row 0's inputs appended (line 32)."""
    ok = (root / rows[0]["wav"]).read_bytes()
    (root / rows[1]["wav"]).write_bytes(ok[: len(ok) // 2])
    sf.write(str(root / rows[2]["wav"]), np.zeros(0, np.float32), 8000)
    nan = np.zeros(800, np.float32)
    nan[5] = np.nan
    sf.write(str(root / rows[3]["wav"]), nan, 8000, subtype="FLOAT")
    (root / rows[4]["wav"]).write_bytes(b"not audio at all")
    rows[5]["wav"] = "clips/missing.wav"
    rows[6]["transcript"] = ""
    return rows + [{**rows[0], "split": "test"}]


def test_bad_items_drop_leaves_the_unusable_rows_out_and_names_each(data):
    root, rows = data
    path = write_csv(root / "m.csv", _spoil(root, rows))
    with pytest.raises(DataError, match=r"Or set `bad_items: drop`"):
        make(path, split_column="split")
    ds = make(path, split_column="split", bad_items="drop")
    assert [d.split(":")[0] for d in ds.dropped_items] == [f"line {n}" for n in (3, 4, 5, 6, 7, 8, 32)]
    assert "is truncated" in ds.dropped_items[0] and "non-finite samples" in ds.dropped_items[2]
    assert "'transcript'" in ds.dropped_items[5] and ds.dropped_items[6] == "line 32: the same inputs as line 2"
    kept = sorted(n for s in ("train", "val", "test") for n in lines(getattr(ds.splits(), s)))
    assert kept == [n for n in range(2, 32) if n not in (3, 4, 5, 6, 7, 8)]


def test_bad_items_drop_refuses_a_manifest_with_no_usable_row(tmp_path):
    sf.write(str(tmp_path / "a.wav"), np.zeros(0, np.float32), 8000)
    path = write_csv(tmp_path / "m.csv", [{"wav": "a.wav", "transcript": "x", "label": "neu"}, {"wav": "a.wav", "transcript": "y", "label": "hap"}])
    with pytest.raises(DataError, match="has no usable row: bad_items: drop left out all 2"):
        make(path, bad_items="drop")


def test_run_json_counts_the_dropped_items(data, tmp_path):
    """What run.json records about the data (run._facts, written before training)."""
    import torch

    from multiturbo.build import build_experiment
    from multiturbo.config import check_config, validate_config
    from multiturbo.run import _facts

    root, rows = data
    path = write_csv(root / "m.csv", _spoil(root, rows))
    cfg = check_config(validate_config({
        "data": {"name": "manifest", "options": {"path": str(path), "modalities": AUDIO_TEXT, "split_column": "split", "bad_items": "drop"}},
        "modalities": {"audio": {"encoder": "logmel_cnn", "options": {"sample_rate": 8000, "channels": 4}},
                       "text": {"encoder": "hashed_transformer", "options": {"dim": 8, "layers": 1, "heads": 2}}},
        "model": {"dim": 8}, "train": {"batch_size": 4, "epochs": 1},
    }))
    dropped = json.loads(json.dumps(_facts(cfg, build_experiment(cfg), torch.device("cpu"), 1)))["dropped_items"]
    assert dropped["count"] == 7 and dropped["items"][-1] == "line 32: the same inputs as line 2"
