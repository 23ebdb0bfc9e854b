"""The run directory: the one owner of every file a run writes and reads back.

- :mod:`.layout`: every file name, and what ``--overwrite`` removes;
- :mod:`.write`: preparing the directory, config.yaml, the run.json lifecycle, epoch records,
  weights, test metrics and predictions, analysis and report files, the encoders' assets;
- :mod:`.read`: run.json, the saved config, metrics, the epoch log, analysis; the version
  check and the resume check;
- :mod:`.load`: :func:`load_run`, the trained model back from a finished run.

No other module opens a run-directory file by name: they call this package.
"""

from ..errors import RunDirError
from .layout import CHECKPOINT
from .load import LoadedRun, build_encoders, load_run, make_eval_loader, resolved_config, test_split
from .read import (
    ItemPredictions, binding_digest, check_binding, check_resumable, check_version, finished_metrics, has_figure, read_analysis, read_info, read_log, read_saved_config,
    read_test_metrics, read_test_predictions, report_target, run_seconds, same_config, tracked_outputs,
)
from .write import (
    RunInfo, RunLock, check_run_dir, checkpoint_path, copy_preprocessing, default_run_dir, export_assets, figure_path, fresh_tensorboard_dir, load_best,
    prepare_run_dir, remove_checkpoint, save_best, truncate_log, write_analysis_file, write_config, write_epoch, write_report,
    write_splits, write_test_metrics, write_test_predictions, weights_metadata,
)

__all__ = [
    "CHECKPOINT", "LoadedRun", "RunDirError", "RunInfo", "RunLock", "binding_digest", "build_encoders", "check_binding", "check_resumable", "check_run_dir", "check_version", "checkpoint_path",
    "copy_preprocessing", "resolved_config",
    "default_run_dir", "export_assets", "figure_path", "finished_metrics", "fresh_tensorboard_dir", "has_figure", "load_best",
    "load_run", "make_eval_loader", "prepare_run_dir", "read_analysis", "read_info", "read_log", "read_saved_config",
    "read_test_metrics", "read_test_predictions", "remove_checkpoint", "report_target", "run_seconds", "same_config", "save_best", "test_split", "tracked_outputs",
    "truncate_log", "weights_metadata", "write_analysis_file", "write_config", "write_epoch", "write_report", "write_splits", "write_test_metrics", "write_test_predictions", "ItemPredictions",
]
