"""predict / evaluate / embed on a trained run: manifests, single items, sample rates, bad input, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY
from safetensors import safe_open

from multiturbo.cli import cli
from multiturbo.errors import DataError, MultiturboError
from multiturbo.inference import (
    Inputs,
    evaluate_outputs,
    predictions,
    read_inputs,
    run_inputs,
    write_embeddings,
    write_predictions,
)
from multiturbo.rundir import load_run, test_split

RATE = TINY["data"]["options"]["sample_rate"]


@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run)


def write_manifest(run, directory, *, labels=True, suffix=".csv", rate=RATE):
    """The run's test split as a manifest: float WAV files (exact samples) + text + class names."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, s in enumerate(test_split(run)):
        samples = np.asarray(s.inputs["audio"], dtype=np.float32)
        if rate != RATE:
            samples = soxr.resample(samples, RATE, rate).astype(np.float32)
        sf.write(directory / f"item{i}.wav", samples, rate, subtype="FLOAT")
        row = {"id": f"utt{i}", "audio": f"item{i}.wav", "text": s.inputs["text"]}
        if labels:
            row["label"] = run.classes[s.label]
        rows.append(row)
    path = directory / f"manifest{suffix}"
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_on_a_manifest_reproduces_the_test_metrics(run, tiny_run, tmp_path):
    manifest = write_manifest(run, tmp_path / "data")
    metrics = evaluate_outputs(run, run_inputs(run, read_inputs(run, manifest, labels="required")))
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["confusion"] == saved["confusion"]
    for key in ("wa", "ua", "f1", "loss"):
        assert metrics[key] == pytest.approx(saved[key], abs=1e-5)
    assert metrics["n_items"] == len(test_split(run)) and metrics["classes"] == run.classes
    assert set(metrics["retrieval"]) == {"audio->text", "text->audio"}
    assert set(metrics["retrieval"]["audio->text"]) == {"recall@1", "recall@5", "n"}


def test_evaluate_on_a_data_set_config(run, tiny_run):
    metrics = evaluate_outputs(run, run_inputs(run, read_inputs(run, {"data": TINY["data"]}, labels="required")))
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["confusion"] == saved["confusion"] and metrics["wa"] == pytest.approx(saved["wa"])


def test_predict_without_labels_from_csv_and_jsonl(run, tmp_path):
    csv_rows = predictions(run, run_inputs(run, read_inputs(run, write_manifest(run, tmp_path / "a", labels=False))))
    jsonl_rows = predictions(run, run_inputs(run, read_inputs(run, write_manifest(run, tmp_path / "b", labels=False, suffix=".jsonl"))))
    assert [r["id"] for r in csv_rows] == [f"utt{i}" for i in range(len(csv_rows))]
    for a, b in zip(csv_rows, jsonl_rows):
        assert a["class"] == b["class"] and "label" not in a
        assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(a["probabilities"]) == run.classes
        assert a["class"] == max(a["probabilities"], key=a["probabilities"].get)


def test_items_as_arrays_give_the_same_predictions_as_files(run, tmp_path):
    from_files = run_inputs(run, read_inputs(run, write_manifest(run, tmp_path / "d", labels=False)))
    items = [{"audio": (np.asarray(s.inputs["audio"]), RATE), "text": s.inputs["text"]} for s in test_split(run)]
    from_arrays = run_inputs(run, read_inputs(run, items))
    torch.testing.assert_close(from_arrays.probs, from_files.probs)


def test_audio_at_another_sample_rate_is_resampled(run, tmp_path):
    """A file at 8 kHz (the run's encoder wants 4 kHz) is resampled with soxr when read."""
    at_8k = run_inputs(run, read_inputs(run, write_manifest(run, tmp_path / "r", labels=False, rate=8000)))
    native = [
        {"audio": soxr.resample(soxr.resample(np.asarray(s.inputs["audio"], dtype=np.float32), RATE, 8000), 8000, RATE), "text": s.inputs["text"]}
        for s in test_split(run)
    ]  # bare arrays are taken as at the encoder's rate
    torch.testing.assert_close(at_8k.probs, run_inputs(run, Inputs(native, [str(i) for i in range(len(native))])).probs, atol=1e-4, rtol=1e-4)
    as_pair = [{"audio": (sf.read(tmp_path / "r" / f"item{i}.wav", dtype="float32")[0], 8000), "text": s.inputs["text"]} for i, s in enumerate(test_split(run))]
    torch.testing.assert_close(run_inputs(run, read_inputs(run, as_pair)).probs, at_8k.probs)


def test_an_unknown_label_names_the_row_and_the_classes(run, tmp_path):
    manifest = write_manifest(run, tmp_path / "u")
    lines = manifest.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",happy"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4: the label 'happy' is not a class .*\['class0', 'class1', 'class2'\]"):
        read_inputs(run, manifest, labels="required")


def test_evaluate_needs_labels(run, tmp_path):
    with pytest.raises(DataError, match="no label column 'label'"):
        read_inputs(run, write_manifest(run, tmp_path / "n", labels=False), labels="required")


def test_a_missing_modality_is_allowed_when_the_head_handles_it(run):
    out = run_inputs(run, read_inputs(run, [{"audio": np.zeros(1000, np.float32)}, {"text": "hello"}]))
    assert out.present["text"].tolist() == [False, True] and out.present["audio"].tolist() == [True, False]
    assert out.probs.shape == (2, 3)


def test_a_missing_modality_names_the_item_when_the_head_cannot(run, monkeypatch):
    monkeypatch.setattr(run.model.head, "handles_missing", False, raising=False)
    with pytest.raises(DataError, match=r"Item 1 of the input has no 'text' input .*cannot handle missing"):
        run_inputs(run, read_inputs(run, [{"audio": np.zeros(500, np.float32), "text": "a"}, {"audio": np.zeros(500, np.float32)}]))


def test_an_item_with_no_modality_or_an_unknown_one(run):
    with pytest.raises(DataError, match="Item 0 .* has no 'audio' input .*at least one"):
        run_inputs(run, read_inputs(run, [{}]))
    with pytest.raises(DataError, match=r"Item 0 .*input\(s\) for \['image'\].*\['audio', 'text'\]"):
        run_inputs(run, read_inputs(run, [{"image": "x.png", "text": "a"}]))


def test_a_missing_audio_file_is_a_data_error(run, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        run_inputs(run, read_inputs(run, [{"audio": tmp_path / "nope.wav", "text": "a"}]))


def test_write_predictions_csv_and_jsonl(run, tmp_path):
    rows = predictions(run, run_inputs(run, read_inputs(run, write_manifest(run, tmp_path / "w"))))
    path = write_predictions(tmp_path / "p.csv", rows, run.classes)
    got = list(csv.DictReader(path.open()))
    assert list(got[0]) == ["id", "class", "label", "prob_class0", "prob_class1", "prob_class2"]
    assert len(got) == len(rows) and got[0]["class"] == rows[0]["class"]
    lines = write_predictions(tmp_path / "p.jsonl", rows, run.classes).read_text().splitlines()
    assert json.loads(lines[0]) == json.loads(json.dumps(rows[0]))
    with pytest.raises(MultiturboError, match=".csv or .jsonl"):
        write_predictions(tmp_path / "p.txt", rows, run.classes)


def test_write_embeddings_in_every_format(run, tmp_path):
    out = run_inputs(run, read_inputs(run, write_manifest(run, tmp_path / "e")))
    n = len(out.ids)
    [st] = write_embeddings(tmp_path / "emb.safetensors", run, out)
    with safe_open(str(st), "pt") as f:
        assert set(f.keys()) == {"audio", "audio.raw", "text", "text.raw", "labels"}
        audio, raw = f.get_tensor("audio"), f.get_tensor("audio.raw")
        assert audio.shape == (n, 16) and torch.allclose(audio.norm(dim=1), torch.ones(n))
        torch.testing.assert_close(audio, torch.nn.functional.normalize(raw, dim=1))
        assert f.get_tensor("labels").tolist() == out.labels
        assert json.loads(f.metadata()["ids"]) == out.ids and json.loads(f.metadata()["classes"]) == run.classes
    [npz] = write_embeddings(tmp_path / "emb.npz", run, out)
    z = np.load(npz)
    assert z["text"].shape == (n, 16) and z["ids"].tolist() == out.ids
    files = write_embeddings(tmp_path / "emb.npy", run, out)
    assert {p.name for p in files} >= {"emb.audio.npy", "emb.audio.raw.npy", "emb.text.npy", "emb.labels.npy", "emb.ids.npy"}
    np.testing.assert_allclose(np.load(tmp_path / "emb.text.npy"), z["text"])


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_predict_evaluate_embed(run, tiny_run, tmp_path):
    manifest = write_manifest(run, tmp_path / "c")
    runner = CliRunner()
    res = runner.invoke(cli, ["predict", str(tiny_run), str(manifest), "--output", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == len(test_split(run))
    res = runner.invoke(cli, ["evaluate", str(tiny_run), str(manifest), "--output", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert "audio->text recall@1" in res.output and "ua" in res.output
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert json.loads((tmp_path / "m.json").read_text())["confusion"] == saved["confusion"]
    res = runner.invoke(cli, ["embed", str(tiny_run), str(manifest), "--output", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "e.npz")["audio"].shape[0] == len(test_split(run))


def test_cli_predict_one_item_from_options(run, tiny_run, tmp_path):
    sf.write(tmp_path / "one.wav", np.asarray(test_split(run)[0].inputs["audio"]), 16000)
    res = CliRunner().invoke(cli, ["predict", str(tiny_run), "--input", f"audio={tmp_path / 'one.wav'}", "--input", "text=hello world", "-o", str(tmp_path / "one.jsonl")])
    assert res.exit_code == 0, res.output
    [row] = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert row["class"] in run.classes and row["id"] == "0"
    res = CliRunner().invoke(cli, ["predict", str(tiny_run), "--input", "text=hello"])
    assert res.exit_code == 0 and "predictions" in res.output  # audio missing: the head handles it


def test_cli_evaluate_a_data_set_config(tiny_run, tmp_path):
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"data": TINY["data"]}))
    res = CliRunner().invoke(cli, ["evaluate", str(tiny_run), str(tmp_path / "data.yaml"), "--split", "test"])
    assert res.exit_code == 0, res.output
    assert "wa" in res.output


def test_cli_errors_are_one_paragraph(run, tiny_run, tmp_path):
    manifest = write_manifest(run, tmp_path / "x")
    manifest.write_text(manifest.read_text().replace(",class1\n", ",nope\n", 1))
    res = CliRunner().invoke(cli, ["evaluate", str(tiny_run), str(manifest)])
    assert res.exit_code == 2 and "'nope' is not a class" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["predict", str(tmp_path / "norun"), str(manifest)])
    assert res.exit_code == 2 and "no such run directory" in res.output
    res = CliRunner().invoke(cli, ["predict", str(tiny_run)])
    assert res.exit_code == 2 and "Nothing to run on" in res.output


# -- input readers: a plugin contract (register_input_readers) ---------------------------------------
def test_a_plugin_adds_an_input_kind(run, tmp_path):
    """A kind registered through register_input_readers reads the values of --kind MODALITY=KIND,
    files relative to the manifest included."""
    from multiturbo import hookimpl
    from multiturbo.inference import modality_kinds
    from multiturbo.plugins import get_registries, plugin_registered
    from multiturbo.reader import InputReader

    seen = []

    class TextFileReader(InputReader):
        """Text kept in files: the value is a path to a UTF-8 file."""

        files = True

        def read(self, value):
            seen.append(value)
            return value.read_text(encoding="utf-8")

    class Plugin:
        @hookimpl
        def register_input_readers(self, register):
            register("text_file", TextFileReader)

    texts = [s.inputs["text"] for s in test_split(run)]
    for i, t in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(t, encoding="utf-8")
    manifest = write_manifest(run, tmp_path, labels=False)
    rows = list(csv.DictReader(manifest.open()))
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "text": f"{i}.txt"} for i, r in enumerate(rows))
    with plugin_registered(Plugin(), "text-files"):
        assert "text_file" in get_registries().input_readers
        assert modality_kinds(run, {"text": "text_file"})["text"] == "text_file"
        out = run_inputs(run, read_inputs(run, manifest, kinds={"text": "text_file"}), kinds={"text": "text_file"}, workers=0)  # read here: `seen` is this process's
    assert sorted(seen) == sorted(tmp_path / f"{i}.txt" for i in range(len(texts)))  # each file read once (in batches by length)
    expected = run_inputs(run, read_inputs(run, write_manifest(run, tmp_path / "plain", labels=False)))
    torch.testing.assert_close(out.probs, expected.probs)


def test_an_unknown_kind_lists_the_registered_ones(run):
    with pytest.raises(MultiturboError, match=r"must be one of \['audio', 'image', 'text'\], got 'video'"):
        run_inputs(run, read_inputs(run, [{"audio": np.zeros(500, np.float32), "text": "a"}]), kinds={"text": "video"})


def test_length_sorted_batches_return_rows_in_input_order(run):
    rng = np.random.default_rng(0)
    items = [{"audio": rng.standard_normal(n).astype(np.float32) * 0.1, "text": " ".join(["word"] * (1 + n % 5))}
             for n in (300, 2000, 500, 1200, 800, 100, 1600)]
    inputs = Inputs(items, [f"i{k}" for k in range(len(items))])
    from multiturbo.inference import length_sorted_batches, modality_readers

    batches = length_sorted_batches(inputs, modality_readers(run), 3)
    assert batches[0] == [1, 6, 3] and sorted(i for b in batches for i in b) == list(range(7))  # longest first
    together = run_inputs(run, inputs, batch_size=3)
    alone = [run_inputs(run, Inputs([item], ["x"]), batch_size=1) for item in items]
    assert together.ids == inputs.ids
    torch.testing.assert_close(together.probs, torch.cat([a.probs for a in alone]), atol=1e-5, rtol=1e-5)
    for m in ("audio", "text"):
        torch.testing.assert_close(together.views[m], torch.cat([a.views[m] for a in alone]), atol=1e-5, rtol=1e-5)


def test_worker_processes_read_the_files_and_give_the_same_rows(run, tmp_path):
    inputs = read_inputs(run, write_manifest(run, tmp_path / "w", labels=False))
    here = run_inputs(run, inputs, batch_size=4)
    workers = run_inputs(run, inputs, batch_size=4, workers=2)
    torch.testing.assert_close(workers.probs, here.probs, rtol=0, atol=0)
    assert workers.ids == here.ids == inputs.ids


def test_the_gpu_split_workers_collate_this_process_runs_the_model_gives_the_same_rows(run, tmp_path, monkeypatch):
    """With a GPU the workers only read and collate and this process runs the model (no GPU here: the same
    split forced on the CPU); the rows equal the CPU split's, where the workers run the model too."""
    import multiturbo.inference as inference

    inputs = read_inputs(run, write_manifest(run, tmp_path / "g", labels=False))
    in_workers = run_inputs(run, inputs, batch_size=4, workers=2)
    monkeypatch.setattr(inference, "_model_in_loader", lambda device: False)
    here = run_inputs(run, inputs, batch_size=4, workers=2)
    torch.testing.assert_close(here.probs, in_workers.probs, rtol=0, atol=1e-6)
    for m in here.views:
        torch.testing.assert_close(here.views[m], in_workers.views[m], rtol=0, atol=1e-6)
    assert here.ids == in_workers.ids == inputs.ids


def test_predict_with_workers_and_progress_lines_in_a_log(tiny_run, tmp_path, monkeypatch):
    manifest = write_manifest(load_run(tiny_run), tmp_path / "m", labels=False)
    monkeypatch.setenv("MULTITURBO_PROGRESS_INTERVAL", "0")  # a line after every batch
    res = CliRunner().invoke(cli, ["predict", str(tiny_run), str(manifest), "-o", str(tmp_path / "w.csv"), "--workers", "2", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "prediction: 1/" in res.output and "items/s" in res.output  # CliRunner's output is not a terminal: plain lines
    quiet = CliRunner().invoke(cli, ["predict", str(tiny_run), str(manifest), "-o", str(tmp_path / "q.csv"), "-q", "--batch-size", "4"])
    assert quiet.exit_code == 0 and "items/s" not in quiet.output
    assert (tmp_path / "w.csv").read_text() == (tmp_path / "q.csv").read_text()


def test_a_bad_file_read_in_a_worker_is_one_paragraph(tiny_run, tmp_path):
    manifest = write_manifest(load_run(tiny_run), tmp_path / "bad", labels=False)
    (tmp_path / "bad" / "item3.wav").write_bytes(b"not audio")
    res = CliRunner().invoke(cli, ["predict", str(tiny_run), str(manifest), "-q", "--workers", "2", "-o", str(tmp_path / "p.csv")])
    assert res.exit_code == 2, res.output
    assert "item3.wav cannot be read" in res.output and "Traceback" not in res.output and "worker" not in res.output


def test_auto_workers_by_device_and_cores():
    from multiturbo.inference import MAX_AUTO_WORKERS, auto_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert auto_workers(cpu, 1, cpus=16) == 0 and auto_workers(gpu, 1, cpus=16) == 0  # one batch: nothing to overlap
    assert [auto_workers(cpu, 100, cpus=n) for n in (1, 2, 4, 6)] == [0, 2, 4, 6]  # one per core, each runs the forward too; none on one core
    assert [auto_workers(gpu, 100, cpus=n) for n in (1, 2, 4)] == [0, 1, 3]  # all but this process's core
    assert auto_workers(cpu, 100, cpus=64) == auto_workers(gpu, 100, cpus=64) == MAX_AUTO_WORKERS
    assert auto_workers(gpu, 3, cpus=16) == 3  # never more workers than batches


def test_the_pass_matches_the_former_input_order_pass(run, tmp_path):
    """run_inputs (length-sorted batches; workers by default, 1 worker and none; the workers running
    the forward; 16-bit WAV files read with the wave module; inference mode) gives the probabilities
    and views of the pass as it was before (input-order batches read here with libsndfile's float
    conversion), rows in input order, and leaves the thread count as it found it."""
    from multiturbo.audio import Waveform
    from multiturbo.data import Collator
    from multiturbo.dataset import Sample
    from multiturbo.model import eval_pass

    rng = np.random.default_rng(3)
    (tmp_path / "w").mkdir()
    rows = []
    for i, seconds in enumerate(rng.uniform(0.1, 1.5, 13)):  # lengths in no order, at twice the encoder's rate
        sf.write(tmp_path / "w" / f"{i}.wav", rng.standard_normal(int(seconds * 2 * RATE)) * 0.1, 2 * RATE, subtype="PCM_16")
        rows.append({"id": f"u{i}", "audio": f"w/{i}.wav", "text": " ".join(rng.choice(["yes", "no", "well", "so"], 1 + i % 4))})
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "audio", "text"])
        w.writeheader()
        w.writerows(rows)
    inputs = read_inputs(run, manifest)

    collator, bs = Collator(run.model.encoders, num_classes=len(run.classes)), 4
    def read(row):
        samples, rate = sf.read(tmp_path / row["audio"], dtype="float32", always_2d=True)
        return Sample({"audio": Waveform(samples.mean(axis=1), rate), "text": row["text"]}, 0, {})
    before = eval_pass(run.model, (collator([read(r) for r in rows[j:j + bs]]) for j in range(0, len(rows), bs)), run.device)

    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # whatever the workers do with their threads, this process keeps its own
    try:
        outs = {workers: run_inputs(run, inputs, batch_size=bs, workers=workers) for workers in (None, 1, 0)}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    for out in outs.values():
        assert out.ids == [r["id"] for r in rows]
        torch.testing.assert_close(out.probs, before.probs, atol=1e-5, rtol=1e-5)
        for m in ("audio", "text"):
            torch.testing.assert_close(out.views[m], before.views[m], atol=1e-5, rtol=1e-5)
    out.probs.add_(0)  # a plain tensor, not an inference-mode one: the caller may change it in place
