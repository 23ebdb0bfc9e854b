"""Three modalities: 3 in-modal + 12 cross-modal terms at K = 2; the tri-modal configs work."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from multiturbo.build import build_experiment
from multiturbo.config import load_config
from multiturbo.data import Collator
from multiturbo.loss import pair_names
from multiturbo.model import PRESENT_KEY
from multiturbo.run import run_experiment

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
MODS = ["audio", "text", "image"]


def test_pair_counts_for_three_modalities_two_passes():
    names = pair_names(MODS, 2, True, True)
    inm = [n for n in names if n.split("~")[0][:-1] == n.split("~")[1][:-1]]
    assert inm == ["audio1~audio2", "text1~text2", "image1~image2"]
    assert len(names) - len(inm) == 12 and len(set(names)) == 15


def small_demo(extra=()):
    return load_config(CONFIGS / "tri_modal_demo.yaml", ["data.options.size=96", "train.epochs=1", *extra])


def test_demo_config_steps_with_fifteen_terms():
    cfg = small_demo()
    assert list(cfg.modalities) == MODS and cfg.turbo.passes == 2
    torch.manual_seed(0)
    exp = build_experiment(cfg)
    batch = Collator(exp.model.encoders, len(exp.dataset.classes))(list(exp.splits.train)[:16])
    opt = torch.optim.Adam(exp.model.parameters(), lr=1e-3)
    exp.model.train()
    for _ in range(2):
        out = exp.model.step(batch.inputs, batch.labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert list(out.terms) == pair_names(MODS, 2, True, True) and torch.isfinite(out.loss)


def test_demo_config_runs_end_to_end(tmp_path):
    metrics = run_experiment(small_demo(), tmp_path / "run")
    assert 0.0 <= metrics["wa"] <= 1.0


@pytest.fixture
def tri_manifest(tmp_path):
    """A tri-modal manifest: wav + text + png (some grayscale or RGBA, some missing), 4 speakers."""
    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    (tmp_path / "frames").mkdir()
    rows = []
    for i in range(32):
        label = ["neu", "ang"][(i // 4) % 2]  # every speaker (i % 4) has both classes, so any speaker split trains on both
        wav = f"clips/u{i}.wav"
        sf.write(tmp_path / wav, (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000)
        frame = ""
        if i % 4 != 3:  # every fourth item has no image
            frame = f"frames/u{i}.png"
            shape = [(12, 12, 3), (12, 12), (12, 12, 4)][i % 3]
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / frame)
        rows.append({"wav": wav, "transcript": f"{label} words number {i}", "frame": frame, "speaker": f"s{i % 4}", "label": label})
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


SMALL_ENCODERS = [
    "modalities.audio.encoder=logmel_cnn",
    "modalities.audio.options={sample_rate: 16000, n_mels: 16, channels: 4, output_dim: 16}",
    "modalities.text.encoder=hashed_transformer",
    "modalities.text.options={vocab_size: 128, dim: 16, layers: 1, heads: 2}",
    "modalities.image.options={model: test_vit, image_size: 32, drop_rate: 0.2}",
    "model.dim=16", "train.batch_size=8", "train.epochs=1", "train.lr=0.001",
]


def test_manifest_example_config_on_a_generated_manifest(tri_manifest, tmp_path):
    cfg = load_config(CONFIGS / "tri_modal_manifest_example.yaml")
    spec = cfg.data.options["modalities"]
    assert [spec[m]["kind"] for m in MODS] == MODS and spec["image"]["optional"] and not spec["audio"]["optional"]
    assert cfg.modalities["image"].encoder == "timm"
    cfg = load_config(CONFIGS / "tri_modal_manifest_example.yaml", [f"data.options.path={tri_manifest}", *SMALL_ENCODERS])
    exp = build_experiment(cfg)
    items = [*exp.splits.train, *exp.splits.val, *exp.splits.test]
    assert sum(s.inputs["image"] is None for s in items) == 8
    assert all(s.inputs["image"] is None or s.inputs["image"].shape[2] == 3 for s in items)  # RGB
    batch = Collator(exp.model.encoders, 2)(list(exp.splits.train)[:8])
    assert PRESENT_KEY in batch.inputs["image"] and PRESENT_KEY not in batch.inputs["audio"]
    metrics = run_experiment(cfg, tmp_path / "run")
    assert 0.0 <= metrics["wa"] <= 1.0


def test_manifest_without_optional_rejects_empty_image_cells(tri_manifest):
    from multiturbo.errors import DataError

    cfg = load_config(CONFIGS / "tri_modal_manifest_example.yaml",
                      [f"data.options.path={tri_manifest}", "data.options.modalities.image.optional=false", *SMALL_ENCODERS])
    with pytest.raises(DataError, match="optional: true"):
        build_experiment(cfg)
