"""multiturbo: multi-modal classification with Turbo contrastive learning.

The public objective is :func:`turbo_loss`; encoders, data sets and heads are plugins
(see :mod:`multiturbo.hookspecs`).
"""

from .api import load  # a trained run for inference: predict, embed, evaluate
from .dataset import Dataset, DatasetOptions, Sample, Splits
from .encoder import Encoder, EncoderOptions
from .errors import ConfigError, DataError, MultiturboError, PluginError
from .head import Head, HeadOptions
from .hookspecs import hookimpl
from .loss import TurboLoss, TurboLossOutput, info_nce, turbo_loss
from .version import __version__

__all__ = [
    "ConfigError", "DataError", "Dataset", "DatasetOptions", "Encoder", "EncoderOptions", "Head", "HeadOptions",
    "MultiturboError", "PluginError", "Sample", "Splits", "TurboLoss", "TurboLossOutput", "hookimpl", "info_nce", "load",
    "turbo_loss", "__version__",
]
