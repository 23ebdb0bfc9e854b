"""Experiment configs: schema, presets, YAML loading, overrides and checks."""

from .diff import RESUME_MAY_CHANGE, config_differences, describe_differences, result_relevant
from .load import apply_overrides, apply_values, check_config, config_to_yaml, load_config, load_raw, validate_config
from .schema import GROUP_PARTS, PRESETS, DataConfig, ScheduleConfig, ExperimentConfig, ModalityConfig, ModelConfig, SearchRange, TrainConfig, TuneConfig, TurboConfig

__all__ = [
    "GROUP_PARTS", "PRESETS", "DataConfig", "ScheduleConfig", "ExperimentConfig", "ModalityConfig", "ModelConfig", "SearchRange", "TrainConfig", "TuneConfig", "TurboConfig",
    "RESUME_MAY_CHANGE", "config_differences", "describe_differences", "result_relevant",
    "apply_overrides", "apply_values", "check_config", "config_to_yaml", "load_config", "load_raw", "validate_config",
]
