"""PINN failure modes vs the Lagrangian PINN (Mojgani, Balajewicz, Hassanzadeh, CMAME 2023).

Relative L2 error (Frobenius, 256 x 100 grid on [a, b] x [0, 1]) against the exact / Cole-Hopf
reference and training time, for the Eulerian PINN and the two-branch Lagrangian PINN with the same
network size, collocation points and optimiser budget, on:

* convection ``u_t + beta u_x = 0``, ``u0 = sin x``, beta in {1, 10, 30, 50, 100} (Krishnapriyan et al.);
* a localized Gaussian front (width 0.3), beta in {10, 50};
* convection-diffusion, beta = 50, nu in {0.01, 0.1};
* Burgers ``u0 = sin x + C``, nu = 0.01, C in {0, 10, 50} (moving shock);
* Raissi's Burgers (``-sin(pi x)`` on [-1, 1], nu = 0.01/pi): characteristics converge into the shock.

Goals (issue 5): PINN error >= 0.5 at beta >= 30; LPINN <= 1e-3 on convection(-diffusion), flat in beta;
Burgers sin x + C <= 1e-2 flat in C; each run <= 3 minutes on 2 cores.

    python benchmarks/pinn_failure_modes.py --quick                  # subset, short training
    python benchmarks/pinn_failure_modes.py --seeds 3                # full grid (long)
    python benchmarks/pinn_failure_modes.py --cases conv-b30,conv-b50 --methods pinn,lpinn

Results are appended to ``results.json`` after every run (``--resume`` skips runs already there);
``table.md`` and ``error_vs_beta.png`` are written at the end.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pinn import (  # noqa: E402
    PINN,
    LagrangianPINN,
    burgers_moving_shock,
    burgers_raissi,
    convection,
    convection_diffusion,
)
from solvers import solve  # noqa: E402

CASES = {
    "conv-b1": lambda: convection(1.0),
    "conv-b10": lambda: convection(10.0),
    "conv-b30": lambda: convection(30.0),
    "conv-b50": lambda: convection(50.0),
    "conv-b100": lambda: convection(100.0),
    "gauss-b10": lambda: convection(10.0, u0="gaussian"),
    "gauss-b50": lambda: convection(50.0, u0="gaussian"),
    "cd-b50-nu0.01": lambda: convection_diffusion(50.0, 0.01),
    "cd-b50-nu0.1": lambda: convection_diffusion(50.0, 0.1),
    "burgers-C0": lambda: burgers_moving_shock(0.0, 0.01),
    "burgers-C10": lambda: burgers_moving_shock(10.0, 0.01),
    "burgers-C50": lambda: burgers_moving_shock(50.0, 0.01),
    "burgers-raissi": lambda: burgers_raissi(),
}
QUICK_CASES = ["conv-b1", "conv-b30", "conv-b50", "conv-b100", "gauss-b50", "cd-b50-nu0.1", "burgers-C0",
               "burgers-C10"]
METHODS = {"pinn": PINN, "lpinn": LagrangianPINN}
FULL = dict(adam_iters=5000, lbfgs_iters=500)
QUICK = dict(adam_iters=1000, lbfgs_iters=100)


def run_one(case: str, method: str, seed: int, settings: dict, progress: bool) -> dict:
    problem = CASES[case]()
    alg = METHODS[method](seed=seed, **settings)
    t0 = time.perf_counter()
    sol = solve(problem, alg, progress=progress)
    wall = time.perf_counter() - t0
    st = sol.stats
    fluct = None
    if "C" in problem.params:
        # ||u - ref|| / ||ref|| shrinks with C just because ||ref|| ~ C; also report the error relative to
        # the size of the fluctuation ref - C.
        x, t, u = sol.on_grid(256, 100)
        ref = problem.reference(x.double(), t.double())
        fluct = float((u.double() - ref).norm() / (ref - problem.params["C"]).norm())
    return {
        "case": case, "method": method, "seed": seed, "rel_l2": st.extra.get("rel_l2", float("nan")),
        "train_time": st.train_time, "wall_time": wall, "retcode": sol.retcode.name,
        "final_loss": st.final_loss, "adam_iters": st.adam_iters, "lbfgs_iters": st.lbfgs_iters,
        "min_jacobian": st.extra.get("min_jacobian"), "threads": st.threads, "params": problem.params,
        "rel_l2_fluctuation": fluct,
    }


def summarize(results: list[dict]) -> list[dict]:
    rows = []
    cases = list(dict.fromkeys(r["case"] for r in results))
    for case in cases:
        row = {"case": case}
        for m in METHODS:
            rs = [r for r in results if r["case"] == case and r["method"] == m]
            if not rs:
                continue
            errs = [r["rel_l2"] for r in rs]
            row[m] = {"n": len(rs), "err_median": statistics.median(errs), "err_min": min(errs),
                      "err_max": max(errs), "time_mean": statistics.fmean(r["train_time"] for r in rs),
                      "retcodes": sorted({r["retcode"] for r in rs}),
                      "min_jacobian": min((r["min_jacobian"] for r in rs if r["min_jacobian"] is not None),
                                          default=None)}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| case | PINN rel L2 (median [min, max]) | LPINN rel L2 (median [min, max]) | "
            "PINN time (s) | LPINN time (s) | LPINN/PINN time | LPINN min J | seeds |")
    lines = [head, "|" + "---|" * 8]

    def cell(d):
        if d is None:
            return "-"
        return f"{d['err_median']:.2e} [{d['err_min']:.1e}, {d['err_max']:.1e}]"

    for row in rows:
        p, lp = row.get("pinn"), row.get("lpinn")
        ratio = f"{lp['time_mean'] / p['time_mean']:.2f}" if p and lp else "-"
        jmin = f"{lp['min_jacobian']:.3g}" if lp and lp["min_jacobian"] is not None else "-"
        flags = ""
        if lp and lp["retcodes"] != ["SUCCESS"]:
            flags = " (" + ",".join(lp["retcodes"]) + ")"
        tp = f"{p['time_mean']:.1f}" if p else "-"
        tl = f"{lp['time_mean']:.1f}" if lp else "-"
        n = max((p or {}).get("n", 0), (lp or {}).get("n", 0))
        lines.append(f"| {row['case']} | {cell(p)} | {cell(lp)}{flags} | {tp} | {tl} | {ratio} "
                     f"| {jmin} | {n} |")
    return "\n".join(lines)


def goals(results: list[dict]) -> list[str]:
    out = []

    def errs(method, pred):
        return [r["rel_l2"] for r in results if r["method"] == method and pred(r["params"])]

    pinn_hi = errs("pinn", lambda p: p.get("kind") == "convection" and p.get("u0") == "sin"
                   and p["beta"] >= 30)
    if pinn_hi:
        out.append(f"PINN error >= 0.5 at beta >= 30 (convection, sin): min {min(pinn_hi):.3g} -> "
                   f"{'met' if min(pinn_hi) >= 0.5 else 'NOT met'}")
    lp_cd = errs("lpinn", lambda p: p.get("kind") in ("convection", "convection-diffusion"))
    if lp_cd:
        out.append(f"LPINN <= 1e-3 on convection(-diffusion), every case: max {max(lp_cd):.3g} -> "
                   f"{'met' if max(lp_cd) <= 1e-3 else 'NOT met'}")
    lp_b = errs("lpinn", lambda p: p.get("kind") == "burgers-shift")
    if lp_b:
        fl = [r["rel_l2_fluctuation"] for r in results if r["method"] == "lpinn"
              and r["params"].get("kind") == "burgers-shift" and r.get("rel_l2_fluctuation") is not None]
        fl_s = f" (relative to ||u - C||: max {max(fl):.3g})" if fl else ""
        out.append(f"LPINN <= 1e-2 on Burgers sin x + C: max {max(lp_b):.3g}{fl_s} -> "
                   f"{'met' if max(lp_b) <= 1e-2 else 'NOT met'}")
    times = [r["train_time"] for r in results]
    if times:
        ok = "met" if max(times) <= 180 else "NOT met"
        out.append(f"each run <= 180 s (training time, {torch.get_num_threads()} thread(s)): "
                   f"max {max(times):.1f} s -> {ok}")
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for m, marker in (("pinn", "o"), ("lpinn", "s")):
        for u0, ls in (("sin", "-"), ("gaussian", "--")):
            rs = [r for r in results if r["method"] == m and r["params"].get("kind") == "convection"
                  and r["params"].get("u0") == u0]
            if not rs:
                continue
            betas = sorted({r["params"]["beta"] for r in rs})
            med = [statistics.median(r["rel_l2"] for r in rs if r["params"]["beta"] == b) for b in betas]
            ax.semilogy(betas, med, marker=marker, ls=ls, label=f"{m.upper()} u0={u0}")
            for r in rs:
                ax.plot(r["params"]["beta"], r["rel_l2"], "k.", ms=3, alpha=0.4)
    ax.axhline(1e-3, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("beta")
    ax.set_ylabel("relative L2 error")
    ax.set_title("convection: error vs beta (median over seeds)")
    ax.legend(fontsize=8)
    ax = axes[1]
    others = [c for c in dict.fromkeys(r["case"] for r in results) if not c.startswith("conv-")
              and not c.startswith("gauss-")]
    for i, m in enumerate(("pinn", "lpinn")):
        vals = []
        for c in others:
            e = [r["rel_l2"] for r in results if r["case"] == c and r["method"] == m]
            vals.append(statistics.median(e) if e else float("nan"))
        ax.bar([j + 0.4 * i for j in range(len(others))], vals, width=0.4, label=m.upper(), log=True)
    ax.set_xticks([j + 0.2 for j in range(len(others))])
    ax.set_xticklabels(others, rotation=30, ha="right", fontsize=8)
    ax.set_title("other cases")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"cases {QUICK_CASES}, {QUICK}")
    ap.add_argument("--cases", default=None, help=f"comma list of {list(CASES)} or 'all'")
    ap.add_argument("--methods", default="pinn,lpinn")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 1)")
    ap.add_argument("--adam", type=int, default=None, help="Adam iterations (default 5000, quick 1000)")
    ap.add_argument("--lbfgs", type=int, default=None, help="L-BFGS iterations (default 500, quick 100)")
    ap.add_argument("--hidden", default="32,32,32")
    ap.add_argument("--n-x", type=int, default=64)
    ap.add_argument("--n-t", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (reported)")
    ap.add_argument("--resume", action="store_true", help="skip runs already in results.json")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default="out/benchmarks/pinn_failure_modes")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    base = QUICK if args.quick else FULL
    settings = dict(adam_iters=args.adam if args.adam is not None else base["adam_iters"],
                    lbfgs_iters=args.lbfgs if args.lbfgs is not None else base["lbfgs_iters"],
                    hidden=tuple(int(h) for h in args.hidden.split(",")), n_x=args.n_x, n_t=args.n_t)
    if args.cases in (None, ""):
        cases = QUICK_CASES if args.quick else list(CASES)
    elif args.cases == "all":
        cases = list(CASES)
    else:
        cases = args.cases.split(",")
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown cases {bad}; known: {list(CASES)}")
    methods = args.methods.split(",")
    if any(m not in METHODS for m in methods):
        ap.error(f"methods must be among {list(METHODS)}")
    nseeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    meta = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "quick": args.quick, "command": " ".join(sys.argv)}
    results: list[dict] = []
    if args.resume and path.exists():
        results = json.loads(path.read_text())["runs"]
    done = {(r["case"], r["method"], r["seed"]) for r in results}
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, cpu_count = {os.cpu_count()}, "
          f"settings = {settings}, seeds = {nseeds}")
    print(f"{'case':16s} {'method':6s} {'seed':>4s} {'rel L2':>10s} {'time (s)':>9s} {'min J':>8s} retcode "
          "[rel L2 of u - C]")
    for case in cases:
        for seed in range(nseeds):
            for m in methods:
                if (case, m, seed) in done:
                    continue
                r = run_one(case, m, seed, settings, args.progress)
                results.append(r)
                jm = f"{r['min_jacobian']:.3g}" if r["min_jacobian"] is not None else "-"
                fl = f" [{r['rel_l2_fluctuation']:.3e}]" if r["rel_l2_fluctuation"] is not None else ""
                print(f"{case:16s} {m:6s} {seed:4d} {r['rel_l2']:10.3e} {r['train_time']:9.1f} {jm:>8s} "
                      f"{r['retcode']}{fl}", flush=True)
                path.write_text(json.dumps({"meta": meta, "runs": results}, indent=1, default=str))
    rows = summarize(results)
    text = table(rows)
    goal_lines = goals(results)
    print()
    print(text)
    print()
    for g in goal_lines:
        print("goal:", g)
    path.write_text(json.dumps({"meta": meta, "runs": results, "summary": rows, "goals": goal_lines},
                               indent=1, default=str))
    (out / "table.md").write_text(f"settings: {settings}, threads = {torch.get_num_threads()}\n\n{text}\n\n"
                                  + "\n".join(f"- {g}" for g in goal_lines) + "\n")
    plot(results, out / "error_vs_beta.png")
    print(f"wrote {path}, {out / 'table.md'}, {out / 'error_vs_beta.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
