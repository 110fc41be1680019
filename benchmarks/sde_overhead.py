"""Overhead of ``solve`` with Euler-Maruyama on a neural SDE, against a hand-written loop and torchsde.

Problem (issue 3): drift and diffusion are MLPs 2-64-2 (tanh), diagonal noise, batch 256, 100 steps
of Euler-Maruyama on [0, 1], no gradients. Measured in one process, same threads:

* ``hand``: a Python loop ``y = y + f(t, y) h + g(t, y) dW[i]`` over increments pre-drawn with one
  ``randn`` call (the floor any solver library can reach);
* ``solve``: ``solve(SDEProblem(...), EulerMaruyama(), dt=0.01)`` (increments drawn up front too);
* ``torchsde_dt``: ``torchsde.sdeint(method="euler", dt=0.01)`` with a ``BrownianInterval`` told ``dt``;
* ``torchsde_default``: the same with a default ``BrownianInterval`` (no ``dt`` hint).

Targets: solve <= 1.3x hand, solve <= 0.6x torchsde_dt. Prints the table and writes JSON + PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers import solve  # noqa: E402
from solvers.problem import SDEProblem  # noqa: E402
from solvers.sde import EulerMaruyama  # noqa: E402


def mlp(width: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 2))


class NeuralSDE(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self) -> None:
        super().__init__()
        self.drift, self.diffusion = mlp(), mlp()

    def f(self, t, y):
        return self.drift(y)

    def g(self, t, y):
        return self.diffusion(y)


def timeit(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/benchmarks/sde_overhead")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 5
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import torchsde

    dev = torch.device(args.device)
    sde = NeuralSDE().to(dev)
    y0 = torch.randn(args.batch, 2, device=dev)
    n, h = args.steps, 1.0 / args.steps
    ts = torch.tensor([0.0, 1.0], device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def hand():
        dW = torch.randn(n, *y0.shape, device=dev) * h ** 0.5
        y = y0
        for i in range(n):
            t = i * h
            y = y + sde.f(t, y) * h + sde.g(t, y) * dW[i]
        sync()
        return y

    prob = SDEProblem(sde.f, sde.g, y0, (0.0, 1.0))

    def ours():
        y = solve(prob, EulerMaruyama(), dt=h).ys[-1]
        sync()
        return y

    def tsde(with_dt: bool):
        def run():
            kw = dict(dt=h) if with_dt else {}
            bm = torchsde.BrownianInterval(0.0, 1.0, size=y0.shape, device=dev, **kw)
            y = torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", dt=h)[-1]
            sync()
            return y
        return run

    cases = {"hand": hand, "solve": ours, "torchsde_dt": tsde(True), "torchsde_default": tsde(False)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        # Interleave the cases so that load changes on a shared machine hit all of them alike.
        for _ in range(2):
            for fn in cases.values():
                fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].extend(timeit(fn, 1, warmup=0))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio_hand = {k: med[k] / med["hand"] for k in med}
    res = {
        "device": str(dev), "threads": args.threads, "batch": args.batch, "steps": args.steps,
        "repeats": args.repeats, "median_s": med, "ratio_to_hand": ratio_hand,
        "solve_over_torchsde_dt": med["solve"] / med["torchsde_dt"],
        "targets": {"solve_over_hand<=1.3": med["solve"] / med["hand"] <= 1.3,
                    "solve_over_torchsde_dt<=0.6": med["solve"] / med["torchsde_dt"] <= 0.6},
        "all_times_s": times,
    }
    print(f"neural SDE (MLP 2-64-2 drift+diffusion), batch {args.batch}, {n} EM steps, {dev}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'case':<18}{'median ms':>12}{'x hand':>10}")
    for k in cases:
        print(f"{k:<18}{1e3 * med[k]:>12.2f}{ratio_hand[k]:>10.2f}")
    print(f"solve / torchsde_dt = {res['solve_over_torchsde_dt']:.3f} (target <= 0.6); "
          f"solve / hand = {ratio_hand['solve']:.3f} (target <= 1.3)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(cases)
    ax.bar(names, [ratio_hand[k] for k in names], color=["gray", "C0", "C1", "C3"])
    ax.set_yscale("log")
    ax.axhline(1.3, ls="--", c="k", lw=0.8, label="target for solve (1.3x hand)")
    ax.set_ylabel("time / hand-written loop")
    ax.set_title(f"Euler-Maruyama, neural SDE, batch {args.batch}, {n} steps ({dev})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sde_overhead.png", dpi=120)
    print(f"wrote {out / 'results.json'} and {out / 'sde_overhead.png'}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
