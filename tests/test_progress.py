"""Progress: an epoch bar and a step bar with the live loss and an ETA; quiet shows nothing."""

from __future__ import annotations

import copy
import io

import pytest

from rich.console import Console

from multiturbo.config import check_config, validate_config
from multiturbo.progress import ProgressReporter
from multiturbo.run import run_experiment


class Recorder(ProgressReporter):
    """Records what the training loop tells the display."""

    def __init__(self):
        super().__init__(quiet=True)
        self.calls: list[tuple] = []

    def start_epochs(self, description, total, completed=0):
        self.calls.append(("epochs", total, completed))

    def epoch_done(self, status=""):
        self.calls.append(("epoch_done", status))

    def start(self, description, total, completed=0):
        self.calls.append(("start", description, total))

    def advance(self, status="", items=0):
        self.calls.append(("advance", status, items))

    def finish_epochs(self):
        self.calls.append(("finish",))


def test_training_drives_an_epoch_bar_and_a_step_bar_with_the_live_loss(tiny_raw, tmp_path):
    raw = copy.deepcopy(tiny_raw)
    rec = Recorder()
    run_experiment(check_config(validate_config(raw)), tmp_path / "run", progress=rec)
    kinds = [c[0] for c in rec.calls]
    assert rec.calls[0] == ("epochs", 2, 0) and kinds.count("epoch_done") == 2 and kinds.count("finish") == 1
    starts = [c for c in rec.calls if c[0] == "start" and c[1].startswith("epoch") and "validation" not in c[1]]
    assert [s[1] for s in starts] == ["epoch 1/2", "epoch 2/2"]
    steps = [c for c in rec.calls if c[0] == "advance"]
    assert len(steps) >= 2 * starts[0][2] - 1 and all(s[1].startswith("loss ") for s in steps[:3])
    assert all(c[1].startswith("val ua ") for c in rec.calls if c[0] == "epoch_done")
    assert sum(s[2] for s in steps[: starts[0][2]]) > 0  # the batches' items are counted (items/s)
    assert [c[1] for c in rec.calls if c[0] == "start" and "validation" in c[1]] == ["epoch 1 validation", "epoch 2 validation"]


def test_metrics_jsonl_records_items_per_second_and_peak_memory(tiny_raw, tmp_path):
    import json

    run_experiment(check_config(validate_config(tiny_raw)), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["items_per_s"] > 0 and r["peak_memory"]["cpu_rss_mb"] > 10  # a Python process with torch holds far more than 10 MiB
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["items_per_s"] == pytest.approx(sum(r["items_per_s"] for r in records) / 2)
    assert info["peak_memory"]["cpu_rss_mb"] == max(r["peak_memory"]["cpu_rss_mb"] for r in records)


def test_the_bars_show_description_status_and_eta():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with ProgressReporter(console=console) as progress:
        progress.start_epochs("epochs", total=3)
        progress.start("epoch 1/3", total=10)
        progress.advance("loss 0.1234")
        progress.epoch_done("val ua 0.500")
        progress._progress.refresh()
        shown = buf.getvalue()
    assert "epochs" in shown and "epoch 1/3" in shown and "loss 0.1234" in shown and "val ua 0.500" in shown and "eta" in shown


def test_quiet_shows_nothing():
    buf = io.StringIO()
    with ProgressReporter(quiet=True, console=Console(file=buf, force_terminal=True)) as progress:
        progress.start_epochs("epochs", total=3)
        progress.start("epoch 1/3", total=10)
        progress.advance("loss 0.1")
        progress.log("a line")
    assert buf.getvalue() == ""


def test_without_a_terminal_plain_lines_come_every_interval_with_items_per_second_and_eta():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with ProgressReporter(console=console, interval=0.0) as progress:
        progress.start("epoch 1/3", total=4)
        progress.advance("loss 0.5", items=8)
        progress.advance("loss 0.4", items=8)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("epoch 1/3: 2/4 batches, ") and "items/s" in lines[1] and "eta 0:00:0" in lines[1] and lines[1].endswith("loss 0.4")
    buf2 = io.StringIO()
    with ProgressReporter(console=Console(file=buf2, force_terminal=False), interval=3600) as progress:
        progress.start("epoch 1/3", total=4)
        progress.advance("loss 0.5", items=8)
    assert buf2.getvalue() == ""  # not yet an interval


def test_a_resumed_bar_counts_items_per_second_from_the_new_batches_only():
    progress = ProgressReporter(console=Console(file=io.StringIO(), force_terminal=False), interval=3600)
    progress.start("epoch 2/3", total=10, completed=6)
    assert progress.items_per_second() == 0.0
    progress.advance(items=4)
    assert progress.plain_line().startswith("epoch 2/3: 7/10 batches") and progress.items_per_second() > 0


def test_consoles_writing_to_a_file_or_pipe_are_wide(monkeypatch):
    from multiturbo.progress import PLAIN_WIDTH, make_console

    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # pytest captures the output: not a terminal
    assert not console.is_terminal and console.width == PLAIN_WIDTH
