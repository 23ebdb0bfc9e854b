"""Self-contained run directories for the Hugging Face encoders (``Encoder.export_assets``).

A run's ``best.safetensors`` holds every weight of the model, HF encoders included, so a run
does not need the pretrained checkpoint again, only what rebuilds the encoder's *structure*
and preprocessing: the model config (with the dropout override as trained) and the tokenizer
(``hf_text``) or feature extractor (``hf_audio``, ``hf_whisper``). :func:`export_assets` saves
those with ``save_pretrained`` into the run's ``assets/<modality>/`` (a few kB to a few MB:
BERT's vocabulary, a feature extractor's JSON) and writes the marker file ``CONFIG_ONLY``.
:func:`multiturbo_hf._common.load` then builds the model with ``AutoModel.from_config`` (random initial weights,
replaced by ``best.safetensors`` when the run is loaded) instead of ``from_pretrained``: no
weights are duplicated and neither the hub nor the original directory is needed.

``export_assets(encoder, directory, weights=True)`` saves the full model as well
(``save_pretrained``: the size of the pretrained checkpoint again, e.g. 440 MB for
bert-base), for a loader that cannot build from a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_ONLY = "CONFIG_ONLY"  # marker file: the directory holds a config and preprocessing files, no weights


def export_assets(encoder: Any, directory: Path, *, weights: bool = False) -> dict[str, Any]:
    """Save an HF encoder's model config and tokenizer / feature extractor into ``directory``;
    return the option overrides that rebuild it from there, offline."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = encoder.model
    if weights:
        model.save_pretrained(directory)
    else:
        model.config.save_pretrained(directory)
        (directory / CONFIG_ONLY).write_text(
            "This directory holds a model config and its preprocessing files, not weights: the weights are in the run's "
            "best.safetensors. multiturbo_hf builds the model with AutoModel.from_config.\n",
            encoding="utf-8",
        )
    for attr in ("tokenizer", "extractor"):
        part = getattr(encoder, attr, None)
        if part is not None:
            part.save_pretrained(directory)
    return {"model": directory, "local_files_only": True}


def is_config_only(name: str) -> bool:
    """Whether the ``model`` option names a directory written by :func:`export_assets` without weights."""
    p = Path(name).expanduser()
    return p.is_dir() and (p / CONFIG_ONLY).is_file()

