"""DDP training step time of the shared trainer for 1 and 2 processes (gloo, CPU): a NeuralODE classifier.

Strong scaling: the *global* batch is fixed, so 2 ranks each solve half of it (``solvers.training``
shards every global batch contiguously) and DDP all-reduces the gradients in the backward pass. One
step = forward solve, backward (``--adjoint``: backprop through the solver, or ``BacksolveAdjoint``),
gradient all-reduce, Adam step, and the trainer's per-step metrics all-reduce.

Configurations (all CPU, gloo on localhost): 1 process with 1 thread (no DDP: the trainer does not wrap a
world of one), 2 processes with 1 thread each (DDP), and for reference 1 process with 2 threads (the
same two cores used by intra-op parallelism instead of data parallelism). Each configuration runs in
freshly started processes (``solvers.training.spawn``); the first ``--warmup`` steps are not timed;
per step, every rank waits at a barrier, then times its step; the step time of a world is the slowest
rank's, and the table reports its median and interquartile range over the timed steps.

Usage::

    python benchmarks/scaling_training.py --quick                 # about a minute
    python benchmarks/scaling_training.py --batch 512 --steps 40  # larger problem

Writes ``results.json`` and ``scaling_training.png`` under ``--out`` (default
``out/benchmarks/scaling_training``). On a machine whose cores are shared with other jobs the numbers
move with the load: the JSON records ``os.getloadavg()`` before and after each configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers.training import (  # noqa: E402
    TrainConfig,
    Trainer,
    all_reduce_sum,
    current_context,
    distributed_available,
    spawn,
)
from solvers.training.distributed import barrier  # noqa: E402


class Field(nn.Module):
    def __init__(self, d: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, d))

    def forward(self, t, y):
        return self.net(y)


class Classifier(nn.Module):
    """Linear embedding -> NeuralODE block (Tsit5, adaptive) -> linear head (the digits model's shape)."""

    def __init__(self, features: int, hidden: int, width: int, classes: int, adjoint: str):
        super().__init__()
        from nde import NeuralODE
        from solvers import Backprop, BacksolveAdjoint, Tsit5

        adj = BacksolveAdjoint() if adjoint == "backsolve" else Backprop()
        self.embed = nn.Linear(features, hidden)
        self.ode = NeuralODE(Field(hidden, width), Tsit5(), rtol=1e-4, atol=1e-6, adjoint=adj)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.ode(self.embed(x))[-1])


def _data(n: int, features: int, classes: int):
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(classes, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, features, generator=g), y


def measure(batch: int, hidden: int, width: int, steps: int, warmup: int, adjoint: str) -> dict:
    """Run on every rank: ``warmup + steps`` training steps of one global batch each; per-step seconds."""
    features, classes = 16, 4
    x, y = _data(batch, features, classes)
    torch.manual_seed(0)
    model = Classifier(features, hidden, width, classes, adjoint)
    trainer = Trainer(model, lambda m, idx, ctx: nn.functional.cross_entropy(m(x[idx]), y[idx]),
                      TrainConfig(epochs=1, batch_size=batch, lr=1e-3, progress=False), data=batch)
    d = current_context()
    everything = torch.arange(batch)
    times, losses = [], []
    for k in range(warmup + steps):
        barrier(d)
        t0 = time.perf_counter()
        info = trainer.step(0, k, everything)
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt)
            losses.append(info.loss)
    # the step time of the world is its slowest rank's, step by step: gather every rank's times
    w = d.world_size
    mine = [0.0] * (len(times) * w)
    for i, t in enumerate(times):
        mine[i * w + d.rank] = t
    every = all_reduce_sum(mine, d)
    slowest = [max(every[i * w:(i + 1) * w]) for i in range(len(times))]
    return {"rank": d.rank, "world": w, "threads": torch.get_num_threads(), "times": times,
            "slowest": slowest, "losses": losses, "nfe_forward": model.ode.nfe_forward}


def _summary(step_times: list[float]) -> dict:
    q = statistics.quantiles(step_times, n=4) if len(step_times) >= 2 else [step_times[0]] * 3
    return {"median_s": statistics.median(step_times), "q1_s": q[0], "q3_s": q[2], "n": len(step_times)}


def run_config(procs: int, threads: int, args: argparse.Namespace) -> dict:
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    job = (args.batch, args.hidden, args.width, args.steps, args.warmup, args.adjoint)
    ranks = spawn(measure, procs, job, timeout=args.timeout, threads=threads, start_method=args.start_method)
    wall = time.perf_counter() - t0
    slowest = ranks[0]["slowest"]
    out = {"procs": procs, "threads_per_proc": threads, "ddp": procs > 1, **_summary(slowest),
           "samples_per_s": args.batch / statistics.median(slowest),
           "per_rank_median_s": [statistics.median(r["times"]) for r in ranks],
           "first_losses": ranks[0]["losses"][:3], "wall_s_incl_startup": wall, "loadavg_before": load_before,
           "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(f"  {procs} proc x {threads} thread(s){' (DDP)' if procs > 1 else ''}: median step "
          f"{1e3 * out['median_s']:.1f} ms [{1e3 * out['q1_s']:.1f}, {1e3 * out['q3_s']:.1f}], "
          f"{out['samples_per_s']:.0f} samples/s", flush=True)
    return out


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['procs']}p x {r['threads_per_proc']}t" + (" DDP" if r["ddp"] else "") for r in results]
    med = [1e3 * r["median_s"] for r in results]
    err = [[1e3 * (r["median_s"] - r["q1_s"]) for r in results],
           [1e3 * (r["q3_s"] - r["median_s"]) for r in results]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(labels, med, yerr=err, color=[f"C{i}" for i in range(len(results))], capsize=4)
    ax1.set_ylabel("training step time (ms, median, IQR)")
    ax1.set_title(title)
    base = results[0]["median_s"]
    ax2.bar(labels, [base / r["median_s"] for r in results], color=[f"C{i}" for i in range(len(results))])
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_ylabel("speed-up over 1 process x 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="global batch 128, 12 timed steps")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default 512; --quick 128)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30; --quick 12)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--adjoint", choices=("backprop", "backsolve"), default="backprop")
    ap.add_argument("--no-reference", action="store_true", help="skip 1 process x 2 threads")
    default_method = "fork" if sys.platform.startswith("linux") else "spawn"
    ap.add_argument("--start-method", choices=("fork", "spawn"), default=default_method,
                    help="how processes start (not timed; fork skips re-importing torch)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", default="out/benchmarks/scaling_training")
    args = ap.parse_args(argv)
    args.batch = args.batch or (128 if args.quick else 512)
    args.steps = args.steps or (12 if args.quick else 30)
    ok, why = distributed_available()
    if not ok:
        raise SystemExit(f"scaling_training: {why}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    print(f"NeuralODE classifier, global batch {args.batch}, hidden {args.hidden}, width {args.width}, "
          f"adjoint {args.adjoint}; {cores} CPU cores (shared with other jobs: the load is recorded)")
    configs = [(1, 1), (2, 1)] + ([] if args.no_reference or cores < 2 else [(1, 2)])
    results = [run_config(p, t, args) for p, t in configs]
    base = results[0]["median_s"]
    print(f"\n{'configuration':<22}{'step ms':>10}{'IQR ms':>16}{'samples/s':>12}{'speed-up':>10}")
    for r in results:
        name = f"{r['procs']} proc x {r['threads_per_proc']} thr" + (" DDP" if r["ddp"] else "")
        iqr = f"{1e3 * r['q1_s']:.1f}-{1e3 * r['q3_s']:.1f}"
        print(f"{name:<22}{1e3 * r['median_s']:>10.1f}{iqr:>16}{r['samples_per_s']:>12.0f}"
              f"{base / r['median_s']:>10.2f}")
    report = {"benchmark": "scaling_training", "model": "NeuralODE classifier (Tsit5 rtol 1e-4)",
              "protocol": {"global_batch": args.batch, "hidden": args.hidden, "width": args.width,
                           "timed_steps": args.steps, "warmup": args.warmup, "adjoint": args.adjoint,
                           "backend": "gloo", "start_method": args.start_method},
              "machine": {"cpu_count": cores, "platform": platform.platform(), "torch": torch.__version__},
              "results": results}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot(results, out / "scaling_training.png",
         f"global batch {args.batch}, {cores} cores" + (" (quick)" if args.quick else ""))
    print(f"wrote {out / 'results.json'} and {out / 'scaling_training.png'}")
    return report


if __name__ == "__main__":
    main()
