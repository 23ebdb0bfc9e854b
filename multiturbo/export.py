"""``multiturbo export RUN --format onnx -o model.onnx``: the inference graph of a trained run as ONNX.

The graph is one eval-mode pass of :class:`~multiturbo.model.TurboModel` (dropout off,
``model.feature_norm`` with its running statistics): every modality's encoder, its
projection, and the head, then a softmax. Its inputs are the tensors of the encoders'
collated batches, one ONNX input per ``(modality, key)`` named ``"{modality}.{key}"`` (e.g.
``audio.waveform`` [B, T] float32, ``audio.lengths`` [B] int64, ``text.tokens`` [B, L] int64,
``text.mask`` [B, L] bool); its output is ``probabilities`` [B, C] (columns in the order of the
run's classes). Dimension 0 of every tensor is the batch, and every other dimension is
dynamic too (lengths, frames, tokens). Exported with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``; the dynamo exporter needs
onnxscript).

What stays outside the graph is the encoders' ``collate``: the tokenizer, the feature
extractor, the built-in encoders' padding and hashing. Beside ``model.onnx`` the export writes

- ``model.json``: input names, dtypes and shapes, the classes, the modalities and their input
  kinds, the exporter and opset;
- ``model.preprocess/``: the run's config.yaml, run.json and encoder assets (tokenizer /
  feature extractor files), no weights: :func:`multiturbo.rundir.build_encoders` rebuilds the
  encoders from it for their ``collate``;
- ``model_runner.py``: a small script around :class:`OnnxRunner` (onnxruntime): raw inputs in,
  probabilities out.

Missing modalities: the graph takes every modality for every item (the PyTorch path's
presence masks select items with boolean indexing, which the graph does not do). An item
without some modality needs the PyTorch model (``multiturbo predict``); :class:`OnnxRunner`
refuses it with an error saying so.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .audio import Waveform
from .data import Collator
from .dataset import Sample
from .errors import DataError, MultiturboError
from .inference import Inputs, check_inputs, modality_kinds, modality_readers, read_inputs, to_raw
from .model import PRESENT_KEY, TurboModel
from .plugins import get_registries
from .rundir import LoadedRun, build_encoders, copy_preprocessing

OPSET = 17  # STFT (the log-mel encoders) needs 17
OUTPUT = "probabilities"


class InferenceGraph(nn.Module):
    """One eval-mode pass as a function of flat tensors: the inputs named by ``spec``
    (``[(modality, key), ...]``, each [B, ...]) -> class probabilities [B, C]."""

    def __init__(self, model: TurboModel, spec: Sequence[tuple[str, str]]):
        super().__init__()
        self.model = model
        self.spec = list(spec)

    def forward(self, *tensors: Tensor) -> Tensor:
        batch: dict[str, dict[str, Tensor]] = {m: {} for m in self.model.modalities}
        for (m, key), t in zip(self.spec, tensors):
            batch[m][key] = t
        views = self.model.views(batch, passes=1)  # {m: [1, B, d]}
        return self.model.logits(views).softmax(-1)  # [B, C]


class _EncoderGraph(nn.Module):
    """One encoder alone, for finding the one that cannot be exported: tensors -> [B, dim]."""

    def __init__(self, encoder: nn.Module, keys: Sequence[str]):
        super().__init__()
        self.encoder, self.keys = encoder, list(keys)

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.encoder(dict(zip(self.keys, tensors)))


@dataclass
class Exported:
    """What :func:`export_onnx` wrote."""

    model: Path
    meta: Path
    preprocess: Path
    runner: Path
    max_abs_diff: float | None  # onnxruntime vs PyTorch on the example items (None: onnxruntime not installed)


def paths_for(output: str | Path) -> tuple[Path, Path, Path, Path]:
    """``model.onnx`` -> (model.onnx, model.json, model.preprocess/, model_runner.py)."""
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise MultiturboError(f"-o {output}: the export is an .onnx file, e.g. -o model.onnx.")
    return output, output.with_suffix(".json"), output.with_name(f"{output.stem}.preprocess"), output.with_name(f"{output.stem}_runner.py")


# -- example inputs: what the graph is traced on -----------------------------------------------
def example_items(run: LoadedRun, kinds: Mapping[str, str] | None = None) -> Inputs:
    """Two items of different lengths per modality (1 s / 0.6 s of noise, texts of 5 / 2 words,
    64x64 / 48x40 images), so the traced graph sees padding. A modality of unknown kind needs
    ``example`` items from the user."""
    rng = np.random.default_rng(0)
    items: list[dict[str, Any]] = [{}, {}]
    for m, kind in modality_kinds(run, kinds).items():
        if kind == "audio":
            rate = run.model.encoders[m].input_sample_rate or 16000
            values = [Waveform((0.1 * rng.standard_normal(n)).astype(np.float32), rate) for n in (rate, int(0.6 * rate))]
        elif kind == "text":
            values = ["this is a short example sentence", "hello world"]
        elif kind == "image":
            values = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)]
        else:
            raise MultiturboError(
                f"export: the kind of modality {m!r} is not known, so no example input can be made up for it. Give its "
                f"kind (--kind {m}=audio|text|image) or example items (--example MANIFEST)."
            )
        for item, v in zip(items, values):
            item[m] = v
    return Inputs(items, ["example0", "example1"], source="the export's example items")


def _collate(run: LoadedRun, inputs: Inputs, kinds: Mapping[str, str] | None) -> dict[str, dict[str, Tensor]]:
    readers = modality_readers(run, kinds)
    samples = [Sample(inputs={m: to_raw(item[m], readers[m], inputs.base) for m in run.modalities}, label=0, meta={"id": iid})
               for item, iid in zip(inputs.items, inputs.ids)]
    return Collator(run.model.encoders, num_classes=len(run.classes))(samples).inputs


# -- exporting -----------------------------------------------------------------------------------
def _export(module: nn.Module, args: tuple[Tensor, ...], f: Any, names: list[str], opset: int) -> None:
    dynamic = {n: {d: f"{n}.dim{d}" if d else "batch" for d in range(t.dim())} for n, t in zip(names, args)}
    torch.onnx.export(
        module, args, f, input_names=names, output_names=[OUTPUT], dynamic_axes={**dynamic, OUTPUT: {0: "batch"}},
        opset_version=opset, dynamo=False,
    )


def _culprit(run: LoadedRun, batch: Mapping[str, Mapping[str, Tensor]], opset: int) -> str | None:
    """The first modality whose encoder alone fails to export, with the error; None if all pass."""
    for m in run.modalities:
        keys = list(batch[m])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _export(_EncoderGraph(run.model.encoders[m], keys), tuple(batch[m][k] for k in keys), io.BytesIO(), [f"{m}.{k}" for k in keys], opset)
        except Exception as exc:  # whatever the exporter raises
            return f"{m} (encoder {run.config.modalities[m].encoder!r}): {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return None


def export_onnx(
    run: LoadedRun,
    output: str | Path,
    *,
    example: Any = None,
    kinds: Mapping[str, str] | None = None,
    opset: int = OPSET,
    check: bool = True,
) -> Exported:
    """Export ``run`` as ONNX to ``output`` (``.onnx``) with its metadata, preprocessing and runner
    (module docstring). ``example``: items to trace on (a manifest, items, or :class:`Inputs`;
    default: :func:`example_items`). ``check``: run the file with onnxruntime on the example
    items and compare with PyTorch (skipped when onnxruntime is not installed)."""
    model_path, meta_path, pre_dir, runner_path = paths_for(output)
    inputs = example_items(run, kinds) if example is None else read_inputs(run, example, labels="ignore", **({"kinds": kinds} if isinstance(example, (str, Path)) else {}))
    check_inputs(run, inputs)
    if any(item.get(m) is None for item in inputs.items for m in run.modalities):
        raise MultiturboError("export: the example items must have every modality (the graph takes every modality for every item).")
    was_training, device = run.model.training, next(run.model.parameters()).device
    model = run.model.cpu().eval()
    try:
        batch = _collate(run, inputs, kinds)
        spec = [(m, k) for m in run.modalities for k in batch[m] if k != PRESENT_KEY]
        names = [f"{m}.{k}" for m, k in spec]
        args = tuple(batch[m][k] for m, k in spec)
        graph = InferenceGraph(model, spec).eval()
        with torch.no_grad():
            expected = graph(*args)  # [B, C]
        model_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # the tracer's warnings about Python values are about shapes made dynamic below
                warnings.simplefilter("ignore")
                _export(graph, args, str(model_path), names, opset)  # grad on: no_grad sends nn.Transformer* down its fused fast path, which has no ONNX form
        except Exception as exc:
            culprit = _culprit(run, batch, opset)
            raise MultiturboError(
                f"export: the model of {run.run_dir} cannot be exported to ONNX: "
                + (f"the encoder of modality {culprit}. That encoder's forward is not traceable by torch.onnx "
                   f"(data-dependent Python control flow, an operator without an ONNX form); use multiturbo predict "
                   f"(PyTorch) for this run, or change the encoder." if culprit else
                   f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
            ) from None
    finally:
        run.model.to(device).train(was_training)
    meta = {
        "format": "onnx", "opset": opset, "exporter": "torch.onnx.export (TorchScript, dynamo=False)", "torch": torch.__version__,
        "run_dir": str(run.run_dir), "classes": list(run.classes), "modalities": list(run.modalities),
        "kinds": modality_kinds(run, kinds),
        "inputs": [{"name": n, "modality": m, "key": k, "dtype": str(t.dtype).removeprefix("torch."), "shape": ["batch", *(f"{n}.dim{d}" for d in range(1, t.dim()))]}
                   for n, (m, k), t in zip(names, spec, args)],
        "output": {"name": OUTPUT, "shape": ["batch", len(run.classes)]},
        "missing_modalities": "not supported by the graph: every item needs every modality (use the PyTorch model for items missing one)",
        "preprocess": pre_dir.name,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    copy_preprocessing(run.run_dir, pre_dir)
    runner_path.write_text(RUNNER.format(onnx=model_path.name), encoding="utf-8")
    diff = None
    if check:
        try:
            got = OnnxRunner(model_path).session_run({n: t.numpy() for n, t in zip(names, args)})
        except ImportError:
            got = None
        if got is not None:
            diff = float(np.abs(got - expected.numpy()).max())
            if diff > 1e-4:
                raise MultiturboError(f"export: onnxruntime's probabilities differ from PyTorch's by {diff:.2e} on the example items (more than 1e-4); the file {model_path} is not reliable.")
    return Exported(model_path, meta_path, pre_dir, runner_path, diff)


# -- running the export ------------------------------------------------------------------------
class OnnxRunner:
    """An exported model with onnxruntime: raw items in ({modality: value}, values as for
    ``multiturbo predict``: audio paths / (samples, rate) / Waveforms, strings, images), the
    encoders' collate (rebuilt from ``<stem>.preprocess/``), probabilities [N, C] out."""

    def __init__(self, onnx_path: str | Path, *, providers: Sequence[str] = ("CPUExecutionProvider",)):
        model_path, meta_path, pre_dir, _ = paths_for(onnx_path)
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.model_path, self.pre_dir = model_path, pre_dir
        self.classes: list[str] = list(self.meta["classes"])
        self.modalities: list[str] = list(self.meta["modalities"])
        self._providers = list(providers)
        self._session = None
        self._encoders: dict[str, nn.Module] | None = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime  # optional: the `onnx` extra

            self._session = onnxruntime.InferenceSession(str(self.model_path), providers=self._providers)
        return self._session

    def session_run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The graph on collated arrays {input name: array} -> probabilities [B, C]."""
        return self.session.run([OUTPUT], dict(feeds))[0]

    def collate(self, items: Sequence[Mapping[str, Any]], base: Path | None = None) -> dict[str, np.ndarray]:
        """Raw items -> the graph's inputs {name: array [B, ...]} (the encoders' collate)."""
        if self._encoders is None:
            self._encoders = build_encoders(self.pre_dir)
        readers = get_registries().input_readers
        for i, item in enumerate(items):
            missing = [m for m in self.modalities if item.get(m) is None]
            if missing:
                raise DataError(
                    f"Item {i} has no {missing[0]!r} input; the ONNX graph takes every modality ({self.modalities}) for every "
                    f"item. Classify items that miss a modality with the PyTorch model (multiturbo predict)."
                )
        feeds: dict[str, np.ndarray] = {}
        for m in self.modalities:
            kind = self.meta["kinds"].get(m)
            reader = readers.get(kind)() if kind else None
            batch = self._encoders[m].collate([to_raw(item[m], reader, base) for item in items])
            for spec in self.meta["inputs"]:
                if spec["modality"] == m:
                    feeds[spec["name"]] = batch[spec["key"]].numpy()
        return feeds

    def predict_proba(self, items: Sequence[Mapping[str, Any]], *, batch_size: int = 32, base: Path | None = None) -> np.ndarray:
        """Class probabilities [N, C] (columns in the order of :attr:`classes`); relative file paths
        are resolved against ``base``."""
        out = [self.session_run(self.collate(items[i:i + batch_size], base)) for i in range(0, len(items), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, items: Sequence[Mapping[str, Any]], *, base: Path | None = None) -> list[dict[str, Any]]:
        """Per item: ``{"class", "probabilities": {class: p}}``."""
        probs = self.predict_proba(items, base=base)
        return [{"class": self.classes[int(p.argmax())], "probabilities": dict(zip(self.classes, map(float, p)))} for p in probs]


RUNNER = '''"""Run the exported model {onnx} with onnxruntime (written by multiturbo export).

    python THIS_FILE items.jsonl    # one {{"modality": value}} object per line (paths relative to the file);
                                    # prints one {{"class", "probabilities"}} object per line

From Python: import this file as a module and call ``runner.predict_proba(items)`` -> [N, C].
The preprocessing (the encoders' collate) is rebuilt from the .preprocess directory beside it:
it needs multiturbo (with its plugins) and onnxruntime installed, not the weights.
"""

import json
import sys
from pathlib import Path

from multiturbo.export import OnnxRunner

runner = OnnxRunner(Path(__file__).resolve().parent / "{onnx}")

if __name__ == "__main__":
    path = Path(sys.argv[1])
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in runner.predict(items, base=path.parent):
        print(json.dumps(row))
'''
