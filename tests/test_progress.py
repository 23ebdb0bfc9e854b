"""Progress: an epoch bar and a step bar with the live loss and an ETA; quiet shows nothing."""

from __future__ import annotations

import copy
import io

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

    def start(self, description, total):
        self.calls.append(("start", description, total))

    def advance(self, status=""):
        self.calls.append(("advance", status))

    def finish_epochs(self):
        self.calls.append(("finish",))


def test_training_drives_an_epoch_bar_and_a_step_bar_with_the_live_loss(tiny_raw, tmp_path):
    raw = copy.deepcopy(tiny_raw)
    rec = Recorder()
    run_experiment(check_config(validate_config(raw)), tmp_path / "run", progress=rec)
    kinds = [c[0] for c in rec.calls]
    assert rec.calls[0] == ("epochs", 2, 0) and kinds.count("epoch_done") == 2 and kinds.count("finish") == 1
    starts = [c for c in rec.calls if c[0] == "start" and c[1].startswith("epoch")]
    assert [s[1] for s in starts] == ["epoch 1/2", "epoch 2/2"]
    steps = [c for c in rec.calls if c[0] == "advance"]
    assert len(steps) >= 2 * starts[0][2] - 1 and all(s[1].startswith("loss ") for s in steps[:3])
    assert all(c[1].startswith("val ua ") for c in rec.calls if c[0] == "epoch_done")


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
