"""Weights and training checkpoints as safetensors (no pickle), written atomically
(temporary file, then rename)."""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from .errors import MultiturboError


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` a temporary file beside ``path``, flush it to the disk, rename it over ``path``
    and flush the directory: a kill or a power cut leaves the old file or the new one. A write error
    (a full disk...) is a :class:`MultiturboError` naming the file; the old file stays intact."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":  # safetensors' own error for a failed write
            raise write_error(path, exc) from None
        raise


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename) to the disk, where the system allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. a file system that cannot sync directories
    finally:
        os.close(fd)


def write_error(path: Path, exc: BaseException) -> MultiturboError:
    """The error for a file that could not be written (disk full, no permission, I/O error)."""
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    return MultiturboError(
        f"Cannot write {path} ({reason}). Free space on its disk (or fix its permissions) and try again; the previous "
        f"version of the file, if any, is intact (a training run continues from its last checkpoint with --resume)."
    )


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the model's state (parameters and buffers) to ``path`` atomically, with ``metadata``
    (str -> str) in the safetensors header."""
    _atomic(Path(path), lambda tmp: save_model(model, tmp, metadata=metadata or None))


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


# -- training checkpoints -------------------------------------------------------------------------
#
# One safetensors file holds everything needed to continue a run bit for bit: the model's
# state, the optimizer's state (and a scheduler's / grad scaler's, when there is one), every
# RNG state, and the loop's position and bookkeeping. Tensors are stored as safetensors
# tensors; everything else (the structure of the state dicts, numbers, the loop state) is
# JSON in the file's metadata. Nothing is pickled; loading never runs code.

CHECKPOINT_FORMAT = "multiturbo-checkpoint/1"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``obj`` where each tensor is moved into ``tensors`` and replaced by
    ``{"__tensor__": key}``; dicts with non-str keys and tuples are tagged so they round-trip."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        wide = obj.astype(np.int64) if obj.dtype.kind == "u" else obj  # torch/safetensors lack most unsigned types
        return {"__ndarray__": _flatten(torch.from_numpy(np.ascontiguousarray(wide).copy()), prefix, tensors), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
        return {"__items__": [[k, _flatten(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"Cannot store a {type(obj).__name__} in a checkpoint (at {prefix}).")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return _unflatten(obj["__ndarray__"], tensors).numpy().astype(obj["dtype"])
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"Unknown checkpoint structure {sorted(obj)}")
    return obj


def rng_state() -> dict[str, Any]:
    """Every RNG state: Python ``random``, NumPy's global RNG, torch CPU, and CUDA if available."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda])


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    loop_state: dict[str, Any],
    *,
    scheduler: Any = None,
    scaler: Any = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a training checkpoint atomically (see the section comment above for its contents).

    ``loop_state`` is the training loop's JSON-able state (epoch, batch, step, early stopping...);
    ``metadata``: more str -> str entries for the header (the run directory's binding digest).
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = {
        "model": _flatten(model.state_dict(), "model", tensors),
        "optimizer": _flatten(optimizer.state_dict(), "optimizer", tensors) if optimizer is not None else None,
        "scheduler": _flatten(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None,
        "scaler": _flatten(scaler.state_dict(), "scaler", tensors) if scaler is not None else None,
        "rng": _flatten(rng_state(), "rng", tensors),
    }
    metadata = {
        **(metadata or {}),
        "format": CHECKPOINT_FORMAT,
        "structure": json.dumps(structure),
        "loop": json.dumps(loop_state),
    }
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


@dataclass
class Checkpoint:
    """A loaded checkpoint: state dicts (tensors on the CPU) and the loop's state."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: dict[str, Any]
    loop: dict[str, Any]


def read_header_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file's header (cheap: reads the header only); a
    MultiturboError naming the file when it is not a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise MultiturboError(
            f"{path} is not a safetensors file ({type(exc).__name__}: {str(exc)[:200]}). It is damaged or was replaced "
            f"by another file: restore it from a copy of the run directory, or train the run again."
        ) from None


def read_checkpoint_loop_state(path: str | Path) -> dict[str, Any]:
    """Only the loop state of a checkpoint (cheap: reads the header)."""
    meta = read_header_metadata(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise MultiturboError(f"{path} is not a multiturbo training checkpoint (format {meta.get('format')!r}).")
    return json.loads(meta["loop"])


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors + JSON; no code runs)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise MultiturboError(f"The checkpoint {path} cannot be read ({type(exc).__name__}: {exc}).") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise MultiturboError(f"{path} is not a multiturbo training checkpoint (format {meta.get('format')!r}).")
    s = {k: _unflatten(v, tensors) for k, v in json.loads(meta["structure"]).items()}
    return Checkpoint(s["model"], s["optimizer"], s["scheduler"], s["scaler"], s["rng"], json.loads(meta["loop"]))


def restore_checkpoint(
    ckpt: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    scheduler: Any = None,
    scaler: Any = None,
    rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint's states into the given objects (model strictly); returns the loop state."""
    model.load_state_dict(ckpt.model, strict=True)
    if optimizer is not None and ckpt.optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer)
    if scheduler is not None and ckpt.scheduler is not None:
        scheduler.load_state_dict(ckpt.scheduler)
    if scaler is not None and ckpt.scaler is not None:
        scaler.load_state_dict(ckpt.scaler)
    if rng:
        set_rng_state(ckpt.rng)
    return ckpt.loop
