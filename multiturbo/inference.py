"""Using a trained run: predict, evaluate, embed (the engine behind the CLI and :mod:`multiturbo.api`).

Inputs are items: ``{modality: raw}`` mappings. What a raw value may be depends on the
modality's kind (see :func:`modality_kinds`), whose input reader (a plugin registered through
the ``register_input_readers`` hook, :mod:`multiturbo.reader`) turns it into what the encoder
takes. The first-party readers:

- audio: a path (read with :func:`multiturbo.audio.load_audio`, mono), a
  ``(samples, sample_rate)`` pair, or a :class:`~multiturbo.audio.Waveform`. The encoder
  resamples to its own rate, so files and arrays at any sample rate are accepted. A bare
  1-D array is taken as already at the encoder's rate.
- image: a path (read as RGB) or an array [H, W, 3].
- text: a string.

A modality of unknown kind gets its values as they are.

A modality that is absent from an item (or None) is missing: allowed when the model's head
handles missing modalities (``handles_missing``, true for the first-party heads), otherwise a
:class:`~multiturbo.errors.DataError` naming the item and the modality.

Manifests (CSV / JSONL, :mod:`multiturbo.table`) list one item per row. A modality's column
is the one the training data set's options name (``modalities: {m: {column, kind}}``, as the
``manifest`` data set's do), else the column named like the modality. Labels (column ``label``, or the
training manifest's ``label_column``) are optional for predict and embed and required for
evaluate; they are class NAMES, mapped to the run's classes by name. An ``id`` column, if
present, names the items; otherwise items are named by their row index (0-based).

Every pass is one forward in eval mode (dropout off): the logits and the projected views
come from the same pass.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from safetensors.torch import save_file

from .build import make_dataset
from .config.load import read_yaml
from .data import Collator
from .dataset import Sample
from .errors import DataError, MultiturboError
from .metrics import classification_metrics
from .model import EvalPass, TurboModel, eval_batch
from .plugins import get_registries
from .progress import ProgressReporter
from .reader import InputReader
from .retrieval import DEFAULT_KS, cross_modal_retrieval
from .rundir import LoadedRun
from .table import read_manifest
from .warning_lines import worker_display
from .worker_start import preload_in_fork_server


@dataclass
class Inputs:
    """Items to run through a model: raw inputs, ids, labels (class indices of the run, or None)."""

    items: list[dict[str, Any]]
    ids: list[str]
    labels: list[int | None] = field(default_factory=list)
    base: Path | None = None  # relative paths in items are resolved against it
    source: str = "the input"

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = [None] * len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return bool(self.items) and all(label is not None for label in self.labels)


@dataclass
class Outputs:
    """One pass over some inputs: probabilities [N, C], projected views {m: [N, d]} (not
    normalised), presence masks {m: bool [N]}, and the inputs' ids and labels."""

    probs: Tensor
    views: dict[str, Tensor]
    present: dict[str, Tensor]
    ids: list[str]
    labels: list[int | None]

    def normalized(self) -> dict[str, Tensor]:
        """The L2-normalised views {m: [N, d]} (zeros stay zeros for missing items)."""
        return {m: F.normalize(v, dim=-1) for m, v in self.views.items()}


# -- kinds and raw values ----------------------------------------------------------------------
def _training_inputs(run: LoadedRun) -> Mapping[str, Any]:
    """How the training data set's options describe its inputs, when they do as the manifest data
    set's do (``{modalities: {m: {column, kind}}, label_column}``); else {}."""
    options = run.config.data.options
    return options if isinstance(options, Mapping) and isinstance(options.get("modalities"), Mapping) else {}


def modality_kinds(run: LoadedRun, kinds: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """{modality: a registered input kind ("audio", "text", "image"...) or None}: given ``kinds``,
    else the kind the training data set's options give, else guessed from the modality's name
    with the readers' ``name_hints`` (None: raw values are passed to the encoder as they are)."""
    readers = get_registries().input_readers
    specs = _training_inputs(run).get("modalities") or {}
    out: dict[str, str | None] = {}
    for m in run.modalities:
        if kinds and m in kinds:
            if kinds[m] not in readers:
                raise MultiturboError(f"The kind of modality {m!r} must be one of {readers.names()}, got {kinds[m]!r}.")
            out[m] = kinds[m]
        elif m in specs and isinstance(specs[m], Mapping) and specs[m].get("kind") in readers:
            out[m] = specs[m]["kind"]
        else:
            lower = m.lower()
            out[m] = next((e.name for e in readers if any(h in lower for h in e.cls.name_hints)), None)
    return out


def modality_readers(run: LoadedRun, kinds: Mapping[str, str] | None = None) -> dict[str, InputReader | None]:
    """{modality: the input reader of its kind (None: values are taken as they are)}."""
    readers = get_registries().input_readers
    return {m: None if k is None else readers.get(k)() for m, k in modality_kinds(run, kinds).items()}


def to_raw(value: Any, reader: InputReader | None, base: Path | None = None) -> Any:
    """One item's input as its encoder's collate takes it (files read relative to ``base``)."""
    if reader is None:
        return value
    if reader.files and isinstance(value, (str, Path)):
        value = reader.resolve(value, base)
    return reader.read(value)


# -- reading inputs ------------------------------------------------------------------------------
def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _label_index(run: LoadedRun, value: Any, where: str, source: str) -> int:
    name = "" if value is None else str(value).strip()
    try:
        return run.classes.index(name)
    except ValueError:
        raise DataError(
            f"{_cap(source)}, {where}: the label {name!r} is not a class of the run {run.run_dir}; its classes are "
            f"{run.classes}. Labels are mapped to the run's classes by name: fix the label or remove the row."
        ) from None


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def read_manifest_inputs(
    run: LoadedRun,
    path: str | Path,
    *,
    labels: str = "optional",
    columns: Mapping[str, str] | None = None,
    label_column: str | None = None,
    kinds: Mapping[str, str] | None = None,
    optional: Sequence[str] = (),
) -> Inputs:
    """Items of a CSV / JSONL manifest (the manifest plugin's format) for ``run``.

    ``labels``: "optional" (predict, embed), "required" (evaluate: every row needs a known
    class name) or "ignore". ``columns`` maps modalities to columns (default: see the module
    docstring). Text cells are taken as they are (an empty cell is the empty string);
    an empty audio / image cell, a JSON null or an absent key means the modality is missing.
    The modalities in ``optional`` may lack a column even when the head cannot handle missing
    modalities: something fills them before the model runs (``--transcribe`` the text).
    """
    path = Path(path).expanduser()
    header, rows = read_manifest(path, "auto")
    source = f"the manifest {path}"
    train = _training_inputs(run)
    specs = train.get("modalities") or {}
    readers = modality_readers(run, kinds)
    takes_blank = {m: r is not None and not r.files for m, r in readers.items()}  # text: "" is a value, not a missing file
    label_column = label_column or train.get("label_column") or "label"
    use: dict[str, str | None] = {}
    for m in run.modalities:
        candidates = [c for c in ((columns or {}).get(m), (specs.get(m) or {}).get("column") if isinstance(specs.get(m), Mapping) else None, m) if c]
        use[m] = next((c for c in candidates if c in header), None)
        if use[m] is None and m not in optional and not _handles_missing(run.model):
            raise DataError(
                f"{_cap(source)} has no column for the modality {m!r} that the model needs (looked for {candidates}); its "
                f"columns are {header}. Name the column after the modality, or map it (--column {m}=COLUMN)."
            )
    if labels == "required" and label_column not in header:
        raise DataError(f"{_cap(source)} has no label column {label_column!r} (its columns are {header}); evaluation needs a class name per row.")
    items, ids, out_labels = [], [], []
    for index, (line, row) in enumerate(rows):
        item = {}
        for m, col in use.items():
            value = row.get(col) if col is not None else None
            if value is None or (not takes_blank[m] and _is_blank(value)):
                continue  # missing
            item[m] = value.strip() if isinstance(value, str) and readers[m] is not None and readers[m].files else value
        items.append(item)
        ids.append(str(row["id"]) if "id" in row and not _is_blank(row["id"]) else str(index))
        label = row.get(label_column) if labels != "ignore" else None
        if _is_blank(label):
            if labels == "required":
                raise DataError(f"{_cap(source)}, line {line}: the label (column {label_column!r}) is empty; evaluation needs a class name per row.")
            out_labels.append(None)
        else:
            out_labels.append(_label_index(run, label, f"line {line}", source))
    return Inputs(items, ids, out_labels, base=path.parent, source=source)


def read_dataset_inputs(run: LoadedRun, config: str | Path | Mapping[str, Any], split: str = "test") -> Inputs:
    """Items of a data set given as a config snippet (a YAML file or a mapping: ``{name, options,
    fold}``, optionally under a ``data:`` key): its ``split`` ("train", "val", "test" or "all").
    Its labels are mapped to the run's classes by name."""
    raw = read_yaml(config) if isinstance(config, (str, Path)) else dict(config)
    source = f"the data set of {config}" if isinstance(config, (str, Path)) else "the data set"
    data = raw.get("data", raw)
    if not isinstance(data, Mapping) or "name" not in data:
        raise MultiturboError(f"{_cap(source)}: give a data set as {{name: ..., options: {{...}}, fold: ...}} (optionally under data:).")
    try:
        dataset = make_dataset(data["name"], data.get("options") or {}, int(data.get("split_seed", data.get("seed", run.config.data.data_seed))))
    except MultiturboError:
        raise
    except Exception as exc:  # pydantic ValidationError
        raise MultiturboError(f"{_cap(source)}: the options of data set {data['name']!r} are not valid: {exc}") from None
    splits = dataset.splits(data.get("fold"))
    if split not in ("train", "val", "test", "all"):
        raise MultiturboError(f"split: {split!r} is not a split; use train, val, test or all.")
    samples = [s for name in ("train", "val", "test") if split in (name, "all") for s in getattr(splits, name)]
    items, ids, labels = [], [], []
    for i, s in enumerate(samples):
        items.append({m: v for m, v in s.inputs.items() if m in run.modalities and v is not None})
        ids.append(str(s.meta.get("id", s.meta.get("line", i))) if s.meta else str(i))
        labels.append(_label_index(run, dataset.classes[s.label], f"item {ids[-1]} ({dict(s.meta)})", source))
    return Inputs(items, ids, labels, source=source)


def read_inputs(run: LoadedRun, data: Any, *, labels: str = "optional", split: str = "test", **kwargs: Any) -> Inputs:
    """Inputs from a manifest path, a data set config (``.yaml`` / ``.yml`` or a mapping with
    ``name``), a list of item mappings, or an :class:`Inputs` (returned as is)."""
    if isinstance(data, Inputs):
        return data
    if isinstance(data, Mapping):
        return read_dataset_inputs(run, data, split)
    if isinstance(data, (str, Path)):
        if Path(data).suffix.lower() in (".yaml", ".yml"):
            return read_dataset_inputs(run, data, split)
        return read_manifest_inputs(run, data, labels=labels, **kwargs)
    items = list(data)
    if not all(isinstance(it, Mapping) for it in items):
        raise MultiturboError("Items must be mappings {modality: input}, e.g. {'audio': (samples, 16000), 'text': 'hello'}.")
    return Inputs([dict(it) for it in items], [str(i) for i in range(len(items))])


# -- running the model -------------------------------------------------------------------------
def _handles_missing(model: TurboModel) -> bool:
    return bool(getattr(model.head, "handles_missing", False))


def check_inputs(run: LoadedRun, inputs: Inputs) -> None:
    """Every item names only the model's modalities and has the ones the model needs."""
    if not inputs.items:
        raise DataError(f"{_cap(inputs.source)} has no items.")
    modalities = set(run.modalities)
    lenient = _handles_missing(run.model)
    for item, iid in zip(inputs.items, inputs.ids):
        unknown = sorted(set(item) - modalities)
        if unknown:
            raise DataError(
                f"Item {iid} of {inputs.source} has input(s) for {unknown}, "
                f"which the model does not take; its modalities are {run.modalities}."
            )
        missing = [m for m in run.modalities if item.get(m) is None]
        if missing and (not lenient or len(missing) == len(run.modalities)):
            why = (
                "an item needs at least one modality" if lenient else
                f"the model's head {type(run.model.head).__name__} cannot handle missing modalities"
            )
            raise DataError(
                f"Item {iid} of {inputs.source} has no {missing[0]!r} input "
                f"({why}); the model needs {run.modalities}."
            )


class _InputItems(torch.utils.data.Dataset):
    """``inputs`` as samples for a DataLoader: item i read (files through its modality's reader) on
    access, in a worker when there are workers; ``meta["index"]`` is its position in the input."""

    def __init__(self, inputs: Inputs, readers: Mapping[str, InputReader | None], modalities: Sequence[str]):
        self.inputs, self.readers, self.modalities = inputs, dict(readers), list(modalities)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Sample:
        item, base = self.inputs.items[i], self.inputs.base
        return Sample(inputs={m: None if item.get(m) is None else to_raw(item[m], self.readers[m], base) for m in self.modalities},
                      label=0, meta={"id": self.inputs.ids[i], "index": i})


def _cheap_length(value: Any, reader: InputReader | None, base: Path | None) -> float:
    """A sort key for an input's length without reading it: a file's size in bytes (for audio of one
    format, proportional to its duration), a text's characters, an array's elements; 0 otherwise."""
    if value is None:
        return 0.0
    if reader is not None and reader.files and isinstance(value, (str, Path)):
        try:
            return float(os.path.getsize(reader.resolve(value, base)))
        except OSError:
            return 0.0  # reading it will raise the clear error
    if isinstance(value, str):
        return float(len(value))
    if hasattr(value, "shape"):
        return float(np.prod(value.shape))
    return 0.0


def length_sorted_batches(inputs: Inputs, readers: Mapping[str, InputReader | None], batch_size: int) -> list[list[int]]:
    """The item indices in batches of similar length (longest first, so that a batch too large for
    memory fails at once), by the sum over modalities of :func:`_cheap_length`."""
    keys = [sum(_cheap_length(item.get(m), r, inputs.base) for m, r in readers.items()) for item in inputs.items]
    order = sorted(range(len(inputs)), key=lambda i: -keys[i])  # stable: equal lengths keep the input order
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


MAX_AUTO_WORKERS = 8  # past this, reading is seldom the bottleneck and each worker costs memory


def auto_workers(device: torch.device, batches: int, cpus: int | None = None) -> int:
    """The default number of DataLoader workers for an inference pass of ``batches`` batches: none for
    one batch (nothing to overlap); on the CPU one per core (each reads, collates and runs the model
    on its batches: this process only gathers the outputs), none on a single core; with a GPU all
    cores but this process's one (they read and collate, this process runs the model); at most
    MAX_AUTO_WORKERS."""
    cpus = available_cpus() if cpus is None else cpus
    if batches < 2:
        return 0
    wanted = (cpus if cpus > 1 else 0) if device.type == "cpu" else cpus - 1
    return max(0, min(wanted, MAX_AUTO_WORKERS, batches))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters


def _start_inference_worker(worker_id: int, display: Callable[[int], None]) -> None:
    """An inference worker's ``worker_init_fn``: :func:`_keep_freed_memory`, and the parent's display
    of warnings (``display``: :func:`multiturbo.warning_lines.worker_display`)."""
    _keep_freed_memory(worker_id)
    display(worker_id)


def _keep_freed_memory(worker_id: int) -> None:
    """Part of an inference worker's start: glibc's malloc keeps the memory of freed arrays for
    the next batch's (no mmap per large tensor, no heap trimming), so the worker does not fault in
    fresh zeroed pages for every tensor of every batch (measured with the demo encoders: system time
    0.2-0.37 s -> 0.07-0.12 s per 2,000 items, about 10% of the CPU time). The setting is the
    worker's own and ends with it; a no-op where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest on 64-bit
    mallopt(_M_TRIM_THRESHOLD, 128 << 20)


class _CollateAndRun:
    """A DataLoader's ``collate_fn`` for a pass on the CPU: samples -> collated batch -> the model's
    :class:`EvalPass` of the batch as numpy arrays. In a worker process the forward runs there too
    (on one thread, DataLoader's setting), so only the small outputs cross to this process, and
    they cross by value: no shared-memory file descriptor per tensor to hand over."""

    def __init__(self, collator: Collator, model: TurboModel):
        self.collator, self.model = collator, model

    def __call__(self, samples: Sequence[Sample]) -> EvalPass:
        with torch.inference_mode():
            return eval_batch(self.model, self.collator(samples), "cpu").map(Tensor.numpy)


def _model_in_loader(device: torch.device) -> bool:
    """Whether the loader's collate runs the model (:class:`_CollateAndRun`: on the CPU, in the workers),
    rather than this process (with a GPU: the workers only read and collate)."""
    return device.type == "cpu"


def _pass_parts(run: LoadedRun, loader: torch.utils.data.DataLoader, advance: Callable[[int], None] | None) -> Iterator[EvalPass]:
    """The loader's batches as EvalPass parts (on the CPU the loader's collate ran the model,
    :class:`_CollateAndRun`; with a GPU this process runs it), ``advance(n)`` after each."""
    for part in loader:
        if _model_in_loader(run.device):  # numpy arrays from _CollateAndRun
            out = part.map(torch.from_numpy)
        else:
            with torch.inference_mode():
                out = eval_batch(run.model, part, run.device)
        if advance is not None:
            advance(len(out))
        yield out


def run_inputs(run: LoadedRun, inputs: Inputs, *, batch_size: int | None = None, kinds: Mapping[str, str] | None = None,
               progress: ProgressReporter | None = None, description: str = "inference", workers: int | None = None) -> Outputs:
    """One eval-mode pass over ``inputs``: probabilities, views and presence masks, rows in input order.

    Items are batched by length (file sizes, text lengths: little padding) and handled by ``workers``
    DataLoader worker processes (0: in this process; None: :func:`auto_workers`) in
    ``torch.inference_mode``: on the CPU each worker reads, collates and runs the model on its
    batches (one thread each) and hands back the outputs; with a GPU the workers read and collate
    while this process runs the model. ``progress`` shows a bar (or plain lines) with items/s and an ETA."""
    check_inputs(run, inputs)
    readers = modality_readers(run, kinds)
    collator = Collator(run.model.encoders, num_classes=len(run.classes))
    bs = batch_size or run.config.train.eval_batch_size or run.config.train.batch_size
    batches = length_sorted_batches(inputs, readers, bs)
    workers = auto_workers(run.device, len(batches)) if workers is None else workers
    run.model.eval()  # before the workers start: they run the model as it is now
    on_cpu = _model_in_loader(run.device)
    if workers > 0:
        preload_in_fork_server([collator, *readers.values()])
    loader = torch.utils.data.DataLoader(_InputItems(inputs, readers, run.modalities), batch_sampler=batches,
                                         collate_fn=_CollateAndRun(collator, run.model) if on_cpu else collator,
                                         num_workers=workers, worker_init_fn=partial(_start_inference_worker, display=worker_display()),
                                         pin_memory=run.device.type == "cuda")
    advance = None
    if progress is not None:
        progress.start(description, total=len(batches))
        advance = lambda n: progress.advance(items=n)  # noqa: E731
    try:
        out = EvalPass.concat(list(_pass_parts(run, loader, advance)))
    except MultiturboError as exc:  # raised in a worker: DataLoader prefixes the worker's traceback
        message = str(exc)
        if "Original Traceback" not in message:
            raise
        last = message.rstrip().splitlines()[-1]
        raise type(exc)(last.split(": ", 1)[1] if ": " in last else last) from None
    back = torch.empty(len(inputs), dtype=torch.long)  # row of the pass -> position in the input
    back[torch.tensor([i for b in batches for i in b], dtype=torch.long)] = torch.arange(len(inputs))
    return Outputs(out.probs[back], {m: v[back] for m, v in out.views.items()}, {m: p[back] for m, p in out.present.items()},
                   list(inputs.ids), list(inputs.labels))


def predictions(run: LoadedRun, out: Outputs) -> list[dict[str, Any]]:
    """[{"id", "class", "probabilities": {class: p}} (and "label" when known)] per item."""
    rows = []
    for i, iid in enumerate(out.ids):
        p = out.probs[i].tolist()
        row: dict[str, Any] = {"id": iid, "class": run.classes[int(out.probs[i].argmax())], "probabilities": dict(zip(run.classes, p))}
        if out.labels[i] is not None:
            row["label"] = run.classes[out.labels[i]]
        rows.append(row)
    return rows


def evaluate_outputs(run: LoadedRun, out: Outputs, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """The training evaluation's metrics (wa, ua, f1, eer for 2 classes, confusion, loss) and
    cross-modal retrieval (recall@k per ordered modality pair, :mod:`multiturbo.retrieval`)."""
    missing = [iid for iid, label in zip(out.ids, out.labels) if label is None]
    if missing:
        raise DataError(f"Evaluation needs a label for every item; item {missing[0]} has none ({len(missing)} in all).")
    labels = torch.tensor(out.labels, dtype=torch.long)
    metrics: dict[str, Any] = classification_metrics(out.probs, labels, loss=True)
    metrics["n_items"] = len(labels)
    metrics["classes"] = list(run.classes)
    metrics["retrieval"] = cross_modal_retrieval(out.normalized(), out.present, ks) if len(run.modalities) > 1 else {}
    return metrics


# -- writing -------------------------------------------------------------------------------------
def write_predictions(path: str | Path, rows: list[dict[str, Any]], classes: Sequence[str]) -> Path:
    """CSV (``id, class, [label,] prob_<class>...``) or JSONL (one object per item) by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    if path.suffix.lower() != ".csv":
        raise MultiturboError(f"--output {path}: write predictions to a .csv or .jsonl file.")
    has_label = any("label" in r for r in rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "class", *(["label"] if has_label else []), *(f"prob_{c}" for c in classes)])
        for r in rows:
            w.writerow([r["id"], r["class"], *([r.get("label", "")] if has_label else []), *(f"{r['probabilities'][c]:.6g}" for c in classes)])
    return path


def write_embeddings(path: str | Path, run: LoadedRun, out: Outputs) -> list[Path]:
    """Write the views: ``.safetensors`` / ``.npz`` hold, per modality m, ``m`` (L2-normalised,
    what retrieval and the Turbo loss compare) and ``m.raw`` (before normalisation), [N, d]
    float32; ``m.present`` (bool [N]) when some item misses m; ``labels`` (int64 [N], -1 when
    unknown). Item ids and class names: the safetensors metadata (JSON strings ``ids``,
    ``classes``), or the arrays ``ids`` / ``classes`` of the .npz. ``.npy``: one file per array
    next to ``path`` (``emb.audio.npy``, ``emb.audio.raw.npy``, ``emb.labels.npy``,
    ``emb.ids.npy``...). Returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Tensor] = {}
    normed = out.normalized()
    for m in run.modalities:
        arrays[m] = normed[m].contiguous()
        arrays[f"{m}.raw"] = out.views[m].contiguous()
        if not bool(out.present[m].all()):
            arrays[f"{m}.present"] = out.present[m]
    arrays["labels"] = torch.tensor([-1 if x is None else x for x in out.labels], dtype=torch.int64)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        save_file(arrays, str(path), metadata={"ids": json.dumps(out.ids), "classes": json.dumps(run.classes), "normalized": "m: L2-normalised; m.raw: not"})
        return [path]
    np_arrays = {k: v.numpy() for k, v in arrays.items()}
    np_arrays["ids"] = np.array(out.ids, dtype=str)
    np_arrays["classes"] = np.array(run.classes, dtype=str)
    if suffix == ".npz":
        np.savez(path, **np_arrays)
        return [path]
    if suffix == ".npy":
        written = []
        for k, a in np_arrays.items():
            p = path.with_name(f"{path.stem}.{k}.npy")
            np.save(p, a)
            written.append(p)
        return written
    raise MultiturboError(f"--output {path}: write embeddings to a .safetensors, .npz or .npy file.")
