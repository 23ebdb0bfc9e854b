"""`multiturbo bench` on the paper's reference encoder sizes, built from configs (random weights).

wav2vec2-base (7-layer conv front end with group norm, 12 transformer layers, 768-d) and
BERT-base (12 layers, 768-d) are built from their transformers configs with random weights and
saved to a temporary directory (no hub); the synthetic data set supplies 16 kHz audio and
text. The script then runs the same measurement as `multiturbo bench` for vanilla and turbo:
step time, the hand-written loop, the loss's share of the step. Random weights time exactly as
trained ones.

    python benchmarks/bench_reference_step.py                       # CPU: batch 8, 2 s audio, 3 steps
    python benchmarks/bench_reference_step.py --device cuda --batch-size 64 --amp bf16 --steps 10
    python benchmarks/bench_reference_step.py --layers 4            # shallower encoders (faster, less memory)

Memory on the CPU: two copies of both models (the hand-written loop's twin) per method, with
Adam states, about 6 GB per method at 12 layers.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

from multiturbo.bench import COLUMNS, bench_methods, format_rows
from multiturbo.config import check_config, validate_config

WORDS = ["the", "a", "is", "this", "that", "very", "not", "so", "happy", "sad", "angry", "calm", "today", "really", "well"]


def save_models(root: Path, layers: int) -> tuple[str, str]:
    """wav2vec2-base and BERT-base shaped models (random weights) with their preprocessors."""
    torch.manual_seed(0)
    audio, text = root / "wav2vec2-base", root / "bert-base"
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(num_hidden_layers=layers)).save_pretrained(audio)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=True).save_pretrained(audio)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS] + [f"w{i}" for i in range(200)]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(text)
    transformers.BertModel(transformers.BertConfig(num_hidden_layers=layers)).save_pretrained(text)
    return str(audio), str(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        audio, text = save_models(Path(tmp), args.layers)
        raw = {
            "name": "reference", "seed": 0,
            "data": {"name": "synthetic", "options": {"size": 4 * args.batch_size * (args.steps + args.warmup + 1),
                                                       "sample_rate": 16000, "seconds": args.seconds, "num_classes": 4}},
            "modalities": {"audio": {"encoder": "hf_audio", "options": {"model": audio, "dropout": 0.2}},
                           "text": {"encoder": "hf_text", "options": {"model": text, "dropout": 0.2}}},
            "model": {"dim": 768, "dropout": 0.2},
            "train": {"batch_size": args.batch_size, "lr": 1e-5, "device": args.device},
        }
        configs = {m: check_config(validate_config({**raw, "method": m}, "reference")) for m in ("vanilla", "turbo")}
        report = bench_methods(configs, steps=args.steps, warmup=args.warmup, device=args.device, amp=args.amp,
                               memory=False, progress=lambda line: print(line, flush=True))
    print(f"\nwav2vec2-base + BERT-base shaped ({args.layers} layers), batch {args.batch_size}, {args.seconds} s audio, "
          f"{report.device}, amp {report.amp}, median of {args.steps} steps")
    widths = [max(len(c), 8) for c in COLUMNS]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)))
    for row in format_rows(report):
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    for key, value in report.ratios().items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
