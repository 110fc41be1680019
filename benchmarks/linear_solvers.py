"""Linear solvers on smoke-simulation pressure systems: CG, Jacobi-, IC(0)- and AMG-PCG, and DCDM.

Measures iterations and wall time (preconditioner/model setup and solve separately) to
``||r|| / ||b|| <= 1e-6`` and ``1e-4`` on

  (a) the training geometry at 32^3 (domain 0 of the shipped network's training set),
  (b) geometries never seen in training (a sphere, a box, and a random mix; seeds >= 100),
  (c) 64^3 with the 32^3-trained weights (the training geometry and an unseen one),

each with ``--rhs`` right-hand sides (divergence of random smooth velocity fields). The solvers run
interleaved (each right-hand side by every solver in turn) and times are medians, so that load from other
processes hits them alike. Prints one table with all solvers side by side (solve-time ratios to CG
measured in this process), saves ``results.json``, ``table.md`` and ``residuals.png`` (residual vs
iteration, first right-hand side) under ``--out``.

    python benchmarks/linear_solvers.py                  # full grid (a)-(c), 5 right-hand sides
    python benchmarks/linear_solvers.py --quick          # 16^3 / 32^3, 2 right-hand sides
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from solvers import solve  # noqa: E402
from solvers.linear import (  # noqa: E402
    AMG,
    CG,
    IC0,
    PCG,
    Box,
    Jacobi,
    Sphere,
    as_operator,
    poisson_problem,
    random_obstacles,
    smoke_domain,
)
from solvers.linear.dcdm import DCDM  # noqa: E402
from solvers.linear.network import DCDMNet  # noqa: E402
from solvers.linear.training import TrainConfig, load_dcdm, pretrained_path  # noqa: E402

TOLS = (1e-6, 1e-4)


def cases(n_train: int, n_big: int, cfg: TrainConfig):
    out = [("a: training geometry", smoke_domain(n_train, 3, _obstacles_of(cfg, 0)))]
    out.append(("b: unseen sphere", smoke_domain(n_train, 3, [Sphere((0.45, 0.55, 0.4), 0.22)])))
    out.append(("b: unseen box", smoke_domain(n_train, 3, [Box((0.3, 0.2, 0.25), (0.7, 0.6, 0.55))])))
    out.append(("b: unseen mix", smoke_domain(n_train, 3, random_obstacles(3, 3, seed=101))))
    out.append((f"c: training geometry {n_big}^3", smoke_domain(n_big, 3, _obstacles_of(cfg, 0))))
    out.append((f"c: unseen sphere {n_big}^3", smoke_domain(n_big, 3, [Sphere((0.45, 0.55, 0.4), 0.22)])))
    return out


def _obstacles_of(cfg: TrainConfig, g: int):
    return random_obstacles(cfg.dim, cfg.obstacles, seed=g)


def run_case(grid, net, nrhs: int, log, net_init=None) -> dict:
    """Every solver on every right-hand side, interleaved (rhs outer, solver inner) so that load from
    other processes on a shared machine hits all solvers alike; times are medians over right-hand sides."""
    probs = [poisson_problem(grid, seed=s) for s in range(nrhs)]
    op = as_operator(probs[0])
    algs, res = {}, {}
    specs = {"CG": None, "Jacobi-PCG": Jacobi(), "IC(0)-PCG": IC0(), "AMG-PCG": AMG(), "DCDM": "dcdm"}
    if net_init is not None:
        specs["DCDM untrained"] = "dcdm"
    for name, prec in specs.items():
        t0 = time.perf_counter()
        if name == "DCDM":
            algs[name] = DCDM(net)
        elif name == "DCDM untrained":
            algs[name] = DCDM(net_init)
        elif prec is None:
            algs[name] = CG()
        else:
            algs[name] = PCG(prec.setup(op))  # set up once per matrix, timed here
        res[name] = dict(setup_time=time.perf_counter() - t0)
    setups: dict[str, list[float]] = {n: [] for n in algs}
    for tol in TOLS:
        its = {n: [] for n in algs}
        times = {n: [] for n in algs}
        for k, p in enumerate(probs):
            for name, alg in algs.items():
                sol = solve(p, alg, rtol=tol, throw=False, check_symmetry=False, maxiter=5000)
                its[name].append(sol.iterations if sol.success else float("nan"))
                # DCDM sets up inside solve (the multigrid hierarchy of the geometry: Galerkin coarse
                # operators, the coarsest pseudo-inverse); it is reported as setup, like AMG's
                times[name].append(sol.stats.solve_time)
                if "DCDM" in name:
                    setups[name].append(sol.stats.setup_time)
                if tol == TOLS[0] and k == 0:
                    res[name]["history"] = sol.residuals
        for name in algs:
            res[name][str(tol)] = dict(iterations=its[name], mean_iterations=float(np.mean(its[name])),
                                       solve_time=times[name], mean_solve_time=float(np.median(times[name])),
                                       min_solve_time=float(np.min(times[name])))
    for name, t in setups.items():
        if t:
            res[name]["setup_time"] = float(np.median(t))
    for name, e in res.items():
        t6 = e["1e-06"]
        log(f"    {name:14s} setup {e['setup_time']:7.3f}s  iters@1e-6 {t6['mean_iterations']:7.1f}  "
            f"solve@1e-6 median {t6['mean_solve_time']:7.3f}s  min {t6['min_solve_time']:7.3f}s")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--n-big", type=int, default=64)
    ap.add_argument("--rhs", type=int, default=5)
    ap.add_argument("--weights", default=str(pretrained_path()))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/benchmarks/linear_solvers")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_big, args.rhs = 16, 32, 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = torch.load(args.weights, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__})
    net = load_dcdm(args.weights)
    # the same cycle at its initial parameters: what training adds is measured, not assumed
    net_init = DCDMNet(cfg.dim, nu=cfg.nu, min_size=cfg.min_size, channels=cfg.channels).eval()
    print(f"weights {args.weights} (trained at {cfg.n}^{cfg.dim}, {state.get('info', {})})")
    results = {}
    for label, grid in cases(args.n, args.n_big, cfg):
        print(f"[{label}] {grid.shape} n={grid.n}", flush=True)
        results[label] = dict(n=grid.n, shape=list(grid.shape),
                              solvers=run_case(grid, net, args.rhs, print, net_init))
    # the table
    names = ["CG", "Jacobi-PCG", "IC(0)-PCG", "AMG-PCG", "DCDM", "DCDM untrained"]
    for tol in TOLS:
        key = str(tol)
        print(f"\nrel. residual {tol:g}: mean iterations | median solve time s (setup s) | "
              "ratio of median solve times to CG")
        print(f"{'case':34s}" + "".join(f"{n:>26s}" for n in names))
        for label, r in results.items():
            s = r["solvers"]
            cg_t = s["CG"][key]["mean_solve_time"]
            cells = []
            for n in names:
                e = s[n]
                cells.append(f"{e[key]['mean_iterations']:6.1f} | {e[key]['mean_solve_time']:6.3f} "
                             f"({e['setup_time']:5.2f}) x{e[key]['mean_solve_time'] / cg_t:4.2f}")
            print(f"{label:34s}" + "".join(f"{c:>26s}" for c in cells))
    md = []
    for tol in TOLS:
        key = str(tol)
        md.append(f"\n**||r||/||b|| <= {tol:g}**: mean iterations / median solve time in s (setup s) "
                  "[ratio of median solve times to CG]\n")
        md.append("| case | n | " + " | ".join(names) + " |")
        md.append("|---|---|" + "---|" * len(names))
        for label, r in results.items():
            s_ = r["solvers"]
            cg_t = s_["CG"][key]["mean_solve_time"]
            cells = [f"{s_[n][key]['mean_iterations']:.1f} / {s_[n][key]['mean_solve_time']:.3f} "
                     f"({s_[n]['setup_time']:.2f}) [x{s_[n][key]['mean_solve_time'] / cg_t:.2f}]"
                     for n in names]
            md.append(f"| {label} | {r['n']} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(dict(weights=args.weights, config=state["config"],
                                                      rhs=args.rhs, results=results), indent=1))
    k = len(results)
    fig, axes = plt.subplots(2, (k + 1) // 2, figsize=(4.2 * ((k + 1) // 2), 7), squeeze=False)
    for ax, (label, r) in zip(axes.ravel(), results.items()):
        for n in names:
            h = r["solvers"][n]["history"]
            if n == "DCDM untrained":
                ax.semilogy(h, label=n, ls="--")
                continue
            ax.semilogy(h, label=n)
        ax.axhline(1e-6, color="k", lw=0.5, ls=":")
        ax.set_title(f"{label} (n={r['n']})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("||r|| / ||b||")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "residuals.png", dpi=110)
    print(f"\nwrote {out / 'results.json'}, {out / 'table.md'} and {out / 'residuals.png'}")


if __name__ == "__main__":
    main()
