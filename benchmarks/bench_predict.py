"""``multiturbo predict`` over a manifest of WAV files: today's code against the code before
length-sorted inference (issue 18: "at least 5x items/s on 10,000 items with the demo encoders").

The model: configs/demo.yaml's encoders and sizes (logmel_cnn at 8 kHz + hashed_transformer, dim
64), trained for one epoch on 256 synthetic items (the weights do not change the speed).

The items: WAV files (16-bit PCM, 16 kHz mono, so the encoder resamples them to its 8 kHz as it
would a recording) with utterance durations drawn from a lognormal fitted to IEMOCAP's published
summary (median about 3.4 s, mean about 4.5 s, 0.6-34 s; benchmarks/bench_throughput.py's fit,
or ``--lengths FILE`` of real durations), low noise as samples, and transcripts of about 2.6 words
per second. The files are written once into ``--data`` and reused (about 1.4 GB for 10,000 items).

The baseline: the package as it was at ``--baseline`` (default ``c324cca^``, the commit before
"predict / evaluate / embed: inputs in length-sorted batches"), extracted with ``git archive``.
Each version runs ``multiturbo predict RUN manifest.csv -o preds.csv -q`` with its own defaults
(no --batch-size, no --workers) in a fresh subprocess with the same environment (thread settings
included); the time is the command's own (model loading, reading, the pass, writing the CSV),
not Python's start-up and imports, which are reported apart. Rounds are interleaved (old, new,
old, new...) so both see the same machine load; min and median are printed, and the two CSVs
are compared (same ids in the same order, largest probability difference).

    python benchmarks/bench_predict.py                          # 10,000 items, 2 rounds
    python benchmarks/bench_predict.py --items 2000 --rounds 3  # quicker
    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py        # one thread per process
    python benchmarks/bench_predict.py --items 2000 --profile   # where today's pass spends its CPU time

Today's code on the CPU: one DataLoader worker per core, each reading, resampling, collating and
running the model on whole batches with one thread, handing back only the outputs (see
docs/using-a-trained-model.md, "Making it fast"). The CPU time per item of all processes is the
figure to watch on a shared machine: items/s move with the other jobs' load.

``--profile``: today's pass in this process (no workers, so every step is seen; one thread, as each
worker runs it) under cProfile with CPU time as its clock: the share of reading, resampling,
collating and each encoder's forward. cProfile's own cost inflates the Python-heavy steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import WORDS, durations  # noqa: E402  (the IEMOCAP-like lengths, shared)

DRIVER = """
import json, resource, sys, time
t0 = time.perf_counter()
import torch, multiturbo.api
from multiturbo.cli import cli
from multiturbo.plugins import get_registries
get_registries()
t1, c1 = time.perf_counter(), time.process_time()
cli.main(sys.argv[1:], prog_name="multiturbo", standalone_mode=False)
t2, c2 = time.perf_counter(), time.process_time()
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print("BENCH " + json.dumps({"import_s": t1 - t0, "predict_s": t2 - t1, "cpu_s": c2 - c1 + kids.ru_utime + kids.ru_stime}))
"""


def prepare(data: Path, n: int, rate: int, seed: int, lengths: str | None) -> Path:
    """A trained demo run (data/run) and a manifest of n WAV files (data/manifest.csv), written once."""
    import soundfile as sf

    stamp = {"items": n, "rate": rate, "seed": seed, "lengths": lengths}
    if (data / "stamp.json").exists() and json.loads((data / "stamp.json").read_text()) == stamp:
        return data / "manifest.csv"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "run" / "best.safetensors").exists():
        from multiturbo.config import load_config
        from multiturbo.progress import ProgressReporter
        from multiturbo.run import run_experiment

        cfg = load_config(ROOT / "configs" / "demo.yaml", ["train.epochs=1", "data.options.size=256"])
        run_experiment(cfg, data / "run", overwrite=True, progress=ProgressReporter(quiet=True))
    seconds = durations(n, seed, lengths)
    rng = np.random.default_rng(seed)
    (data / "wav").mkdir(exist_ok=True)
    with (data / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text"])
        for i, s in enumerate(seconds):
            samples = (0.1 * rng.standard_normal(int(s * rate))).astype(np.float32)
            sf.write(data / "wav" / f"{i}.wav", samples, rate, subtype="PCM_16")
            words = max(1, int(round(2.6 * s + rng.normal(0, 1))))
            w.writerow([f"utt{i}", f"wav/{i}.wav", " ".join(rng.choice(WORDS, words))])
    (data / "stamp.json").write_text(json.dumps(stamp))
    print(f"wrote {n} WAV files ({seconds.sum() / 3600:.1f} h of audio, {rate} Hz) to {data}", flush=True)
    return data / "manifest.csv"


def extract(rev: str, where: Path) -> Path:
    """The package at git revision ``rev`` (git archive), extracted once."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    out = where / f"baseline-{commit[:10]}"
    if not (out / "multiturbo").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def predict(source: Path, run: Path, manifest: Path, out: Path, extra: list[str]) -> dict:
    """``multiturbo predict`` of the package under ``source`` in a fresh process: its timings."""
    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{source / 'plugins'}"}
    cmd = [sys.executable, "-c", DRIVER, "predict", str(run), str(manifest), "-o", str(out), "-q", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=source)
    if done.returncode != 0:
        raise SystemExit(f"{source}: predict failed:\n{done.stdout}\n{done.stderr}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[6:])


def read_preds(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c.startswith("prob_")]
    return [r["id"] for r in rows], np.array([[float(r[c]) for c in cols] for r in rows])


STEPS = {  # (file suffix, function) -> step; cumulative CPU time of each
    ("multiturbo/audio.py", "load_audio"): "read the files (WAV parsed here; libsndfile for other formats)",
    ("multiturbo/audio.py", "resample"): "resample 16 -> 8 kHz (soxr)",
    ("multiturbo/data.py", "__call__"): "collate (padding, tokenising; resampling included)",
    ("multiturbo_basic_encoders/audio.py", "forward"): "forward: logmel_cnn (STFT, log-mel, CNN)",
    ("multiturbo_basic_encoders/text.py", "forward"): "forward: hashed_transformer",
    ("multiturbo/model.py", "eval_batch"): "forward: the whole model (encoders, heads, softmax)",
    ("multiturbo/inference.py", "run_inputs"): "the pass (all of the above)",
}


def profile(run_dir: Path, manifest: Path) -> None:
    """Today's pass over ``manifest`` in this process (workers=0, one thread, as each worker runs it)
    under cProfile (CPU time): each step's share."""
    import cProfile
    import pstats

    import torch

    from multiturbo.inference import read_inputs, run_inputs
    from multiturbo.rundir import load_run

    run = load_run(run_dir)
    inputs = read_inputs(run, manifest)
    torch.set_num_threads(1)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    start = time.process_time()
    run_inputs(run, inputs, workers=0)
    total = time.process_time() - start
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, function): (calls, primitive calls, own time, cumulative time, callers)}
    print(f"\nprofile of today's pass in one process (workers 0, 1 thread), {len(inputs)} items, "
          f"{total / len(inputs) * 1e3:.2f} ms CPU per item under cProfile")
    print("| step | CPU ms per item | share of the pass |\n|---|---|---|")
    for (suffix, function), name in STEPS.items():
        t = sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == function)
        print(f"| {name} | {t / len(inputs) * 1e3:.3f} | {t / total:.0%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (old, new, old, new...)")
    p.add_argument("--data", type=Path, default=Path("/tmp/multiturbo_bench_predict"), help="where the run, the WAV files and the baseline go (reused)")
    p.add_argument("--rate", type=int, default=16000, help="sample rate of the WAV files")
    p.add_argument("--lengths", default=None, help="a file of real durations in seconds (one per line) instead of the fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", default="c324cca^", help="git revision of the code to compare against")
    p.add_argument("--new-args", default="", help="extra predict options for today's code, e.g. '--workers 2'")
    p.add_argument("--profile", action="store_true", help="profile today's pass in this process instead of comparing")
    args = p.parse_args()

    data = args.data / f"{args.items}-{args.rate}-{args.seed}"
    manifest = prepare(data, args.items, args.rate, args.seed, args.lengths)
    if args.profile:
        return profile(data / "run", manifest)
    versions = {"before (baseline)": extract(args.baseline, args.data), "today": ROOT}
    extra = {"before (baseline)": [], "today": args.new_args.split()}
    times: dict[str, list[dict]] = {name: [] for name in versions}
    for r in range(args.rounds):
        for name, source in versions.items():
            times[name].append(predict(source, data / "run", manifest, data / f"preds-{'old' if 'before' in name else 'new'}.csv", extra[name]))
            print(f"round {r + 1}: {name}: {times[name][-1]['predict_s']:.1f} s", flush=True)
    ids_old, p_old = read_preds(data / "preds-old.csv")
    ids_new, p_new = read_preds(data / "preds-new.csv")
    threads = os.environ.get("OMP_NUM_THREADS", f"unset ({os.cpu_count()} CPUs)")
    print(f"\npredict on {args.items} WAV files ({args.rate} Hz), demo encoders, OMP_NUM_THREADS {threads}, {args.rounds} interleaved rounds; "
          f"baseline {args.baseline} ({versions['before (baseline)'].name})")
    print("| code | items/s (best) | items/s (median) | CPU ms per item (median, all processes) | imports s |\n|---|---|---|---|---|")
    best, med = {}, {}
    for name, ts in times.items():
        secs = [t["predict_s"] for t in ts]
        best[name], med[name] = args.items / min(secs), args.items / statistics.median(secs)
        cpu = statistics.median(t["cpu_s"] for t in ts) / args.items * 1e3
        print(f"| {name} {' '.join(extra[name])} | {best[name]:.1f} | {med[name]:.1f} | {cpu:.2f} | {statistics.median(t['import_s'] for t in ts):.1f} |")
    old, new = "before (baseline)", "today"
    print(f"ratio today / before: {best[new] / best[old]:.2f}x (best), {med[new] / med[old]:.2f}x (median)")
    print(f"rows: same ids in the same order: {ids_old == ids_new}; max |prob diff| {np.abs(p_old - p_new).max():.1e} (CSV, 6 significant digits)")


if __name__ == "__main__":
    main()
