"""DETEST work-precision benchmark: our explicit RK methods against scipy's RK45 and DOP853.

The 25 non-stiff DETEST problems (Hull, Enright, Fellen & Sedgwick 1972; :mod:`solvers.reference.detest`),
each solved over [0, 20] at tolerances ``rtol = atol = tol`` for tol = 1e-4 ... 1e-10 by Tsit5,
Dopri5, Verner65, Vern6, Vern7 (``solve`` with the default I controller) and by scipy's RK45 and
DOP853 (``solve_ivp``), all in this one run. For each solve we record the error at t = 20,

    error = max_i |y_i - y_ref,i| / (1 + |y_ref,i|)

(the reference is exact where known, otherwise DOP853 at 1e-13), and the number of vector-field
evaluations (NFE). Printed:

* the work-precision table: error and NFE of every method, problem and tolerance;
* per class (A-E), the winner: for target errors 1e-4 ... 1e-10 the NFE each method needs to reach
  the target (log-log interpolation along its tolerance ladder), geometric mean over the (problem,
  target) pairs every method reaches; the smallest mean wins;
* per class, tolerance proportionality: the median and maximum of error / tol for each method
  (an error controller "keeps its promise" when these are near or below 1).

``--quick``: three tolerances (1e-4, 1e-7, 1e-10). Writes ``detest.json`` and ``detest.png`` under
``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers import Dopri5, Tsit5, Vern6, Vern7, Verner65, solve  # noqa: E402
from solvers.reference.detest import CLASSES, detest_problems, reference_end_value, scipy_rhs  # noqa: E402

OURS = {"Tsit5": Tsit5, "Dopri5": Dopri5, "Verner65": Verner65, "Vern6": Vern6, "Vern7": Vern7}
SCIPY = ("RK45", "DOP853")
METHODS = (*OURS, *(f"scipy {m}" for m in SCIPY))


def _error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(y - ref) / (1 + np.abs(ref))))


def run_one(name: str, problem, method: str, tol: float, ref: np.ndarray) -> dict:
    t0 = time.perf_counter()
    if method in OURS:
        with torch.no_grad():
            sol = solve(problem, OURS[method](), rtol=tol, atol=tol, saveat=[problem.t1], dense=False,
                        max_steps=1_000_000)
        y, nfe, nacc, nrej = sol.ys[-1].numpy(), sol.stats.nfe, sol.stats.naccept, sol.stats.nreject
        ok = sol.retcode.name
    else:
        s = solve_ivp(scipy_rhs(problem), problem.tspan, problem.y0.numpy(), method=method.split()[1],
                      rtol=tol, atol=tol)
        y, nfe, nacc, nrej, ok = s.y[:, -1], s.nfev, len(s.t) - 1, None, "SUCCESS" if s.success else s.message
    return dict(problem=name, cls=name[0], method=method, tol=tol, error=_error(y, ref), nfe=int(nfe),
                naccept=int(nacc), nreject=None if nrej is None else int(nrej), retcode=ok,
                wall_s=time.perf_counter() - t0)


def _nfe_at(points: list[dict], target: float) -> float | None:
    """NFE needed to reach ``target`` error: log-log interpolation between the two ladder points
    that bracket it (``None`` if the ladder never brackets it)."""
    pts = sorted(((p["error"], p["nfe"]) for p in points if p["error"] > 0), key=lambda e: -e[0])
    for (e0, n0), (e1, n1) in zip(pts, pts[1:]):
        if e0 >= target >= e1 and e0 > e1:
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp((1 - w) * math.log(n0) + w * math.log(n1))
    return None


def summarise(rows: list[dict], targets: list[float]) -> dict:
    out = {}
    for cls in CLASSES:
        crow = [r for r in rows if r["cls"] == cls]
        names = sorted({r["problem"] for r in crow})
        logs: dict[str, list[float]] = {m: [] for m in METHODS}
        pairs = 0
        for name in names:
            for target in targets:
                need = {m: _nfe_at([r for r in crow if r["problem"] == name and r["method"] == m], target)
                        for m in METHODS}
                if all(v is not None for v in need.values()):
                    pairs += 1
                    for m, v in need.items():
                        logs[m].append(math.log(v))
        mean_nfe = {m: math.exp(statistics.fmean(v)) if v else None for m, v in logs.items()}
        ratio = {m: [r["error"] / r["tol"] for r in crow if r["method"] == m] for m in METHODS}
        winner = min((m for m in METHODS if mean_nfe[m]), key=lambda m: mean_nfe[m], default=None)
        ours = min((m for m in OURS if mean_nfe[m]), key=lambda m: mean_nfe[m], default=None)
        out[cls] = dict(pairs=pairs, mean_nfe=mean_nfe, winner=winner, best_of_ours=ours,
                        err_over_tol_median={m: statistics.median(v) for m, v in ratio.items()},
                        err_over_tol_max={m: max(v) for m, v in ratio.items()})
    return out


def print_table(rows: list[dict], tols: list[float]) -> None:
    by = {(r["problem"], r["method"], r["tol"]): r for r in rows}
    names = list(dict.fromkeys(r["problem"] for r in rows))
    head = f"{'prob':5s} {'tol':>7s} " + " ".join(f"{m.replace('scipy ', 'sp.'):>16s}" for m in METHODS)
    print("error at t=20 / NFE")
    print(head)
    for name in names:
        for tol in tols:
            cells = []
            for m in METHODS:
                r = by[(name, m, tol)]
                cells.append(f"{r['error']:8.1e}/{r['nfe']:<7d}")
            print(f"{name:5s} {tol:7.0e} " + " ".join(cells))


def print_summary(summary: dict) -> None:
    print("\nper class: geometric-mean NFE to reach a target error (targets 1e-4..1e-10 reached by all)")
    print(f"{'class':5s} {'pairs':>5s} " + " ".join(f"{m.replace('scipy ', 'sp.'):>9s}" for m in METHODS)
          + "   winner (best of ours)")
    for cls, s in summary.items():
        cells = " ".join(f"{s['mean_nfe'][m]:9.0f}" if s["mean_nfe"][m] else f"{'-':>9s}" for m in METHODS)
        print(f"{cls:5s} {s['pairs']:5d} {cells}   {s['winner']} ({s['best_of_ours']})")
    print("\nper class: median (max) of error / tol")
    print(f"{'class':5s} " + " ".join(f"{m.replace('scipy ', 'sp.'):>15s}" for m in METHODS))
    for cls, s in summary.items():
        cells = " ".join(f"{s['err_over_tol_median'][m]:6.2g} ({s['err_over_tol_max'][m]:6.2g})"
                         for m in METHODS)
        print(f"{cls:5s} {cells}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CLASSES), figsize=(4 * len(CLASSES), 3.6), sharey=True)
    for ax, cls in zip(axes, CLASSES):
        for m in METHODS:
            pts = [r for r in rows if r["cls"] == cls and r["method"] == m]
            tols = sorted({r["tol"] for r in pts}, reverse=True)
            # class mean (geometric) of error and NFE at each tolerance
            err = [math.exp(statistics.fmean(math.log(max(r["error"], 1e-17)) for r in pts if r["tol"] == t))
                   for t in tols]
            nfe = [math.exp(statistics.fmean(math.log(r["nfe"]) for r in pts if r["tol"] == t)) for t in tols]
            ax.loglog(nfe, err, "o-" if m in OURS else "s--", label=m, ms=3)
        ax.set_title(f"DETEST class {cls}")
        ax.set_xlabel("NFE (geometric mean)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("error at t = 20 (geometric mean)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="three tolerances (1e-4, 1e-7, 1e-10)")
    ap.add_argument("--out", default="out/benchmarks/detest")
    ap.add_argument("--problems", default="", help="comma-separated subset, e.g. B4,D5 (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tols = [1e-4, 1e-7, 1e-10] if args.quick else [10.0**-k for k in range(4, 11)]
    probs = detest_problems()
    if args.problems:
        probs = {k: probs[k] for k in args.problems.split(",")}
    rows, sources = [], {}
    t_start = time.perf_counter()
    for name, problem in probs.items():
        ref, src = reference_end_value(name)
        sources[name] = src
        for m in METHODS:
            for tol in tols:
                rows.append(run_one(name, problem, m, tol, ref.numpy()))
    wall = time.perf_counter() - t_start
    summary = summarise(rows, [10.0**-k for k in range(4, 11)])
    print_table(rows, tols)
    print_summary(summary)
    print(f"\n{len(rows)} solves in {wall:.0f} s (torch threads 1); references: "
          + ", ".join(sorted({f"{k}: {v}" for k, v in sources.items() if v != 'exact'})) + "; the rest exact")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detest.json").write_text(json.dumps(dict(tolerances=tols, references=sources, rows=rows,
                                                     summary=summary, wall_s=wall), indent=1))
    plot(rows, out / "detest.png")
    print(f"wrote {out / 'detest.json'} and {out / 'detest.png'}")


if __name__ == "__main__":
    main()
