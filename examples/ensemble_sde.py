"""Monte Carlo on torch.distributed: a Black-Scholes call price from 10^5 SDE paths, against the formula.

Geometric Brownian motion under the risk-neutral measure, ``dS = r S dt + sigma S dW``, ``S_0 = 100``,
``r = 0.05``, ``sigma = 0.2``, ``T = 1``, solved by Euler-Maruyama (``dt = 1/200``) as an
``EnsembleProblem`` on ``K`` processes (``Distributed``: spawned here, or the ``torchrun`` world). Each
trajectory keeps its path on 51 save times and its discounted payoff ``e^(-rT) (S_T - K)^+``; the
``MonteCarloStatistics`` reduction (exact quantiles) gives, with standard errors:

* the European call price ``C = E[e^(-rT) (S_T - K)^+]`` against Black-Scholes,
  ``C = S_0 Phi(d1) - K e^(-rT) Phi(d2)``, ``d1,2 = (ln(S_0/K) + (r +- sigma^2/2) T) / (sigma sqrt T)``;
* ``E[S_t] = S_0 e^(rt)`` and ``Var[S_T] = S_0^2 e^(2rT) (e^(sigma^2 T) - 1)``;
* the quantiles of ``S_t``, lognormal: ``S_0 exp((r - sigma^2/2) t + sigma sqrt(t) z_q)``.

Each estimate is reported as ``value +- SE`` with its z-score against the closed form; the exit code is 1
when the call price, the mean or the variance is off by more than 5 standard errors. Euler-Maruyama's
weak bias at this step (order ``dt``) is far below the standard errors of ``10^5`` paths. Outputs: a
plot of the mean and the 5-95 % and 25-75 % bands over time against the exact ones, and a JSON summary.

    python examples/ensemble_sde.py [--quick] [--nprocs K] [--out out/examples/ensemble_sde]
    torchrun --nproc_per_node=4 examples/ensemble_sde.py --quick     # the world of torchrun
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

from solvers.ensemble import Batched, Distributed, EnsembleProblem, MonteCarloStatistics, solve_ensemble
from solvers.problem import SDEProblem
from solvers.sde import EulerMaruyama

F64 = torch.float64
S0, STRIKE, RATE, SIGMA, T = 100.0, 100.0, 0.05, 0.2, 1.0
LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
DT = 1 / 200
N_SAVE = 51


# Module level, so that spawned processes can import them.
def drift(t, s):
    return RATE * s


def diffusion(t, s):
    return SIGMA * s


def paths_and_payoffs(sol, indices):
    """Per trajectory of a batched solve (``sol.ys``: ``(times, batch, 1)``): its saved path of S and its
    discounted call payoff, one row of ``N_SAVE + 1`` values each (a ``batch_output_func``: one call per
    batch, not per path)."""
    s = sol.ys[..., 0].T
    payoff = math.exp(-RATE * T) * (s[:, -1:] - STRIKE).clamp(min=0.0)
    return torch.cat([s, payoff], dim=1)


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def black_scholes_call() -> float:
    d1 = (math.log(S0 / STRIKE) + (RATE + SIGMA ** 2 / 2) * T) / (SIGMA * math.sqrt(T))
    d2 = d1 - SIGMA * math.sqrt(T)
    return S0 * phi(d1) - STRIKE * math.exp(-RATE * T) * phi(d2)


def normal_quantile(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def exact_quantile(t: torch.Tensor, q: float) -> torch.Tensor:
    return S0 * torch.exp((RATE - SIGMA ** 2 / 2) * t + SIGMA * t.sqrt() * normal_quantile(q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10^4 paths instead of 10^5")
    ap.add_argument("--paths", type=int, default=None, help="number of paths (overrides --quick)")
    ap.add_argument("--nprocs", type=int, default=2, help="local processes to spawn (ignored under torchrun)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/examples/ensemble_sde")
    args = ap.parse_args()
    n = args.paths or (10_000 if args.quick else 100_000)

    problem = SDEProblem(drift, diffusion, torch.full((1,), S0, dtype=F64), (0.0, T), name="GBM")
    reduction = MonteCarloStatistics(quantiles=LEVELS, block_size=1024)
    ensemble = EnsembleProblem(problem, batch_output_func=paths_and_payoffs, reduction=reduction,
                               seed=args.seed)
    under_torchrun = "WORLD_SIZE" in os.environ
    backend = Distributed(nprocs=None if under_torchrun else args.nprocs, inner=Batched(chunk=25_000))
    saveat = torch.linspace(0.0, T, N_SAVE, dtype=F64)
    sol = solve_ensemble(ensemble, EulerMaruyama(), n, backend, dt=DT, saveat=saveat)
    rank = int(os.environ.get("RANK", "0"))

    r = sol.reduced
    ts = saveat
    exact_mean = S0 * torch.exp(RATE * ts)
    call, se_call = float(r.mean[-1]), float(r.se_mean[-1])
    c_bs = black_scholes_call()
    mean_T, se_mean_T = float(r.mean[N_SAVE - 1]), float(r.se_mean[N_SAVE - 1])
    var_T, se_var_T = float(r.var[N_SAVE - 1]), float(r.se_var[N_SAVE - 1])
    exact_var = S0 ** 2 * math.exp(2 * RATE * T) * (math.exp(SIGMA ** 2 * T) - 1)
    z = {"call": (call - c_bs) / se_call, "mean_T": (mean_T - float(exact_mean[-1])) / se_mean_T,
         "var_T": (var_T - exact_var) / se_var_T}
    z_mean_path = ((r.mean[:N_SAVE] - exact_mean)[1:] / r.se_mean[:N_SAVE][1:])
    quantiles_T = {}
    for q in LEVELS:
        est, se = float(r.quantiles[q][N_SAVE - 1]), float(r.quantile_se(q)[N_SAVE - 1])
        ex = float(exact_quantile(torch.tensor(T, dtype=F64), q))
        quantiles_T[str(q)] = {"estimate": est, "se": se, "exact": ex, "z": (est - ex) / se}
    ok = all(abs(v) <= 5 for v in z.values())
    if rank != 0:
        return 0 if ok else 1

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    t_np = ts.numpy()
    q = {lv: r.quantiles[lv][:N_SAVE].numpy() for lv in LEVELS}
    ax.fill_between(t_np, q[0.05], q[0.95], color="C0", alpha=0.18, label="MC 5-95 %")
    ax.fill_between(t_np, q[0.25], q[0.75], color="C0", alpha=0.35, label="MC 25-75 %")
    ax.plot(t_np, r.mean[:N_SAVE].numpy(), color="C0", lw=2, label="MC mean")
    ax.plot(t_np, exact_mean.numpy(), "k--", lw=1.2, label=r"exact mean $S_0 e^{rt}$")
    for lv in LEVELS:
        ax.plot(t_np, exact_quantile(ts, lv).numpy(), color="k", lw=0.6, ls=":")
    ax.plot([], [], color="k", lw=0.6, ls=":", label="exact lognormal quantiles")
    ax.set_xlabel("t")
    ax.set_ylabel("S(t)")
    ax.set_title(f"GBM, {n:,} Euler-Maruyama paths on {sol.world_size} processes: call "
                 f"{call:.3f} ± {se_call:.3f} (Black-Scholes {c_bs:.3f})", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "ensemble_sde.png", dpi=120)

    summary = {
        "paths": n, "dt": DT, "method": "EulerMaruyama", "world_size": sol.world_size, "backend": sol.backend,
        "seconds": sol.seconds, "rank_seconds": sol.rank_seconds, "nfe": sol.stats.nfe,
        "call": {"estimate": call, "se": se_call, "black_scholes": c_bs, "z": z["call"]},
        "mean_T": {"estimate": mean_T, "se": se_mean_T, "exact": float(exact_mean[-1]), "z": z["mean_T"]},
        "var_T": {"estimate": var_T, "se": se_var_T, "exact": exact_var, "z": z["var_T"]},
        "mean_path_max_abs_z": float(z_mean_path.abs().max()),
        "quantiles_T": quantiles_T, "check_5_se": "pass" if ok else "FAIL",
    }
    (out / "ensemble_sde.json").write_text(json.dumps(summary, indent=2))
    print(f"{n:,} paths on {sol.world_size} processes ({sol.backend}) in {sol.seconds:.1f} s "
          f"(solving: {', '.join(f'{s:.2f}' for s in sol.rank_seconds)} s per rank)")
    print(f"call price      {call:9.4f} ± {se_call:.4f}   Black-Scholes {c_bs:9.4f}   z = {z['call']:+.2f}")
    print(f"E[S_T]          {mean_T:9.4f} ± {se_mean_T:.4f}   exact         {float(exact_mean[-1]):9.4f}"
          f"   z = {z['mean_T']:+.2f}")
    print(f"Var[S_T]        {var_T:9.3f} ± {se_var_T:.3f}   exact         {exact_var:9.3f}"
          f"   z = {z['var_T']:+.2f}")
    print(f"E[S_t], 50 times: max |z| = {float(z_mean_path.abs().max()):.2f}")
    for lv, d in quantiles_T.items():
        print(f"q{float(lv):.2f}(S_T)     {d['estimate']:9.3f} ± {d['se']:.3f}   exact         "
              f"{d['exact']:9.3f}   z = {d['z']:+.2f}")
    print(f"check at 5 standard errors: {'pass' if ok else 'FAIL'}")
    print(f"wrote {out / 'ensemble_sde.png'} and {out / 'ensemble_sde.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
