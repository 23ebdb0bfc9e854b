"""Ablations of what makes the contrastive terms learn or collapse (docs/training-dynamics.md).

Runs one config under several variants (each a list of ``--set`` overrides) and seeds, and prints
one row per variant: the best epoch's validation UA, the last epoch's cross-modal and in-modal terms as a share of log(B), the
validation uniformity and recall@1 at the last epoch, and the test split's alignment, uniformity,
recall@1 (chance = 1/N) and UA with the best weights.

    python benchmarks/training_dynamics.py configs/demo.yaml --seeds 0 \\
        --variant "paper=model.feature_norm=none turbo.reduction=sum" \\
        --variant "defaults=" --out runs/dynamics

A variant is NAME=OVERRIDE OVERRIDE ...; ``--json FILE`` also writes every row. Real data and
weights are never needed: pass any config.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from multiturbo.config.load import load_config
from multiturbo.diagnostics import is_cross_modal
from multiturbo.run import run_experiment


def row_of(run_dir: Path, metrics: dict) -> dict:
    """The figures of one finished run."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rec = records[-1]
    best = [r for r in records if r.get("best")] or records
    diag = rec.get("diagnostics", {})
    ratios = diag.get("term_ratio", {})
    modalities = list(diag.get("uniformity", {}))
    cross = [r for name, r in ratios.items() if is_cross_modal(name, modalities)]
    inside = [r for name, r in ratios.items() if not is_cross_modal(name, modalities)]
    analysis = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    retrieval = analysis.get("retrieval", {})
    return {
        "epochs": rec["epoch"],
        "val_ua": best[-1]["val"]["ua"],
        "cross/logB": statistics.fmean(cross) if cross else math.nan,
        "in/logB": statistics.fmean(inside) if inside else math.nan,
        "val_unif": statistics.fmean(diag.get("uniformity", {}).values()) if diag.get("uniformity") else math.nan,
        "val_r@1": statistics.fmean(diag.get("recall@1", {}).values()) if diag.get("recall@1") else math.nan,
        "test_align": statistics.fmean(analysis["alignment"].values()) if analysis["alignment"] else math.nan,
        "test_unif": statistics.fmean(analysis["uniformity"].values()),
        "test_r@1": statistics.fmean(r["recall@1"] for r in retrieval.values()) if retrieval else math.nan,
        "chance": 1.0 / analysis["n_items"],
        "test_ua": metrics["ua"],
    }


def draw_curves(runs: list[tuple[str, int, Path]], path: str) -> None:
    """Per epoch, one line per run (colour = variant): mean cross-modal term / log(B), mean validation
    uniformity, mean validation recall@1."""
    import matplotlib  # noqa: PLC0415  (optional: only for --figure)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(dict.fromkeys(name for name, _, _ in runs))
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, seed, out in runs:
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        epochs = [r["epoch"] for r in records]
        def series(f):
            return [f(r.get("diagnostics", {})) for r in records]
        cross = series(lambda d: statistics.fmean([v for k, v in d.get("term_ratio", {}).items()
                                                   if is_cross_modal(k, list(d.get("uniformity", {})))] or [math.nan]))
        unif = series(lambda d: statistics.fmean(d.get("uniformity", {}).values() or [math.nan]))
        rec = series(lambda d: statistics.fmean(d.get("recall@1", {}).values() or [math.nan]))
        for ax, ys in zip(axes, (cross, unif, rec)):
            ax.plot(epochs, ys, color=colours[name], alpha=0.8, label=name if seed == runs[0][1] else None)
    for ax, title in zip(axes, ("cross-modal terms / log(B) (train)", "uniformity (validation; 0 = collapsed)", "recall@1 (validation)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--variant", action="append", required=True, help="NAME=KEY=VALUE KEY=VALUE ...")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--set", action="append", default=[], help="an override for every variant")
    ap.add_argument("--out", default="runs/dynamics")
    ap.add_argument("--json", default=None, help="also write every run's row to this JSON file")
    ap.add_argument("--figure", default=None, help="also draw the per-epoch curves (cross-modal terms / log(B), validation uniformity, recall@1) of every run to this PNG")
    args = ap.parse_args(argv)
    rows, keys, curves = [], None, []
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        per_seed = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            overrides = [*args.set, *rest.split(), f"seed={seed}"]
            cfg = load_config(args.config, overrides)
            out = Path(args.out) / f"{name}-seed{seed}"
            metrics = run_experiment(cfg, out, overwrite=True)
            row = row_of(out, metrics)
            rows.append({"variant": name, "seed": seed, "overrides": overrides, **row})
            per_seed.append(row)
            curves.append((name, seed, out))
            print(f"  {name} seed {seed}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()), file=sys.stderr, flush=True)
        keys = list(per_seed[0])
        mean = {k: statistics.fmean(r[k] for r in per_seed) for k in keys}
        print(f"| {name} | " + " | ".join(f"{mean[k]:.3f}" for k in keys) + " |", flush=True)
    print("| variant | " + " | ".join(keys or []) + " |  (means over seeds; columns as above)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.figure:
        draw_curves(curves, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
