"""multiturbo: multi-modal classification with Turbo contrastive learning.

The public objective is :func:`turbo_loss`; encoders, data sets and heads are plugins
(see :mod:`multiturbo.hookspecs`).
"""

from typing import TYPE_CHECKING, Any

from .dataset import Dataset, DatasetOptions, Sample, Splits
from .errors import ConfigError, DataError, MultiturboError, PluginError
from .hookspecs import hookimpl
from .version import __version__

# The names below import torch (seconds): they are loaded on first access (PEP 562), so that
# `multiturbo run bad.yaml` reports a config error before torch is imported.
if TYPE_CHECKING:
    from .api import load  # a trained run for inference: predict, embed, evaluate
    from .encoder import Encoder, EncoderOptions
    from .head import Head, HeadOptions
    from .loss import TurboLoss, TurboLossOutput, info_nce, turbo_loss


def __getattr__(name: str) -> Any:
    if name == "load":
        from . import api as module
    elif name in ("Encoder", "EncoderOptions"):
        from . import encoder as module
    elif name in ("Head", "HeadOptions"):
        from . import head as module
    elif name in ("TurboLoss", "TurboLossOutput", "info_nce", "turbo_loss"):
        from . import loss as module
    else:
        raise AttributeError(f"module 'multiturbo' has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


__all__ = [
    "ConfigError", "DataError", "Dataset", "DatasetOptions", "Encoder", "EncoderOptions", "Head", "HeadOptions",
    "MultiturboError", "PluginError", "Sample", "Splits", "TurboLoss", "TurboLossOutput", "hookimpl", "info_nce", "load",
    "turbo_loss", "__version__",
]
