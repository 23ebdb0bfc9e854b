"""multiturbo export --format onnx: the graph's probabilities equal PyTorch's; the runner; bad input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import TINY

from multiturbo.cli import cli
from multiturbo.errors import DataError, MultiturboError
from multiturbo.export import OnnxRunner, export_onnx
from multiturbo.inference import Inputs, run_inputs
from multiturbo.rundir import load_run
from conftest import import_tiny_hf

onnx = pytest.importorskip("onnx", reason="the export needs onnx (the onnx extra)")
pytest.importorskip("onnxruntime", reason="the ONNX runner needs onnxruntime (the onnx extra)")

RATE = TINY["data"]["options"]["sample_rate"]


def new_items(n: int = 5) -> list[dict]:
    """Items of other lengths and another batch size than the export's examples (2 items)."""
    rng = np.random.default_rng(7)
    texts = ["one", "two words", "", "a much longer text than any example had, with many words in it", "x y z"]
    return [{"audio": (0.1 * rng.standard_normal(int(RATE * s)).astype(np.float32), RATE), "text": texts[i % 5]}
            for i, s in zip(range(n), (0.2, 1.7, 0.5, 0.9, 0.05))]


def _same_as_pytorch(run, model_path: Path, items: list[dict]) -> None:
    expected = run_inputs(run, Inputs(items, [str(i) for i in range(len(items))])).probs.numpy()
    got = OnnxRunner(model_path).predict_proba(items, batch_size=len(items))
    assert got.shape == expected.shape == (len(items), len(run.classes))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_builtin_encoders_export_with_dynamic_axes(tiny_run, tmp_path):
    run = load_run(tiny_run)
    assert run.config.model.feature_norm == "batch"  # the running statistics are in the graph
    done = export_onnx(run, tmp_path / "out" / "model.onnx")
    assert done.max_abs_diff is not None and done.max_abs_diff < 1e-4
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.onnx", "model.json", "model.preprocess", "model_runner.py"}
    graph = onnx.load(str(done.model)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"audio.waveform": ["batch", "audio.waveform.dim1"], "audio.lengths": ["batch"],
                    "text.tokens": ["batch", "text.tokens.dim1"], "text.mask": ["batch", "text.mask.dim1"]}
    meta = json.loads(done.meta.read_text())
    assert meta["classes"] == run.classes and meta["output"]["shape"] == ["batch", len(run.classes)]
    assert "every item needs every modality" in meta["missing_modalities"]
    _same_as_pytorch(run, done.model, new_items(5))
    _same_as_pytorch(run, done.model, new_items(1))
    assert not run.model.training  # the loaded run is left in eval mode


def test_the_runner_script_and_the_cli(tiny_run, tmp_path):
    res = CliRunner().invoke(cli, ["export", str(tiny_run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "onnxruntime vs PyTorch" in res.output
    items = new_items(3)
    lines = []
    for i, item in enumerate(items):
        sf.write(tmp_path / f"a{i}.wav", item["audio"][0], RATE, subtype="FLOAT")
        lines.append(json.dumps({"audio": f"a{i}.wav", "text": item["text"]}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    env = {**__import__("os").environ, "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, str(tmp_path / "m_runner.py"), str(tmp_path / "items.jsonl")], capture_output=True, text=True, env=env, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    run = load_run(tiny_run)
    expected = run_inputs(run, Inputs(items, ["0", "1", "2"])).probs.numpy()
    got = np.array([[r["probabilities"][c] for c in run.classes] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_the_runner_refuses_an_item_missing_a_modality(tiny_run, tmp_path):
    done = export_onnx(load_run(tiny_run), tmp_path / "m.onnx")
    with pytest.raises(DataError, match=r"no 'text' input; the ONNX graph takes every modality.*PyTorch model"):
        OnnxRunner(done.model).predict_proba([{"audio": new_items(1)[0]["audio"]}])


def test_an_encoder_that_cannot_be_exported_is_named(tiny_run, tmp_path):
    run = load_run(tiny_run)
    text = run.model.encoders["text"]
    original = text.forward
    text.forward = lambda batch: torch.cumprod(original(batch), dim=-1)  # aten::cumprod has no ONNX form
    with pytest.raises(MultiturboError, match=r"the encoder of modality text \(encoder 'hashed_transformer'\).*UnsupportedOperatorError"):
        export_onnx(run, tmp_path / "m.onnx")
    with pytest.raises(MultiturboError, match=r"an \.onnx file"):
        export_onnx(run, tmp_path / "m.pt")




@pytest.mark.parametrize("modality, encoder, family", [("text", "hf_text", "bert"), ("audio", "hf_audio", "wav2vec2"), ("audio", "hf_whisper", "whisper")])
def test_hugging_face_encoders_export(modality, encoder, family, tmp_path):
    pytest.importorskip("transformers")
    from multiturbo.config import check_config, validate_config
    from multiturbo.run import run_experiment

    tiny_hf = import_tiny_hf()
    save = {"bert": tiny_hf._save_bert, "whisper": tiny_hf._save_whisper,
            "wav2vec2": lambda p: tiny_hf._save_audio(p, tiny_hf.transformers.Wav2Vec2Config, tiny_hf.transformers.Wav2Vec2Model)}[family]
    raw = copy.deepcopy(TINY)
    raw["modalities"][modality] = {"encoder": encoder, "options": {"model": save(tmp_path / family)}}
    if modality == "audio":
        raw["data"]["options"]["sample_rate"] = tiny_hf.RATE
    raw["train"]["epochs"] = 1
    run_experiment(check_config(validate_config(raw)), tmp_path / "run")
    run = load_run(tmp_path / "run")
    done = export_onnx(run, tmp_path / "out" / f"{family}.onnx")
    # the tokenizer / feature extractor travels with the export when the run saved it (hf_whisper saves no assets)
    assert (done.preprocess / "assets" / modality).is_dir() == (tmp_path / "run" / "assets" / modality).is_dir() == (encoder != "hf_whisper")
    rng = np.random.default_rng(3)
    rate = run.model.encoders["audio"].input_sample_rate
    texts = ["hello world", "this is a long sentence , much more text", "", "one two"]
    items = [{"audio": (0.1 * rng.standard_normal(int(rate * s)).astype(np.float32), rate), "text": t} for s, t in zip((0.2, 0.9, 0.5, 0.35), texts)]
    _same_as_pytorch(run, done.model, items)
