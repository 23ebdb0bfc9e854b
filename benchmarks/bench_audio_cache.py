"""Loader throughput (items/s) per epoch with train.audio_cache off, memory and disk.

A miniature IEMOCAP release (multiturbo_iemocap.write_mini_iemocap) is written with 44.1 kHz
16-bit wav files, so every item is decoded and resampled to the encoder's 16 kHz. Each case
iterates a training loader (shuffled, batch 16, the real Collator with logmel_cnn at 16 kHz and
hashed_transformer) for a few epochs and prints items/s per epoch. ``disk (next run)`` is a new
data set, cache wrapper and loader over the directory the ``disk`` case filled: a later run, fold
or method. Collation (padding, tokenising) is included, the model is not.

    OMP_NUM_THREADS=1 python benchmarks/bench_audio_cache.py                 # 200 items of 3 s
    OMP_NUM_THREADS=1 python benchmarks/bench_audio_cache.py --seconds 5 --workers 2 --epochs 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=5, help="sessions written (10 items per dialog)")
    p.add_argument("--dialogs", type=int, default=4, help="dialogs per session")
    p.add_argument("--seconds", type=float, default=3.0, help="length of every utterance")
    p.add_argument("--file-rate", type=int, default=44100)
    p.add_argument("--rate", type=int, default=16000, help="the encoder's rate")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    import torch
    from multiturbo_iemocap import IemocapDataset, IemocapOptions, write_mini_iemocap

    from multiturbo.audio_cache import CachedAudioSplit
    from multiturbo.data import Collator, make_loader
    from multiturbo.plugins import get_registries

    torch.set_num_threads(1)
    reg = get_registries().encoders
    logmel, text = reg.get("logmel_cnn"), reg.get("hashed_transformer")
    encoders = {"audio": logmel(logmel.Options(sample_rate=args.rate)), "text": text(text.Options())}
    collator = Collator(encoders, num_classes=4)

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "iemocap", Path(tmp) / "cache"
        sessions = list(range(1, args.sessions + 1))
        write_mini_iemocap(root, sessions, dialogs_per_session=args.dialogs, seconds=args.seconds, sample_rate=args.file_rate)

        def split():
            ds = IemocapDataset(IemocapOptions(root=root, sessions=sessions, protocol="session5" if len(sessions) > 1 else "speaker10"))
            s = ds.splits(0)
            return ds, s.train

        ds, train = split()
        print(f"{len(ds.utterances)} utterances of {args.seconds} s at {args.file_rate} Hz -> {args.rate} Hz; "
              f"train split {len(train)} items, batch {args.batch_size}, workers {args.workers}, {torch.get_num_threads()} torch thread(s)")
        cases = [("off", lambda: train), ("memory", lambda: CachedAudioSplit(train, rates={"audio": args.rate}, mode="memory")),
                 ("disk", lambda: CachedAudioSplit(train, rates={"audio": args.rate}, mode="disk", directory=cache)),
                 ("disk (next run)", lambda: CachedAudioSplit(split()[1], rates={"audio": args.rate}, mode="disk", directory=cache))]
        print(f"{'cache':<16}" + "".join(f"{'epoch ' + str(e + 1):>12}" for e in range(args.epochs)) + "   (items/s)")
        for name, make in cases:
            data = make()
            loader = make_loader(data, collator, batch_size=args.batch_size, shuffle=True, seed=0, num_workers=args.workers, pin_memory=False)
            rates = []
            for _ in range(args.epochs):
                start, n = time.perf_counter(), 0
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for batch in loader:
                        n += len(batch)
                rates.append(n / (time.perf_counter() - start))
            print(f"{name:<16}" + "".join(f"{r:>12.0f}" for r in rates))
            del loader
        size = sum(f.stat().st_size for f in cache.rglob("*.f32"))
        wavs = sum(f.stat().st_size for f in root.rglob("*.wav"))
        print(f"disk cache: {size / 1e6:.1f} MB for the train split (all wav files: {wavs / 1e6:.1f} MB, 16-bit at {args.file_rate} Hz)")


if __name__ == "__main__":
    main()
