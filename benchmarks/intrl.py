"""Benchmark: how the policy-evaluation quadrature changes the controller learned by integral RL.

Reproduces the experiment of Cao & Pan, "Impact of Computation in Integral Reinforcement Learning for
Continuous-Time Control" (ICLR 2024): for N = 3..15 samples per interval and the rules trapezoid,
Simpson, Gauss-Legendre, Bayesian quadrature (Matern nu = 1/2, 3/2, 5/2, 7/2 and RBF, lengthscale 0.3)
and exact evaluation (utility integrated as an ODE state), it measures ||w - w*||, ||K - K*||_F
(linear task) and E|u - u*| over sampled states (nonlinear task) under two protocols:

* ``paper``: one trajectory continues across intervals and iterations, 20 intervals per iteration,
  T = 0.1, stop at ||w_i - w_{i-1}|| < 1e-3 or after 100 iterations;
* ``reset``: every iteration uses the same 20 fixed initial states (one interval each), stop at 1e-8
  or after 50 iterations (isolates the quadrature bias from the trajectory and the stopping rule).

It fits log-log slopes of the errors against N - 1, states at which N Simpson or Gauss-Legendre beat
BQ, and checks BQ's calibration: the posterior standard deviation (scale by maximum likelihood) versus
the true error over many intervals. Also timed, in the same process: computing BQ weights (extended
precision, first call and cached) against the trapezoid weights.

Run: ``python benchmarks/intrl.py [--quick] [--out out/benchmarks/intrl]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quadrature import (  # noqa: E402
    RBF,
    BayesianQuadrature,
    GaussLegendre,
    IntegralPolicyIteration,
    Matern,
    Simpson,
    Trapezoid,
    bq_weights,
    linear_third_order,
    nonlinear_2d,
    scale_mle,
    solve_many,
    trapezoid_weights,
)
from quadrature import bayesian as _bq  # noqa: E402
from solvers import ODEProblem, Tsit5, solve  # noqa: E402

RULES = {
    "trapezoid": lambda: Trapezoid(),
    "simpson": lambda: Simpson(),
    "gauss-legendre": lambda: GaussLegendre(),
    "bq-matern-0.5": lambda: BayesianQuadrature(Matern(0.5, 0.3)),
    "bq-matern-1.5": lambda: BayesianQuadrature(Matern(1.5, 0.3)),
    "bq-matern-2.5": lambda: BayesianQuadrature(Matern(2.5, 0.3)),
    "bq-matern-3.5": lambda: BayesianQuadrature(Matern(3.5, 0.3)),
    "bq-rbf": lambda: BayesianQuadrature(RBF(0.3)),
}
PROTOCOLS = {"paper": dict(protocol="continuing", tol=1e-3, max_iter=100),
             "reset": dict(protocol="reset", tol=1e-8, max_iter=50)}
TASKS = {"linear": linear_third_order, "nonlinear": nonlinear_2d}


def _finite(obj):
    """NaN/Inf -> None so the JSON file is standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def fit_slope(ns, errs) -> float:
    x, y = np.log(np.asarray(ns, float) - 1), np.log(np.asarray(errs, float))
    ok = np.isfinite(y)
    return float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else float("nan")


def run_task(task: str, protocol: str, ns: list[int], states: torch.Tensor) -> dict:
    prob = TASKS[task]()
    opts = PROTOCOLS[protocol]
    algs, keys = [], []
    for n in ns:
        for name, make in RULES.items():
            algs.append(IntegralPolicyIteration(make(), T=0.1, N=n, rows_per_iteration=20, throw=False,
                                                **opts))
            keys.append((name, n))
    algs.append(IntegralPolicyIteration("exact", T=0.1, rows_per_iteration=20, throw=False, **opts))
    keys.append(("exact", None))
    t0 = time.perf_counter()
    sols = solve_many(prob, algs, progress=True)
    wall = time.perf_counter() - t0
    out: dict = {"wall_s": wall, "configs": len(algs), "rules": {}}
    for (name, n), sol in zip(keys, sols):
        rec = {"N": n, "retcode": sol.retcode.name, "iterations": sol.stats.iterations,
               "w_error": sol.w_error}
        if prob.is_linear:
            rec["K_error"] = sol.K_error
        else:
            rec["u_error"] = sol.u_error(states)
        out["rules"].setdefault(name, []).append(rec)
    return out


def summarise(res: dict, ns: list[int], metric: str) -> dict:
    floor = res["rules"]["exact"][0][metric]
    summary = {"exact_floor": floor}
    for name in RULES:
        errs = [r[metric] for r in res["rules"][name]]
        above = [(n, e) for n, e in zip(ns, errs) if e > 10 * floor]
        summary[name] = {
            "slope_all": fit_slope(ns, errs),
            "slope_above_floor": fit_slope(*zip(*above)) if len(above) >= 3 else float("nan"),
            "points_above_floor": len(above),
        }
    return summary


def beats(res: dict, ns: list[int], metric: str) -> dict:
    """For each BQ kernel: the N at which Simpson / Gauss-Legendre have the smaller error."""
    out = {}
    get = {name: {r["N"]: r[metric] for r in res["rules"][name]} for name in RULES}
    for name in RULES:
        if not name.startswith("bq"):
            continue
        out[name] = {cls: [n for n in ns if get[cls][n] < get[name][n]]
                     for cls in ("simpson", "gauss-legendre")}
    return out


def calibration(task: str, ns: list[int], intervals: int, seed: int = 0) -> dict:
    """BQ posterior std (ML scale) vs the true error of int l dt over many intervals of length 0.1.

    States come from fixed random initial states under the task's initial policy; the true integral is
    the utility integrated as an ODE state (rtol 1e-12), the samples are the same solution's values.
    """
    prob = TASKS[task]()
    T, d = 0.1, prob.d
    gen = torch.Generator().manual_seed(seed)
    r = float(prob.x0.abs().max())
    x0 = (2 * torch.rand(intervals, d, generator=gen, dtype=torch.float64) - 1) * r
    w0 = prob.w0

    def rhs(t, z):
        x = z[..., :d]
        dx, u = prob.closed_loop(w0, x)
        return torch.cat([dx, prob.utility(x, u)[..., None]], -1)

    nodes_all = sorted({round(v, 14) for n in ns for v in np.linspace(0, T, n).tolist()})
    save = torch.tensor(nodes_all, dtype=torch.float64)
    z0 = torch.cat([x0, x0.new_zeros(intervals, 1)], -1)
    sol = solve(ODEProblem(rhs, z0, (0.0, T)), Tsit5(), rtol=1e-12, atol=1e-14, saveat=save, dense=False)
    x = sol.ys[..., :d]
    ell = prob.utility(x, prob.policy(w0, x))  # (S, intervals)
    truth = (sol.ys[-1, :, d] - sol.ys[0, :, d]).numpy()
    out = {}
    for name, make in RULES.items():
        if not name.startswith("bq"):
            continue
        for n in ns:
            pick = [nodes_all.index(round(v, 14)) for v in np.linspace(0, T, n).tolist()]
            y = ell[pick].T.numpy()  # (intervals, n)
            alg = make()
            entry = bq_weights(alg.kernel, torch.linspace(0, T, n, dtype=torch.float64), (0.0, T))
            mean = y @ entry.weights
            std = np.sqrt(scale_mle(entry, y) * entry.variance_factor)
            z = np.abs(mean - truth) / np.maximum(std, 1e-300)
            out[f"{name}/N={n}"] = {
                "median_abs_error": float(np.median(np.abs(mean - truth))),
                "median_std": float(np.median(std)),
                "median_z": float(np.median(z)),
                "within_1sd": float(np.mean(z <= 1)),
                "within_2sd": float(np.mean(z <= 2)),
            }
    return out


def weight_timing(n: int = 15, repeats: int = 200) -> dict:
    x = torch.linspace(0, 0.1, n, dtype=torch.float64)
    t0 = time.perf_counter()
    for _ in range(repeats):
        trapezoid_weights(x)
    t_trap = (time.perf_counter() - t0) / repeats
    out = {"trapezoid_s": t_trap}
    for name, k in [("matern-3.5", Matern(3.5, 0.3)), ("rbf", RBF(0.3))]:
        _bq._CACHE.clear()
        t0 = time.perf_counter()
        e = bq_weights(k, x, (0.0, 0.1))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(repeats):
            bq_weights(k, x, (0.0, 0.1))
        cached = (time.perf_counter() - t0) / repeats
        out[name] = {"first_s": first, "cached_s": cached, "dps": e.dps,
                     "first_over_trapezoid": first / t_trap, "cached_over_trapezoid": cached / t_trap}
    return out


def plot(task: str, results: dict, ns: list[int], metric: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.6), squeeze=False)
    for ax, (protocol, res) in zip(axes[0], results.items()):
        for name in RULES:
            errs = [r[metric] for r in res["rules"][name]]
            slope = fit_slope(ns, errs)
            ax.loglog(np.array(ns) - 1, errs, "o-", ms=3, label=f"{name} ({slope:+.2f})")
        ax.axhline(res["rules"]["exact"][0][metric], color="k", ls="--", lw=1, label="exact evaluation")
        ax.set_xlabel("N - 1 (intervals between samples)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{task} task, {protocol} protocol")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N in {3, 5, 9, 15}, fewer calibration intervals")
    ap.add_argument("--out", default="out/benchmarks/intrl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ns = [3, 5, 9, 15] if args.quick else list(range(3, 16))
    gen = torch.Generator().manual_seed(args.seed)
    states = 2 * torch.rand(1000, 2, generator=gen, dtype=torch.float64) - 1  # E|u - u*| over [-1, 1]^2

    report: dict = {"N": ns, "T": 0.1, "rows_per_iteration": 20, "bq_lengthscale": 0.3,
                    "protocols": PROTOCOLS, "tasks": {}}
    for task in TASKS:
        metric = "K_error" if task == "linear" else "u_error"
        results = {p: run_task(task, p, ns, states) for p in PROTOCOLS}
        summ = {p: {m: summarise(results[p], ns, m) for m in ("w_error", metric)} for p in PROTOCOLS}
        report["tasks"][task] = {"results": results, "slopes": summ,
                                 "simpson_or_gl_beat_bq": {p: beats(results[p], ns, "w_error")
                                                           for p in PROTOCOLS}}
        plot(task, results, ns, "w_error", out / f"intrl_{task}_w_error.png")
        plot(task, results, ns, metric, out / f"intrl_{task}_{metric}.png")

        print(f"\n=== {task} task: ||w - w*|| (and {metric}) vs N; "
              "slope = fitted log-log slope against N - 1 ===")
        for p in PROTOCOLS:
            res = results[p]
            print(f"-- protocol {p} ({res['configs']} configurations in one batched run, "
                  f"{res['wall_s']:.1f} s)")
            print("rule            " + " ".join(f"N={n:<7d}" for n in ns) + "  slope(all)  slope(>10x floor)")
            for name in RULES:
                errs = [r["w_error"] for r in res["rules"][name]]
                s = summ[p]["w_error"][name]
                print(f"{name:15s} " + " ".join(f"{e:8.1e}" for e in errs)
                      + f"  {s['slope_all']:+6.2f}     {s['slope_above_floor']:+6.2f} "
                        f"({s['points_above_floor']} pts)")
            ex = res["rules"]["exact"][0]
            print(f"{'exact':15s} {ex['w_error']:8.1e} (iterations {ex['iterations']}, {ex['retcode']})")
            print(f"{metric} slopes: " + ", ".join(f"{name} {summ[p][metric][name]['slope_all']:+.2f}"
                                                  for name in RULES)
                  + f"; exact {res['rules']['exact'][0][metric]:.1e}")
            nonconv = [(name, r["N"], r["retcode"]) for name in RULES for r in res["rules"][name]
                       if r["retcode"] != "SUCCESS"]
            print(f"not converged: {nonconv if nonconv else 'none'}")
            b = report["tasks"][task]["simpson_or_gl_beat_bq"][p]
            print("N where Simpson / Gauss-Legendre beat BQ (||w - w*||): "
                  + "; ".join(f"{k}: S {v['simpson']} GL {v['gauss-legendre']}" for k, v in b.items()))

    print("\n=== calibration: BQ posterior std (ML scale) vs true error of int l dt, fixed random states ===")
    cal = {task: calibration(task, [5, 9, 15], 60 if args.quick else 300, args.seed) for task in TASKS}
    report["calibration"] = cal
    print("task       rule/N                 median|err|  median sd  median z  P(z<=1)  P(z<=2)  "
          "(Gaussian: 0.68, 0.95)")
    for task, rows in cal.items():
        for key, r in rows.items():
            print(f"{task:10s} {key:22s} {r['median_abs_error']:10.2e} {r['median_std']:10.2e} "
                  f"{r['median_z']:8.2f} {r['within_1sd']:8.2f} {r['within_2sd']:8.2f}")

    timing = weight_timing()
    report["weight_timing"] = timing
    print("\n=== weights, N = 15 on [0, 0.1] (same process) ===")
    print(f"trapezoid {timing['trapezoid_s'] * 1e6:.1f} us")
    for k in ("matern-3.5", "rbf"):
        t = timing[k]
        print(f"BQ {k}: first call {t['first_s'] * 1e3:.1f} ms ({t['dps']} digits, "
              f"{t['first_over_trapezoid']:.0f}x trapezoid), cached {t['cached_s'] * 1e6:.1f} us "
              f"({t['cached_over_trapezoid']:.1f}x trapezoid)")

    (out / "results.json").write_text(json.dumps(_finite(report), indent=1))
    print(f"\nwrote {out / 'results.json'} and PNG plots in {out}")
    return report


if __name__ == "__main__":
    main()
