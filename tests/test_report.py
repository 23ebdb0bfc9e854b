"""Run and comparison reports (markdown with relative figure links) and the TensorBoard export."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from multiturbo import tensorboard as tb
from multiturbo.analysis import analyze_run
from multiturbo.rundir import read_log as read_metrics_log
from multiturbo.errors import MultiturboError
from multiturbo.report import markdown_table, write_comparison_report, write_run_report


def image_links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_run_report_before_and_after_analysis(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    shutil.rmtree(run_dir / "analysis")  # as a run written before run_experiment analysed its test split
    md = write_run_report(run_dir).read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['wa']:.4f}" in md and f"{metrics['ua']:.4f}" in md
    assert "Not analysed yet" in md and "multiturbo analyze" in md
    assert image_links(md) == ["analysis/confusion.png", "analysis/learning_curves.png"]

    result = analyze_run(run_dir)
    md = write_run_report(run_dir).read_text()
    assert "Not analysed yet" not in md
    assert f"| audio~text | {result['alignment']['audio~text']:.4f} |" in md
    assert f"| text | {result['uniformity']['text']:.4f} |" in md
    links = image_links(md)
    assert links == ["analysis/confusion.png", "analysis/learning_curves.png", "analysis/align_uniform.png", "analysis/embeddings.png"]
    assert all((run_dir / link).is_file() and not link.startswith("/") for link in links)


def test_run_report_needs_a_run_directory(tmp_path):
    with pytest.raises(MultiturboError, match="no run.json"):
        write_run_report(tmp_path)


def test_comparison_report_links_relative_to_its_directory(tiny_run, tmp_path):
    out = tmp_path / "cmp"
    fig = out / "figures" / "align_uniform.png"
    fig.parent.mkdir(parents=True)
    fig.write_bytes(b"png")
    table = markdown_table(["method", "WA"], [["Vanilla", "0.70"], ["+ Turbo", "0.76"]])
    path = write_comparison_report(
        out, table, [("Paired comparison", "turbo vs vanilla: p = 0.01")], [fig],
        title="IEMOCAP", run_dirs=[tiny_run],
    )
    md = path.read_text()
    assert path == out / "report.md" and md.startswith("# IEMOCAP\n")
    assert "| + Turbo | 0.76 |" in md and "## Paired comparison\n\nturbo vs vanilla: p = 0.01" in md
    assert image_links(md) == ["figures/align_uniform.png"]
    run_link = re.search(r"- \[run\]\(([^)]+)\)", md).group(1)
    assert (out / run_link).resolve() == (tiny_run / "report.md").resolve()  # a run links to its own report


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


@pytest.mark.skipif(not tb.tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_events_hold_the_log(tiny_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    out = tb.export_tensorboard(run_dir)
    assert tb.export_tensorboard(run_dir) == out == run_dir / "tensorboard"  # a second export replaces the first
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/contrastive", "val/wa", "val/ua", "term/audio1~text2", "term/text1~text2",
            "lr/audio", "lr/text", "lr/projections", "lr/head"} <= tags
    assert not any("confusion" in t for t in tags)
    records = read_metrics_log(run_dir)
    ce = acc.Scalars("train/ce")
    assert [e.step for e in ce] == [r["epoch"] for r in records]
    assert [e.value for e in ce] == pytest.approx([r["train"]["ce"] for r in records])
    assert [e.value for e in acc.Scalars("term/audio1~text2")] == pytest.approx([r["terms"]["audio1~text2"] for r in records])
    assert [e.value for e in acc.Scalars("val/ua")] == pytest.approx([r["val"]["ua"] for r in records])
    assert [e.value for e in acc.Scalars("lr/head")] == pytest.approx([r["lr"]["head"] for r in records])


def test_tensorboard_is_skipped_silently_without_the_package(tiny_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("tensorboard"))
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    assert tb.export_tensorboard(run_dir) is None
    assert not (run_dir / "tensorboard").exists()
