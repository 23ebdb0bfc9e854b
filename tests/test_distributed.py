"""Gathered negatives across processes: 2 gloo ranks under torchrun equal one process on the whole batch."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from safetensors.torch import load_file

from multiturbo.distributed import World, current_world, gather_with_grad, gathered_turbo_loss
from multiturbo.loss import turbo_loss

WORKER = Path(__file__).parent / "distributed" / "gather_worker.py"
PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # audio1 audio2 text1 text2: pair_names order
B = 8


def _worker(name: str) -> ModuleType:
    """A script of tests/distributed imported here (its directory on sys.path while it imports)."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _global_views():
    return _worker("gather_worker").global_views(B)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` on the CPU (gloo; torchrun picks a free port)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MULTITURBO_NO_EXTERNAL_PLUGINS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _gathered_ranks(tmp_path: Path, symmetric: bool) -> list[dict[str, torch.Tensor]]:
    _torchrun(str(WORKER), str(tmp_path), str(B), "symmetric" if symmetric else "one-way")
    return [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]


@pytest.mark.parametrize("symmetric", [True, False])
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, symmetric):
    ranks = _gathered_ranks(tmp_path, symmetric)
    views = {m: v.clone().requires_grad_() for m, v in _global_views().items()}
    out = turbo_loss(views, temperature=0.1, symmetric=symmetric)
    out.total.backward()
    reference = torch.stack(list(out.terms.values()))
    # each rank's local loss is the mean over its rows; their mean over ranks is the global mean
    assert torch.allclose((ranks[0]["per_pair"] + ranks[1]["per_pair"]) / 2, reference, atol=1e-10, rtol=0)
    for m, v in views.items():
        gathered_grad = torch.cat([ranks[0][f"grad/{m}"], ranks[1][f"grad/{m}"]], dim=1)
        assert torch.allclose(gathered_grad, v.grad, atol=1e-10, rtol=0), m
    # the local losses themselves differ between ranks (different rows): the check above is not vacuous
    assert not torch.allclose(ranks[0]["per_pair"], ranks[1]["per_pair"])


def test_single_process_gathered_loss_equals_turbo_loss():
    views = {m: v.clone().requires_grad_() for m, v in _global_views().items()}
    local = gathered_turbo_loss(views, PAIRS, 0.1)
    reference = torch.stack(list(turbo_loss(views, temperature=0.1).terms.values()))
    assert torch.allclose(local.detach(), reference, atol=1e-12)


def test_without_a_process_group_the_world_is_one_process():
    assert current_world() == World(rank=0, size=1, local_rank=0)
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


def _no_dropout(raw: dict) -> dict:
    raw = copy.deepcopy(raw)
    raw["model"]["dropout"] = 0.0
    raw["modalities"]["audio"]["options"]["dropout"] = 0.0
    raw["modalities"]["text"]["options"]["dropout"] = 0.0
    return raw


@pytest.mark.parametrize("grad_cache_chunk", [None, 2], ids=["ddp-forward", "grad-cache"])
def test_ddp_training_step_equals_one_process_on_the_whole_batch(tmp_path, tiny_raw, grad_cache_chunk):
    """The real path: TurboModel under DistributedDataParallel, the gathered Turbo loss inside;
    with gradient caching the chunks bypass DDP's forward and the gradients are averaged by hand."""
    raw = _no_dropout(tiny_raw)
    raw["train"]["grad_cache_chunk"] = grad_cache_chunk
    if grad_cache_chunk:  # batch statistics over chunks are not the batch's: gradient caching needs a per-item norm
        raw["model"]["feature_norm"] = "layer"
    _torchrun(str(WORKER.parent / "ddp_worker.py"), json.dumps(raw), str(tmp_path))
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    model, batch = _worker("ddp_worker").fixed_batch(raw)
    out = model.train().step(batch.inputs, batch.labels)
    out.loss.backward()
    # the mean of the ranks' losses is the loss of the whole batch; DDP's averaged gradients are its gradients
    assert torch.allclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, out.loss.detach().reshape(1), rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert {k.removeprefix("grad/") for k in ranks[0] if k.startswith("grad/")} == set(grads)
    # absolute tolerance relative to the step's largest gradient: a bias just before the feature batch norm has a
    # gradient that is 0 in exact arithmetic, so both sides hold float32 noise there
    scale = max(float(g.abs().max()) for g in grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(ranks[0][f"grad/{name}"], g, rtol=1e-4, atol=1e-5 * scale, msg=name)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # the ranks saw different items


def test_unequal_rank_batches_equal_one_process_on_the_concatenated_batch(tmp_path, tiny_raw):
    """Dynamic batches (train.max_batch_seconds) give ranks unequal batches: 3 and 5 items. The padded
    all-gather drops the padding, positives sit at the right global columns, and each rank's loss is
    weighted by b_r W / sum b: in float64, the views' per-pair losses and gradients to 1e-12, the real
    step's loss (CE + Turbo) and every parameter gradient (TurboModel under DDP, and with gradient
    caching) to 1e-9."""
    plain = _no_dropout(tiny_raw)
    cached = copy.deepcopy(plain)
    cached["train"]["grad_cache_chunk"] = 2
    cached["model"]["feature_norm"] = "layer"
    raws = {"ddp": plain, "cache": cached}
    _torchrun(str(WORKER.parent / "unequal_worker.py"), json.dumps(raws), str(tmp_path))
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    unequal = _worker("unequal_worker")
    assert unequal.SIZES == (3, 5)

    views = {m: v.clone().requires_grad_() for m, v in _global_views().items()}
    out = turbo_loss(views, temperature=0.1)
    out.total.backward()
    reference = torch.stack(list(out.terms.values()))
    torch.testing.assert_close((ranks[0]["views/per_pair"] + ranks[1]["views/per_pair"]) / 2, reference, atol=1e-12, rtol=0)
    for m, v in views.items():
        torch.testing.assert_close(torch.cat([ranks[0][f"views/grad/{m}"], ranks[1][f"views/grad/{m}"]], dim=1), v.grad, atol=1e-12, rtol=0)
    # a plain mean of the ranks' means is NOT the global mean with 3 and 5 items: the weights matter
    unweighted = ranks[0]["views/per_pair"] / (3 * 2 / 8) + ranks[1]["views/per_pair"] / (5 * 2 / 8)
    assert not torch.allclose(unweighted / 2, reference, atol=1e-3)

    for key, raw in raws.items():
        model, batch = unequal.double_batch(raw)
        one = model.train().step(batch.inputs, batch.labels)
        one.loss.backward()
        assert [float(r[f"{key}/weight"]) for r in ranks] == [3 * 2 / 8, 5 * 2 / 8]
        mean = (ranks[0][f"{key}/loss"] * ranks[0][f"{key}/weight"] + ranks[1][f"{key}/loss"] * ranks[1][f"{key}/weight"]) / 2
        torch.testing.assert_close(mean, one.loss.detach().reshape(1), rtol=0, atol=1e-9, msg=key)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert {k.removeprefix(f"{key}/grad/") for k in ranks[0] if k.startswith(f"{key}/grad/")} == set(grads), key
        for name, g in grads.items():
            torch.testing.assert_close(ranks[0][f"{key}/grad/{name}"], g, rtol=0, atol=1e-9, msg=f"{key}: {name}")
        assert not torch.allclose(ranks[0][f"{key}/loss"], ranks[1][f"{key}/loss"])  # the ranks saw different items


@pytest.mark.parametrize("batching", ["random", "bucket"])
def test_torchrun_multiturbo_run_writes_one_complete_run_directory(tmp_path, tiny_raw, batching):
    tiny_raw["train"]["batching"] = batching  # bucket: every rank's batch from one global bucket, equal sizes
    out, records = _torchrun_run(tmp_path, tiny_raw)
    assert ("padding" in records[0]) == (batching == "bucket")
    assert (out / "report.md").is_file() and not (out / "checkpoint.safetensors").exists()


def _torchrun_run(tmp_path, raw: dict) -> tuple[Path, list[dict]]:
    """``torchrun ... -m multiturbo run`` on ``raw`` (2 epochs) with 2 processes: the run directory and its
    metrics.jsonl records, after checking that it finished, wrote each epoch once (rank 0, not once per
    process) and evaluated every test item over both shards."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    _torchrun("-m", "multiturbo", "run", str(config), "--out", str(out), "--quiet")
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["processes"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(map(sum, metrics["confusion"])) == info["split_sizes"]["test"]
    _check_test_predictions_in_split_order(out, raw, metrics)
    return out, records


def _check_test_predictions_in_split_order(out: Path, raw: dict, metrics: dict) -> None:
    """Rank 0's test_predictions.csv: the two shards put back in split order (each row's label is its
    test item's), and the predictions are those metrics.json scored."""
    import csv

    from multiturbo.build import build_experiment
    from multiturbo.composition import _labels_meta
    from multiturbo.config import check_config, validate_config

    with open(out / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    split_labels = _labels_meta(build_experiment(check_config(validate_config(copy.deepcopy(raw)))).splits.test)[0]
    assert [int(r["label"]) for r in rows] == [int(y) for y in split_labels]
    confusion = [[0] * len(metrics["confusion"]) for _ in metrics["confusion"]]
    for r in rows:
        confusion[int(r["label"])][int(r["pred"])] += 1
    assert confusion == metrics["confusion"]


def test_torchrun_run_with_max_batch_seconds_trains_on_unequal_rank_batches(tmp_path, tiny_raw):
    """train.max_batch_seconds end to end under torchrun: recordings of 0.1-1.0 s, so a step's two
    batches (neighbours in length) hold different numbers of items, and a few of 3.2-3.6 s, longer
    than the budget of 3 s, each alone in its batch (its negatives: the other process's items); the
    padded gather takes them and the run finishes with every test item evaluated."""
    import numpy as np
    import soundfile as sf

    from multiturbo.build import build_experiment
    from multiturbo.config import check_config, validate_config
    from multiturbo.data import BudgetBatchSampler, item_lengths

    rng = np.random.default_rng(0)
    rows = ["audio,text,label"]
    for i in range(48):
        wav = tmp_path / f"{i}.wav"
        seconds = rng.uniform(3.2, 3.6) if i % 8 == 0 else rng.uniform(0.1, 1.0)
        sf.write(wav, (0.1 * rng.standard_normal(int(4000 * seconds))).astype(np.float32), 4000, subtype="PCM_16")
        rows.append(f"{wav.name},word{i % 3} item {i},{'abc'[i % 3]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    tiny_raw["data"] = {"name": "manifest", "options": {"path": str(tmp_path / "m.csv"), "modalities": {
        "audio": {"column": "audio", "kind": "audio"}, "text": {"column": "text", "kind": "text"}}}}
    tiny_raw["train"].update(max_batch_seconds=3.0, min_batch_size=2)

    # the plan the two ranks follow: some step gives them batches of different sizes
    lengths = item_lengths(build_experiment(check_config(validate_config(copy.deepcopy(tiny_raw)))).splits.train)
    ranks = [BudgetBatchSampler(lengths, 3.0, 2, seed=0, shard=(r, 2)) for r in (0, 1)]
    sizes = [[len(b) for b in s.batches(1)] for s in ranks]
    assert len(sizes[0]) == len(sizes[1]) and sizes[0] != sizes[1], sizes
    assert 1 in sizes[0] + sizes[1] and ranks[0].over_budget(1).alone > 0, sizes  # a long recording alone

    _, records = _torchrun_run(tmp_path, tiny_raw)
    assert all(np.isfinite(r["train"]["loss"]) for r in records) and "padding" in records[0]
