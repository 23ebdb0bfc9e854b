"""multiturbo: multi-modal classification with Turbo contrastive learning.

The public objective is :func:`turbo_loss`; encoders, data sets and heads are plugins
(see :mod:`multiturbo.hookspecs`).
"""

__version__ = "0.1.0"

from .dataset import Dataset, DatasetOptions, Sample, Splits  # noqa: E402
from .encoder import Encoder, EncoderOptions  # noqa: E402
from .errors import ConfigError, DataError, MultiturboError, PluginError  # noqa: E402
from .head import Head, HeadOptions  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .loss import TurboLoss, TurboLossOutput, info_nce, turbo_loss  # noqa: E402



def load(run_dir, **kwargs):
    """Load a trained run directory for inference: see :func:`multiturbo.api.load` (predict, embed, evaluate)."""
    from .api import load as _load

    return _load(run_dir, **kwargs)


__all__ = [
    "ConfigError", "DataError", "Dataset", "DatasetOptions", "Encoder", "EncoderOptions", "Head", "HeadOptions",
    "MultiturboError", "PluginError", "Sample", "Splits", "TurboLoss", "TurboLossOutput", "hookimpl", "info_nce", "load",
    "turbo_loss", "__version__",
]
