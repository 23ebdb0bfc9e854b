"""Every file of a run directory, by name; the one place that knows them.

::

    config.yaml             the resolved config (every plugin option filled in)
    run.json                classes, modalities, versions, device, status and timings
    metrics.jsonl           one line per epoch: train losses (CE, every Turbo term), val metrics
    best.safetensors        weights at the best val epoch;  last.safetensors: after the last epoch
    checkpoint.safetensors  the resumable training state (while the run is not finished)
    metrics.json            test metrics of the best weights (multiturbo.metrics), confusion matrix
    test_predictions.csv    each test item's predicted class by the best weights (item, id, label, pred), what metrics.json scores
    assets.json, assets/    what the encoders need to be rebuilt offline (option overrides, files)
    analysis/               analysis.json (alignment / uniformity of the test embeddings) and figures
    tensorboard/            event files of metrics.jsonl (when tensorboard is installed)
    report.md               the run's report: metrics, figures, analysis
    transcripts.json        ASR transcripts of prediction inputs (--transcribe), a cache kept by --overwrite
    splits.json             the ids of the items of each split (train / val / test), to reproduce or extend the evaluation
    run.lock                while a process trains in the directory: its process id and host
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
INFO = "run.json"
LOG = "metrics.jsonl"
TEST_METRICS = "metrics.json"
TEST_PREDICTIONS = "test_predictions.csv"  # one row per test item: what metrics.json's wa / ua / f1 were computed from
BEST = "best.safetensors"
LAST = "last.safetensors"
CHECKPOINT = "checkpoint.safetensors"
REPORT = "report.md"
ASSETS_FILE = "assets.json"
ASSETS_DIR = "assets"
ANALYSIS_DIR = "analysis"
ANALYSIS_FILE = "analysis.json"  # inside ANALYSIS_DIR
TENSORBOARD_DIR = "tensorboard"
TRANSCRIPTS = "transcripts.json"  # multiturbo.transcribe: a cache, not a training output
SPLITS = "splits.json"  # the ids of the items of each split (multiturbo.composition.split_membership)
LOCK = "run.lock"  # the process id and host of the process training in the directory (rundir.write.RunLock)

# What --overwrite removes (and nothing else: a user's own files in the directory stay).
RUN_FILES = (CONFIG, INFO, LOG, TEST_METRICS, TEST_PREDICTIONS, BEST, LAST, CHECKPOINT, REPORT, ASSETS_FILE, SPLITS)
RUN_DIRS = (ANALYSIS_DIR, TENSORBOARD_DIR, ASSETS_DIR)
# What a finished run needs to be loaded.
REQUIRED_FILES = (CONFIG, INFO, BEST)


def path(run_dir: str | Path, name: str) -> Path:
    """``run_dir / name`` for one of the names above."""
    return Path(run_dir) / name


def analysis_path(run_dir: str | Path, name: str = ANALYSIS_FILE) -> Path:
    """A file of ``analysis/``: ``analysis.json`` or a figure (``confusion.png``...)."""
    return Path(run_dir) / ANALYSIS_DIR / name
