"""Training throughput on speech-like lengths: padding and items/s with random, bucketed and budgeted batches;
epoch time with and without the frozen-feature cache (``freeze: all``, ``freeze: feature_encoder`` and ``freeze_layers``).

Lengths: utterance durations drawn from a lognormal fitted to IEMOCAP's published summary (median
about 3.4 s, mean about 4.5 s, range 0.6-34 s: log-mean ln 3.4, log-sd 0.7, clipped to 0.6-34 s),
and transcripts of about 2.6 words per second (conversational speech rate). A fit, not the real
set's lengths: give ``--lengths FILE`` (one duration in seconds per line) to use a real set's.

1. Padding share of an epoch's batches (random order vs ``train.batching: bucket`` vs
   ``train.max_batch_seconds``), audio and text. The budget defaults to batch size x the mean
   duration (``--max-batch-seconds``), so a step holds about as much audio as a random batch.
2. Turbo (K = 2) training steps on the tiny test config (logmel_cnn at 4 kHz + hashed_transformer,
   dim 16): items/s over the same items with random, bucketed and budgeted batches, measured in
   interleaved rounds (random, bucket, budget, random...) so all see the same machine load.
   Collation is included (num_workers 0), as in a run.
3. ``freeze: all`` on a tiny wav2vec2 with wav2vec2-base's conv front end (group norm; hf_audio, random weights built from a config, 16 kHz) plus a
   trainable hashed_transformer: the time of each training epoch with ``frozen_features:
   recompute`` and ``cache`` (the cache's one-off feature pass reported on its own).
4. ``predict`` over a manifest of wav files with these lengths (a tiny trained run): batches in
   input order read in the main process (the code before length sorting, kept here) against
   length-sorted batches, without and with DataLoader workers; the probabilities are compared.

5. Base-sized encoders: wav2vec2-base shapes (transformers' ``Wav2Vec2Config()`` defaults: 7 conv
   layers of 512 channels with group norm, hidden 768, 12 layers) and BERT-base shapes
   (``BertConfig()`` defaults: hidden 768, 12 layers, vocabulary 30522), random weights built from
   the configs (no download), hf_audio + hf_text, Turbo K = 2. (a) ``freeze: feature_encoder``:
   padding, mean batch size and items/s for random vs bucket vs max_batch_seconds over
   ``--base-batches`` batches each; (b) the time of one epoch over ``--base-items`` items with
   ``frozen_features`` recompute vs cache, for ``freeze: feature_encoder`` (the conv stack cached),
   ``freeze: all`` (the whole wav2vec2 cached) and ``freeze_layers: N`` on both encoders
   (``--base-freeze-layers``, default 8 of 12: the state after layer N cached, the K passes run the
   layers above; ``frozen_part_dropout: eval``), the cache's one-off pass on its own. Slow on a
   CPU (seconds per step): keep the counts small there (``--skip 5`` leaves it out).

    OMP_NUM_THREADS=1 python benchmarks/bench_throughput.py
    OMP_NUM_THREADS=1 python benchmarks/bench_throughput.py --items 1024 --steps 16 --rounds 3 --cache-items 96 --cache-epochs 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

# wav2vec2-base's convolutional front end (7 layers, 320x down-sampling) at the tiny width
REAL_CONV = dict(conv_dim=(8,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_feat_extract_layers=7)
WORDS = "the a one two we you they said no yes well so that this here there what why when now then".split()


def durations(n: int, seed: int, path: str | None) -> np.ndarray:
    """Seconds per item: the lognormal IEMOCAP-like fit, or a file's lengths resampled."""
    rng = np.random.default_rng(seed)
    if path:
        real = np.array([float(x) for x in Path(path).read_text().split()])
        return rng.choice(real, n)
    return np.clip(rng.lognormal(np.log(3.4), 0.7, n), 0.6, 34.0)


def speech_items(seconds: np.ndarray, rate: int, seed: int, num_classes: int = 3):
    """In-memory samples: audio of the given lengths (noise at ``rate``), texts of ~2.6 words/s."""
    from multiturbo.dataset import Sample

    rng = np.random.default_rng(seed)
    items = []
    for i, s in enumerate(seconds):
        audio = (0.1 * rng.standard_normal(int(s * rate))).astype(np.float32)
        words = max(1, int(round(2.6 * s + rng.normal(0, 1))))
        items.append(Sample({"audio": audio, "text": " ".join(rng.choice(WORDS, words))}, int(i % num_classes), {"id": i}))
    return items


def tiny_config(**train) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import TINY  # the tests' tiny experiment: the shapes of the "tiny config"

    raw = {**TINY, "train": {**TINY["train"], "device": "cpu", "diagnostics": False, **train}}
    return raw


def build(raw: dict):
    from multiturbo.build import build_experiment
    from multiturbo.config import check_config, validate_config

    return build_experiment(check_config(validate_config(raw)))


def steps_per_second(state, loader, steps: int) -> tuple[float, int]:
    """Run ``steps`` training steps from the loader's current epoch; (seconds, items)."""
    from multiturbo.train import train_step

    start, items = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        if i == steps:
            break
        train_step(state, batch)
        items += len(batch)
    return time.perf_counter() - start, items


def fixed_batches(sampler, batch_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Epochs 1 and 2 of a fixed-size sampler, cut into its batches."""
    cut = lambda order: [order[k:k + batch_size] for k in range(0, len(order), batch_size)]  # noqa: E731
    return cut(sampler.order(1)), cut(sampler.order(2))


def part_padding_and_speed(args) -> None:
    import torch

    from multiturbo.data import BudgetBatchSampler, Collator, EpochSampler, item_lengths, make_loader, padding_fraction, repeated_pairs, set_loader_epoch
    from multiturbo.train import TrainState

    seconds = durations(args.items, args.seed, args.lengths)
    items = speech_items(seconds, 4000, args.seed)
    lengths = item_lengths(items)
    bs = args.batch_size
    jitter = args.bucket_jitter
    random = EpochSampler(len(items), shuffle=True, seed=0)
    pad_random = padding_fraction(random.order(1), lengths, bs)
    budget = args.max_batch_seconds or bs * float(seconds.mean())  # seconds; the items are arrays, so the loader counts samples
    sampler = BudgetBatchSampler(lengths, budget * 4000, args.min_batch_size, seed=0, jitter=jitter)
    pad_budget, mean_budget = sampler.padding(1), sampler.mean_batch_size(1)
    print(f"\n1. padding share of one epoch: {len(items)} items, batch {bs}; durations {seconds.min():.1f}-{seconds.max():.1f} s, "
          f"median {np.median(seconds):.1f} s, mean {seconds.mean():.1f} s ({'from ' + args.lengths if args.lengths else 'lognormal IEMOCAP-like fit'}); "
          "repeated pairs: the share of pairs of items batched together in epoch 1 that are batched together again in epoch 2")
    print("| batching | audio padding | text padding | mean batch | repeated pairs |\n|---|---|---|---|---|")
    print(f"| random | {pad_random['audio']:.1%} | {pad_random['text']:.1%} | {bs} | {repeated_pairs(*fixed_batches(random, bs)):.1%} |")
    for j in sorted({0.0, jitter}):
        bucket = EpochSampler(len(items), shuffle=True, seed=0, lengths=lengths, batch_size=bs, jitter=j)
        pad_bucket = bucket.padding(1)
        print(f"| bucket, bucket_jitter {j:g} | {pad_bucket['audio']:.1%} | {pad_bucket['text']:.1%} | {bs} | "
              f"{repeated_pairs(*fixed_batches(bucket, bs)):.1%} |")
    print(f"| budget, bucket_jitter {jitter:g} | {pad_budget['audio']:.1%} | {pad_budget['text']:.1%} | {mean_budget:.1f} | "
          f"{repeated_pairs(sampler.batches(1), sampler.batches(2)):.1%} |  (max_batch_seconds {budget:.0f}, min_batch_size {args.min_batch_size})")

    exp = build(tiny_config(batch_size=bs))
    collator = Collator(exp.model.encoders, num_classes=3)
    states, loaders = {}, {}
    names = ("random", "bucket", "budget")
    for name in names:
        torch.manual_seed(0)
        model = build(tiny_config(batch_size=bs)).model  # the same initial weights for all
        states[name] = TrainState.create(model, exp.config.train, torch.device("cpu"))
        loaders[name] = make_loader(items, collator, batch_size=bs, shuffle=True, seed=0, drop_singleton=True,
                                    lengths=lengths if name != "random" else None,
                                    max_batch_seconds=budget * 4000 if name == "budget" else None, min_batch_size=args.min_batch_size,
                                    bucket_jitter=jitter)
    totals = {name: [0.0, 0] for name in states}
    for r in range(args.rounds):
        for name in names:
            set_loader_epoch(loaders[name], r + 1)
            s, n = steps_per_second(states[name], loaders[name], args.steps)
            totals[name][0] += s
            totals[name][1] += n
    if not args.rounds:
        return
    rate = {name: n / s for name, (s, n) in totals.items()}
    print(f"\n2. Turbo K=2 training steps (tiny config, {torch.get_num_threads()} thread(s)): {args.rounds} interleaved rounds of {args.steps} steps each")
    print("| batching | items/s | ratio |\n|---|---|---|")
    print(f"| random | {rate['random']:.1f} | 1.00 |")
    print(f"| bucket | {rate['bucket']:.1f} | {rate['bucket'] / rate['random']:.2f} |")
    print(f"| budget | {rate['budget']:.1f} | {rate['budget'] / rate['random']:.2f} |")


def part_feature_cache(args) -> None:
    import torch

    from multiturbo.data import Collator, make_loader
    from multiturbo.dataset import Splits
    from multiturbo.feature_cache import _MEMO, cache_frozen_features
    from multiturbo.progress import ProgressReporter
    from multiturbo.train import TrainState, train_step

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "plugins"))
    import tiny_hf

    seconds = durations(args.cache_items, args.seed + 1, args.lengths)
    items = speech_items(seconds, 16000, args.seed + 1)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w2v = tiny_hf.build_group_norm_models(Path(tmp), audio_overrides=REAL_CONV)["wav2vec2_group"]
        for mode in ("recompute", "cache"):
            _MEMO.clear()
            raw = tiny_config(batch_size=args.batch_size, frozen_features=mode)
            raw["modalities"] = {**raw["modalities"], "audio": {"encoder": "hf_audio", "options": {"model": w2v, "freeze": "all", "local_files_only": True}}}
            torch.manual_seed(0)
            exp = build(raw)
            start = time.perf_counter()
            splits = cache_frozen_features(Splits(items, [], []), exp.model.encoders, mode, torch.device("cpu"), args.batch_size,
                                           ProgressReporter(quiet=True))
            prepare = time.perf_counter() - start
            loader = make_loader(splits.train, Collator(exp.model.encoders, num_classes=3), batch_size=args.batch_size, shuffle=True, seed=0, drop_singleton=True)
            state = TrainState.create(exp.model, exp.config.train, torch.device("cpu"))
            times[mode] = [prepare]
            for _ in range(args.cache_epochs):
                start = time.perf_counter()
                exp.model.train()
                for batch in loader:
                    train_step(state, batch)
                times[mode].append(time.perf_counter() - start)
    print(f"\n3. freeze: all (tiny wav2vec2 at 16 kHz, random weights; + hashed_transformer), Turbo K=2, {len(items)} items, batch {args.batch_size}: seconds")
    print("| frozen_features | feature pass | " + " | ".join(f"epoch {e + 1}" for e in range(args.cache_epochs)) + " | epoch speed-up |")
    print("|---|---|" + "---|" * args.cache_epochs + "---|")
    for mode, t in times.items():
        speedup = np.mean(times["recompute"][1:]) / np.mean(t[1:])
        print(f"| {mode} | {t[0]:.2f} | " + " | ".join(f"{x:.2f}" for x in t[1:]) + f" | {speedup:.1f}x |")


def part_inference(args) -> None:
    """predict's pass over a manifest of wav files: batches in input order read in this process (the
    code before length sorting) vs length-sorted batches, without and with DataLoader workers."""
    import csv

    import soundfile as sf
    import torch

    from multiturbo.config import check_config, validate_config
    from multiturbo.data import Collator
    from multiturbo.dataset import Sample
    from multiturbo.inference import modality_readers, read_inputs, run_inputs, to_raw
    from multiturbo.model import eval_pass
    from multiturbo.progress import ProgressReporter
    from multiturbo.rundir import load_run
    from multiturbo.run import run_experiment

    seconds = durations(args.predict_items, args.seed + 2, args.lengths)
    items = speech_items(seconds, 4000, args.seed + 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tiny_config(epochs=1)
        run_experiment(check_config(validate_config(raw)), tmp / "run", progress=ProgressReporter(quiet=True))
        run = load_run(tmp / "run")
        with (tmp / "m.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "audio", "text"])
            for i, s in enumerate(items):
                sf.write(tmp / f"{i}.wav", s.inputs["audio"], 4000)
                w.writerow([i, f"{i}.wav", s.inputs["text"]])
        inputs = read_inputs(run, tmp / "m.csv")
        bs = args.batch_size

        def before():  # run_inputs as it was: input order, files read and collated here
            readers, collator = modality_readers(run), Collator(run.model.encoders, num_classes=len(run.classes))

            def batches():
                for start in range(0, len(inputs), bs):
                    yield collator([Sample({m: to_raw(item[m], readers[m], inputs.base) for m in run.modalities}, 0, {"id": iid})
                                    for item, iid in zip(inputs.items[start:start + bs], inputs.ids[start:start + bs])])
            return eval_pass(run.model, batches(), run.device).probs

        cases = {"input order, this process (before)": before,
                 "length-sorted, this process": lambda: run_inputs(run, inputs, batch_size=bs, workers=0).probs,
                 f"length-sorted, {args.workers} workers": lambda: run_inputs(run, inputs, batch_size=bs, workers=args.workers).probs}
        seconds_taken = {name: 0.0 for name in cases}
        results = {}
        for _ in range(args.rounds_predict):
            for name, fn in cases.items():
                start = time.perf_counter()
                results[name] = fn()
                seconds_taken[name] += time.perf_counter() - start
    base = next(iter(seconds_taken.values()))
    print(f"\n4. predict on {len(items)} wav files (tiny run, batch {bs}, {torch.get_num_threads()} thread(s), {args.rounds_predict} interleaved rounds)")
    print("| reading | items/s | ratio | max |prob diff| vs before |\n|---|---|---|---|")
    first = next(iter(results.values()))
    for name, t in seconds_taken.items():
        diff = float((results[name] - first).abs().max())
        print(f"| {name} | {len(items) * args.rounds_predict / t:.1f} | {base / t:.2f} | {diff:.1e} |")


def save_base_models(root: Path) -> tuple[str, str]:
    """wav2vec2-base and BERT-base shapes from transformers' default configs, random weights, saved under ``root``."""
    import torch
    import transformers

    torch.manual_seed(0)
    w2v, bert = root / "wav2vec2-base", root / "bert-base"
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).save_pretrained(w2v)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=False).save_pretrained(w2v)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(bert)
    transformers.BertModel(transformers.BertConfig()).save_pretrained(bert)
    return str(w2v), str(bert)


def part_base_models(args) -> None:
    import torch

    from multiturbo.data import Collator, batches_padding, item_lengths, make_loader, set_loader_epoch
    from multiturbo.dataset import Splits
    from multiturbo.feature_cache import _MEMO, cache_frozen_features
    from multiturbo.progress import ProgressReporter
    from multiturbo.train import TrainState, train_step

    bs, cpu = args.base_batch_size, torch.device("cpu")
    seconds = np.minimum(durations(max(args.base_items, bs * args.base_batches * 4), args.seed + 3, args.lengths), args.base_max_seconds)
    items = speech_items(seconds, 16000, args.seed + 3)
    lengths = item_lengths(items)
    budget = args.max_batch_seconds or bs * float(seconds.mean())

    layers_frozen = args.base_freeze_layers
    # the frozen part of each setting: (hf_audio's options, hf_text's options)
    settings = {"feature_encoder": ({"freeze": "feature_encoder"}, {}), "all": ({"freeze": "all"}, {}),
                f"freeze_layers {layers_frozen}": ({"freeze_layers": layers_frozen}, {"freeze_layers": layers_frozen})}

    def raw(w2v: str, bert: str, setting: str, mode: str) -> dict:
        # frozen_part_dropout eval: with freeze_layers the cached layers' dropout is lost (the opt-in)
        r = tiny_config(batch_size=bs, frozen_features=mode, frozen_part_dropout="eval")
        audio, text = settings[setting]
        r["modalities"] = {"audio": {"encoder": "hf_audio", "options": {"model": w2v, "local_files_only": True, **audio}},
                           "text": {"encoder": "hf_text", "options": {"model": bert, "local_files_only": True, **text}}}
        return r

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w2v, bert = save_base_models(Path(tmp))
        torch.manual_seed(0)
        exp = build(raw(w2v, bert, "feature_encoder", "recompute"))
        state = TrainState.create(exp.model, exp.config.train, cpu)
        collator = Collator(exp.model.encoders, num_classes=3)
        rows = []
        for name in ("random", "bucket", "budget"):
            loader = make_loader(items, collator, batch_size=bs, shuffle=True, seed=0, drop_singleton=True, lengths=None if name == "random" else lengths,
                                 max_batch_seconds=budget * 16000 if name == "budget" else None, min_batch_size=args.min_batch_size,
                                 bucket_jitter=args.bucket_jitter)
            set_loader_epoch(loader, 1)
            batches = list(loader.batch_sampler)[: args.base_batches]
            pad = batches_padding(batches, lengths)
            exp.model.train()
            start, n = time.perf_counter(), 0
            for b in batches:
                batch = collator([items[i] for i in b])
                train_step(state, batch)
                n += len(b)
            took = time.perf_counter() - start
            audio = sum(float(seconds[i]) for b in batches for i in b)  # the timed batches draw different items
            rows.append((name, pad, n / len(batches), n / took, audio / took))
        print(f"\n5a. wav2vec2-base + BERT-base shapes (random weights), freeze: feature_encoder, Turbo K=2, {torch.get_num_threads()} thread(s), "
              f"{args.base_batches} batches each; durations clipped at {args.base_max_seconds:g} s; budget {budget:.1f} s, min_batch_size {args.min_batch_size}")
        print("(audio s/s: seconds of audio trained per second; each batching's timed batches hold other items, so it is the fairer rate)")
        print("| batching | audio padding | text padding | mean batch | items/s | ratio | audio s/s | ratio |\n|---|---|---|---|---|---|---|---|")
        for name, pad, mean, rate, audio in rows:
            print(f"| {name} | {pad['audio']:.1%} | {pad['text']:.1%} | {mean:.1f} | {rate:.2f} | {rate / rows[0][3]:.2f} | "
                  f"{audio:.2f} | {audio / rows[0][4]:.2f} |")
        if args.skip_epochs:
            return

        few = items[: args.base_items]
        times = {}
        for freeze in settings:
            for mode in ("recompute", "cache"):
                _MEMO.clear()
                torch.manual_seed(0)
                exp = build(raw(w2v, bert, freeze, mode))
                start = time.perf_counter()
                splits = cache_frozen_features(Splits(few, [], []), exp.model.encoders, mode, cpu, bs, ProgressReporter(quiet=True),
                                               part_dropout=exp.config.train.frozen_part_dropout)
                prepare = time.perf_counter() - start
                loader = make_loader(splits.train, Collator(exp.model.encoders, num_classes=3), batch_size=bs, shuffle=True, seed=0, drop_singleton=True)
                state = TrainState.create(exp.model, exp.config.train, cpu)
                exp.model.train()
                start = time.perf_counter()
                for batch in loader:
                    train_step(state, batch)
                times[(freeze, mode)] = (prepare, time.perf_counter() - start)
    print(f"\n5b. one epoch of {len(few)} items (batch {bs}), wav2vec2-base + BERT-base shapes, Turbo K=2: seconds")
    print(f"(freeze_layers {layers_frozen}: the first {layers_frozen} of 12 layers of both encoders frozen; "
          f"cache keeps the state after layer {layers_frozen})")
    print("| freeze | frozen_features | one-off pass | epoch | epoch speed-up |\n|---|---|---|---|---|")
    for (freeze, mode), (prepare, epoch) in times.items():
        print(f"| {freeze} | {mode} | {prepare:.1f} | {epoch:.1f} | {times[(freeze, 'recompute')][1] / epoch:.2f}x |")


def main() -> None:
    from multiturbo.config.schema import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=512, help="items for parts 1 and 2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=16, help="training steps per round (part 2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (part 2)")
    p.add_argument("--cache-items", type=int, default=96, help="items for part 3")
    p.add_argument("--cache-epochs", type=int, default=2)
    p.add_argument("--lengths", default=None, help="a file of real durations in seconds (one per line) instead of the fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--predict-items", type=int, default=1000, help="items for part 4")
    p.add_argument("--rounds-predict", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers in part 4")
    p.add_argument("--max-batch-seconds", type=float, default=None, help="budget of train.max_batch_seconds (default: batch size x mean duration)")
    p.add_argument("--min-batch-size", type=int, default=4, help="train.min_batch_size for the budgeted batches")
    p.add_argument("--bucket-jitter", type=float, default=TrainConfig.model_fields["bucket_jitter"].default,
                   help="train.bucket_jitter for the bucketed and budgeted batches (default: the config's)")
    p.add_argument("--base-items", type=int, default=16, help="items of part 5b's epoch")
    p.add_argument("--base-batch-size", type=int, default=4)
    p.add_argument("--base-freeze-layers", type=int, default=8, help="part 5b's freeze_layers row: layers frozen (of 12) in both encoders")
    p.add_argument("--base-batches", type=int, default=3, help="batches timed per batching in part 5a")
    p.add_argument("--base-max-seconds", type=float, default=34.0, help="clip part 5's durations (CPU time)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: 2,3,4,5 (5b: part 5's epochs only)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if "2" in skip:
        args.rounds = 0
    part_padding_and_speed(args)
    if "3" not in skip:
        part_feature_cache(args)
    if "4" not in skip:
        part_inference(args)
    if "5" not in skip:
        args.skip_epochs = "5b" in skip
        part_base_models(args)


if __name__ == "__main__":
    main()
