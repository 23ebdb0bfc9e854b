"""The demo's contrastive terms learn (no collapse) with the defaults, and a collapsing setting is warned about.

docs/training-dynamics.md has the measurements behind these bounds; the bounds are loose on purpose
(they state what "learning" means, not a figure to hit): cross-modal terms clearly below log(B),
validation recall@1 several times chance, uniformity far from 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multiturbo.config import load_config
from multiturbo.run import run_experiment

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cross(ratios: dict[str, float]) -> list[float]:
    return [r for name, r in ratios.items() if name.startswith("audio") and "~text" in name]


@pytest.mark.parametrize("method", ["turbo"])
def test_the_demo_defaults_learn_a_shared_space(tmp_path, method):
    cfg = load_config(DEMO, [f"method={method}", "train.epochs=10", "train.patience=null"])
    run_experiment(cfg, tmp_path / "run")
    last = _records(tmp_path / "run")[-1]
    d = last["diagnostics"]
    cross = _cross(d["term_ratio"])
    assert cross and max(cross) < 0.8, d["term_ratio"]  # well below log(B)
    assert min(d["recall@1"].values()) > 5 * d["chance_recall@1"], d["recall@1"]
    assert max(d["uniformity"].values()) < -1.5, d["uniformity"]
    assert "warnings" not in last
    analysis = json.loads((tmp_path / "run" / "analysis" / "analysis.json").read_text())
    assert min(r["recall@1"] for r in analysis["retrieval"].values()) > 5 / analysis["n_items"]


def test_the_users_collapse_is_detected_and_reported(tmp_path):
    """The reproduction from the issue: the paper's projection, an almost pure cross-modal objective and
    modalities that share no item-level content. The audio space collapses; the run says so."""
    cfg = load_config(DEMO, ["method=cross", "turbo.ce_weight=0.01", "model.feature_norm=none",
                             "data.options.shared_content=0", "train.epochs=4", "train.patience=null"])
    run_experiment(cfg, tmp_path / "run")
    records = _records(tmp_path / "run")
    assert records[-1]["diagnostics"]["uniformity"]["audio"] > -0.3
    warnings = [w for r in records for w in r.get("warnings", [])]
    assert any("Uniformity approaches 0" in w and "audio" in w for w in warnings)
    assert any("sit at log(B)" in w for w in warnings)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "**Warning**" in report and "Likely causes and fixes" in report
