"""Weights as safetensors (no pickle), written atomically (temporary file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's state (parameters and buffers) to ``path`` atomically."""
    _atomic(Path(path), lambda tmp: save_model(model, tmp))


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights written by :func:`save_weights` into ``model`` (strict)."""
    load_model(model, str(path), strict=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (NaN becomes null so any JSON reader accepts the file)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and x != x:
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    text = json.dumps(clean(data), indent=2)
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
