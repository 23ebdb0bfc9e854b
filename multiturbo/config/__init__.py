"""Experiment configs: schema, presets, YAML loading, overrides and checks."""

from .diff import RESUME_MAY_CHANGE, config_differences, describe_differences, result_relevant
from .load import apply_overrides, check_config, config_to_yaml, load_config, load_raw, validate_config
from .schema import GROUP_PARTS, PRESETS, DataConfig, ScheduleConfig, ExperimentConfig, ModalityConfig, ModelConfig, TrainConfig, TurboConfig

__all__ = [
    "GROUP_PARTS", "PRESETS", "DataConfig", "ScheduleConfig", "ExperimentConfig", "ModalityConfig", "ModelConfig", "TrainConfig", "TurboConfig",
    "RESUME_MAY_CHANGE", "config_differences", "describe_differences", "result_relevant",
    "apply_overrides", "check_config", "config_to_yaml", "load_config", "load_raw", "validate_config",
]
