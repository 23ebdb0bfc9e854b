"""Benchmark turbo_loss against a per-pair loop (the paper's Listing 1) and the compute floor.

Forward + backward, float32, d = 256, on the CPU with torch's default threads. For every grid
point (M modalities, K passes, B items) the loop, turbo_loss (and with --strategies the
plain-autograd alternatives) are timed alternately with a probe, one 2048^3 matmul: 2 warmup
rounds, then the median of N rounds. The compute floor of a grid point is the FLOPs of its needed
B x B blocks (forward 2*B*B*d per block, backward twice that) at the median rate of its own probes.

    python benchmarks/bench_turbo_loss.py                # full grid, ~1.5 min on 2 CPU cores
    python benchmarks/bench_turbo_loss.py --quick        # 5 rounds instead of 21
    python benchmarks/bench_turbo_loss.py --strategies   # also time the plain-autograd alternatives

Targets: loop/turbo >= 0.95 everywhere; >= 1.3 at B <= 64; turbo/floor <= 1.5 at M=3, K=2, B=256.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

import multiturbo.loss as L


def loop_loss(views: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """The per-pair reference: one info_nce call per pair of views (in-modal + cross-modal)."""
    flat = [(m, k, v[k]) for m, v in views.items() for k in range(v.shape[0])]
    total = 0.0
    for a, (m, _, x) in enumerate(flat):
        for n, _, y in flat[a + 1 :]:
            total = total + L.info_nce(x, y, temperature)
    return total


def autograd_rows(views: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Alternative measured for turbo_loss: one matmul per anchor view against all later views, plain autograd."""
    z = F.normalize(torch.stack(list(views.values())).flatten(0, 1), dim=-1)  # [V, B, d]
    V, B, d = z.shape
    za, out = z / temperature, []
    for i in range(V - 1):
        s = (za[i] @ z[i + 1 :].flatten(0, 1).T).view(B, V - 1 - i, B)  # [B, n, B]
        pos = s.diagonal(dim1=0, dim2=2)  # [n, B]
        out.append((0.5 * (s.logsumexp(2).T + s.logsumexp(0)) - pos).mean(1))
    return torch.cat(out).sum()


def autograd_bmm(views: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Alternative measured for turbo_loss: one batched matmul over all gathered pairs [P, B, B], plain autograd."""
    z = F.normalize(torch.stack(list(views.values())).flatten(0, 1), dim=-1)  # [V, B, d]
    I, J = torch.triu_indices(len(z), len(z), 1)  # [P], [P]
    s = torch.bmm(z[I] / temperature, z[J].transpose(1, 2))  # [P, B, B]
    pos = s.diagonal(dim1=1, dim2=2)  # [P, B]
    return (0.5 * (s.logsumexp(2) + s.logsumexp(1)) - pos).mean(1).sum()


def step(fn, views: dict[str, torch.Tensor]) -> float:
    """Seconds for one forward + backward."""
    for v in views.values():
        v.grad = None
    t = time.perf_counter()
    fn().backward()
    return time.perf_counter() - t


class MatmulProbe:
    """Times one large float32 matmul; its FLOP/s is the rate the compute floor is measured at."""

    def __init__(self, n: int = 2048):
        self.a, self.b, self.flops = torch.randn(n, n), torch.randn(n, n), 2 * n**3
        self.a @ self.b

    def __call__(self) -> float:
        t = time.perf_counter()
        self.a @ self.b
        return self.flops / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    ap.add_argument("--strategies", action="store_true", help="also time the plain-autograd alternatives (rows, bmm)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per grid point (default 21, --quick 5)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.07)
    args = ap.parse_args()
    reps, warmup = args.reps or (5 if args.quick else 21), 2
    d, tau = args.dim, args.temperature
    torch.manual_seed(0)

    variants = {"loop": loop_loss, "turbo": lambda views, tau: L.turbo_loss(views, temperature=tau).total}
    if args.strategies:
        variants |= {"rows": autograd_rows, "bmm": autograd_bmm}
    probe, all_rates, rows = MatmulProbe(), [], []
    for M in (2, 3):
        for K in (2, 3, 4):
            for B in (32, 64, 256):
                views = {f"m{i}": torch.randn(K, B, d, requires_grad=True) for i in range(M)}
                fns = {name: partial(fn, views, tau) for name, fn in variants.items()}
                times, rates = {name: [] for name in fns}, []
                for r in range(warmup + reps):  # alternate the variants and the probe; keep post-warmup times
                    for name, fn in fns.items():
                        t = step(fn, views)
                        if r >= warmup:
                            times[name].append(t)
                    if r >= warmup:
                        rates.append(probe())
                V = M * K
                P = V * (V - 1) // 2
                floor = P * 3 * 2 * B * B * d / statistics.median(rates)  # fwd 2*B*B*d per block, bwd twice that
                rows.append(dict(M=M, K=K, B=B, P=P, floor=floor, **{n: statistics.median(ts) for n, ts in times.items()}))
                all_rates += rates
                print(".", end="", flush=True)
    print()
    extra = [n for n in variants if n not in ("loop", "turbo")]
    header = ["M", "K", "B", "P", "loop ms", "turbo ms", *(f"{n} ms" for n in extra), "speedup", "turbo/floor", "loop/floor"]
    table = []
    for r in rows:
        r["speedup"], r["turbo/floor"] = r["loop"] / r["turbo"], r["turbo"] / r["floor"]
        table.append([r["M"], r["K"], r["B"], r["P"], f"{r['loop'] * 1e3:.2f}", f"{r['turbo'] * 1e3:.2f}",
                      *(f"{r[n] * 1e3:.2f}" for n in extra),
                      f"{r['speedup']:.2f}x", f"{r['turbo/floor']:.2f}", f"{r['loop'] / r['floor']:.2f}"])
    q = statistics.quantiles(all_rates, n=10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={d}, float32, forward+backward, "
          f"median of {reps} alternating runs; 2048^3 matmul rate (probed between runs, floor per row from its "
          f"own probes): median {statistics.median(all_rates) / 1e9:.0f} GFLOP/s, "
          f"10-90% {q[0] / 1e9:.0f}-{q[-1] / 1e9:.0f}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    for line in [header, *table]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))

    t1 = min(r["speedup"] for r in rows)
    t2 = min(r["speedup"] for r in rows if r["B"] <= 64)
    t3 = next(r["turbo/floor"] for r in rows if (r["M"], r["K"], r["B"]) == (3, 2, 256))
    for ok, text in [(t1 >= 0.95, f"never slower than the loop: min speedup {t1:.2f} >= 0.95"),
                     (t2 >= 1.3, f">= 1.3x faster than the loop at B <= 64: min speedup {t2:.2f}"),
                     (t3 <= 1.5, f"within 1.5x of the compute floor at M=3, K=2, B=256: {t3:.2f}")]:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
