"""Use a trained run from Python: predict, embed, evaluate (docs/using-a-trained-model.md).

    multiturbo run configs/demo.yaml --out runs/demo
    python examples/use_a_trained_model.py runs/demo

Works with any run whose modalities are audio and text (the demo, IEMOCAP, your manifest).
It writes a few small files (a WAV file and a manifest) to a temporary directory.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

import multiturbo


def main(run_dir: str) -> dict:
    run = multiturbo.load(run_dir)  # the best weights, eval mode; no training data, no network
    print(run)

    # Items are {modality: input}. Audio: (samples, sample_rate), a file path, or a Waveform;
    # the encoder resamples, so any rate works. Text: a string.
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 1 s at 16 kHz
    items = [
        {"audio": (tone, 16000), "text": "what a lovely day"},
        {"audio": (tone[::2].copy(), 8000), "text": "leave me alone"},
    ]
    for p in run.predict(items):
        best = max(p["probabilities"].values())
        print(f"item {p['id']}: {p['class']} ({best:.2f})")

    emb = run.embed(items)  # {modality: Tensor [N, d]}, L2-normalised projected views
    print({m: tuple(e.shape) for m, e in emb.items()})
    print("audio/text cosine of item 0:", float(emb["audio"][0] @ emb["text"][0]))

    # A labelled manifest (CSV or JSONL; paths relative to the manifest): evaluate on it.
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sf.write(tmp / "tone.wav", tone, 16000)
        with (tmp / "new.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "audio", "text", "label"])
            for i, cls in enumerate(run.classes):
                w.writerow([f"clip{i}", "tone.wav", f"sentence number {i}", cls])
        metrics = run.evaluate(tmp / "new.csv")
    print({k: round(metrics[k], 3) for k in ("wa", "ua", "f1")}, "retrieval:", metrics["retrieval"])
    return metrics


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} RUN_DIR")
    main(sys.argv[1])
