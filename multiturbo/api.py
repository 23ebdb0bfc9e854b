"""The Python API of a trained run, mirroring ``multiturbo predict / evaluate / embed``::

    import multiturbo

    run = multiturbo.load("runs/demo")                 # no training data, no network needed
    run.classes                                         # ['ang', 'hap', 'neu', 'sad']
    run.predict([{"audio": (samples, 16000), "text": "hello"}])
    # [{'id': '0', 'class': 'neu', 'probabilities': {'ang': 0.1, ...}}]
    run.predict("new_items.csv")                        # a manifest (labels optional)
    run.embed(items)                                    # {'audio': Tensor [N, d], 'text': Tensor [N, d]}
    run.evaluate("labelled.csv")                        # wa, ua, f1, (eer), confusion, loss, retrieval

Items are ``{modality: input}`` mappings; see :mod:`multiturbo.inference` for what an input
may be (audio: a path, ``(samples, sample_rate)`` or a Waveform, resampled by the encoder;
text: a string; image: a path or an array). Everything runs in eval mode (dropout off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .inference import Inputs, Outputs, evaluate_outputs, predictions, read_inputs, run_inputs
from .retrieval import DEFAULT_KS, cross_modal_retrieval
from .rundir import LoadedRun, load_run
from .runtime import resolve_device

__all__ = ["TrainedRun", "load"]


class TrainedRun:
    """A trained run directory, ready for inference (see the module docstring)."""

    def __init__(self, loaded: LoadedRun, *, batch_size: int | None = None, kinds: Mapping[str, str] | None = None):
        self.loaded = loaded
        self.batch_size = batch_size
        self.kinds = dict(kinds or {})

    # -- what the run is -----------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.loaded.run_dir

    @property
    def classes(self) -> list[str]:
        return list(self.loaded.classes)

    @property
    def modalities(self) -> list[str]:
        return list(self.loaded.modalities)

    @property
    def config(self):
        return self.loaded.config

    @property
    def model(self):
        """The :class:`~multiturbo.model.TurboModel` with the best weights, in eval mode."""
        return self.loaded.model

    def __repr__(self) -> str:
        return f"TrainedRun({str(self.run_dir)!r}, classes={self.classes}, modalities={self.modalities})"

    # -- running it ----------------------------------------------------------------------------
    def inputs(self, data: Any, *, labels: str = "optional", split: str = "test") -> Inputs:
        """Items from a manifest path, a data set config (.yaml or mapping), or a list of item mappings."""
        return read_inputs(self.loaded, data, labels=labels, split=split, **({"kinds": self.kinds} if self._is_manifest(data) else {}))

    @staticmethod
    def _is_manifest(data: Any) -> bool:
        return isinstance(data, (str, Path)) and Path(data).suffix.lower() not in (".yaml", ".yml")

    def outputs(self, data: Any, *, labels: str = "optional", split: str = "test") -> Outputs:
        """One pass over ``data``: probabilities, views, presence masks, ids and labels."""
        return run_inputs(self.loaded, self.inputs(data, labels=labels, split=split), batch_size=self.batch_size, kinds=self.kinds)

    def predict(self, data: Any) -> list[dict[str, Any]]:
        """Per item: ``{"id", "class", "probabilities": {class: p}}`` (plus ``"label"`` when the input has one)."""
        return predictions(self.loaded, self.outputs(data))

    def predict_proba(self, data: Any) -> Tensor:
        """Class probabilities [N, C] (columns in the order of :attr:`classes`)."""
        return self.outputs(data).probs

    def embed(self, data: Any, *, normalize: bool = True) -> dict[str, Tensor]:
        """Projected views {modality: [N, d]} of one pass; L2-normalised unless ``normalize=False``.
        An item that misses a modality has a zero row there."""
        out = self.outputs(data)
        return out.normalized() if normalize else out.views

    def evaluate(self, data: Any, *, split: str = "test", ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
        """On a labelled manifest (or a data set config's ``split``): wa, ua, f1 (eer for two
        classes), confusion, loss, n_items, classes and ``retrieval`` (recall@k per modality pair)."""
        return evaluate_outputs(self.loaded, self.outputs(data, labels="required", split=split), ks)

    def retrieval(self, data: Any, *, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
        """Cross-modal recall@k for every ordered modality pair (labels not needed)."""
        out = self.outputs(data, labels="ignore")
        return cross_modal_retrieval(out.normalized(), out.present, ks)


def load(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    kinds: Mapping[str, str] | None = None,
) -> TrainedRun:
    """Load a finished run directory for inference (``device``: cpu, cuda, cuda:N or auto).

    ``kinds`` ({modality: "audio" | "text" | "image"}) says how to read the inputs of
    modalities whose kind cannot be told from the training manifest or the modality's name.
    Raises :class:`multiturbo.rundir.RunDirError` for a missing, incomplete, unfinished or
    incompatible run directory.
    """
    return TrainedRun(load_run(run_dir, device=resolve_device(device)), batch_size=batch_size, kinds=kinds)
