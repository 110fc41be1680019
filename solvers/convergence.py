"""Convergence-order and work-precision tooling.

* ``convergence_order`` measures a method's empirical order on a problem with an exact solution:
  fixed-step solves over a ladder ``dt = T / 2^k``, the global error at ``t1`` in the max norm, and
  the slope of ``log(error)`` against ``log(dt)`` by least squares over the asymptotic regime (errors
  between ``floor`` and ``ceiling``, where truncation error dominates both the pre-asymptotic
  behaviour and roundoff). The same protocol as DiffEqDevTools' ``test_convergence`` and diffrax's
  ``test_integrate``.
* ``dense_convergence_order`` does the same for the dense output, at points between steps.
* ``work_precision`` runs adaptive solves over a tolerance ladder and records error, NFE and
  wall time (median of repeats) per algorithm.

``python -m solvers.convergence --out DIR`` prints the order table for every method (theoretical vs
observed on the non-stiff reference problems) and writes the plots.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .api import solve
from .problem import ODEProblem


@dataclass
class OrderResult:
    """Empirical order of one method on one problem."""

    method: str
    problem: str
    theoretical: int
    observed: float
    dts: list[float]
    errors: list[float]
    used: list[bool] = field(default_factory=list)

    @property
    def deviation(self) -> float:
        return self.observed - self.theoretical


def _final_error(problem: ODEProblem, sol) -> float:
    exact = problem.analytic(torch.tensor(problem.t1, dtype=torch.float64))
    return float((sol.ys[-1].to(torch.float64) - exact.to(torch.float64)).abs().max())


def fit_order(dts: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of log(error) against log(dt)."""
    x = np.log(np.asarray(dts, dtype=np.float64))
    y = np.log(np.asarray(errors, dtype=np.float64))
    if len(x) < 2:
        raise ValueError("need at least two (dt, error) points in the asymptotic regime to fit an order")
    return float(np.polyfit(x, y, 1)[0])


def _select(errors: Sequence[float], floor: float, ceiling: float, keep: int) -> list[bool]:
    """The last ``keep`` points whose error lies in [floor, ceiling] (smallest dts that are not
    yet at roundoff level)."""
    ok = [floor <= e <= ceiling and math.isfinite(e) for e in errors]
    idx = [i for i, good in enumerate(ok) if good][-keep:]
    return [i in idx for i in range(len(errors))]


def _ladder(error_at, dts_all: Sequence[float], floor: float, ceiling: float,
            keep: int) -> tuple[list[float], list[float], list[bool], float]:
    """Errors over a halving ladder of step sizes (stopping at roundoff level) and the fitted order."""
    dts, errors = [], []
    for dt in dts_all:
        err = error_at(dt)
        dts.append(dt)
        errors.append(err)
        if err < floor:
            break
    used = _select(errors, floor, ceiling, keep)
    pts = [(d, e) for d, e, u in zip(dts, errors, used) if u]
    observed = fit_order([p[0] for p in pts], [p[1] for p in pts]) if len(pts) >= 2 else float("nan")
    return dts, errors, used, observed


def convergence_order(problem: ODEProblem, algorithm, *, kmin: int = 2, kmax: int = 14,
                      floor: float = 1e-13, ceiling: float = 1e-1, keep: int = 3,
                      ladder: str = "halving") -> OrderResult:
    """Empirical order of ``algorithm`` on ``problem`` (needs ``problem.analytic``).

    ``ladder="halving"``: ``dt = T / 2^k`` from ``k = kmin`` until the error drops below ``floor`` or
    ``k = kmax``. ``ladder="quarter"``: ``dt = T / round(8 * 2^(j/4))``, a quarter octave apart, for
    methods of order 7 and up, which cross the window from truncation error to float64 round-off in
    about two halvings. The slope is fitted over the last ``keep`` points with error in
    ``[floor, ceiling]``.
    """
    if ladder not in ("halving", "quarter"):
        raise ValueError(f"ladder must be 'halving' or 'quarter', got {ladder!r}")
    if problem.analytic is None:
        raise ValueError("convergence_order needs a problem with an exact solution (analytic)")
    span = abs(problem.t1 - problem.t0)

    def error_at(dt: float) -> float:
        return _final_error(problem, solve(problem, algorithm, dt=dt, dense=False, saveat=[problem.t1]))

    if ladder == "halving":
        steps = [span / 2**k for k in range(kmin, kmax + 1)]
    else:
        steps = [span / round(8 * 2 ** (j / 4)) for j in range(4 * (kmax - 3) + 1)]
    dts, errors, used, observed = _ladder(error_at, steps, floor, ceiling, keep)
    return OrderResult(type(algorithm).__name__, problem.name, algorithm.order, observed, dts, errors, used)


def dense_convergence_order(problem: ODEProblem, algorithm, *, kmin: int = 3, kmax: int = 10,
                            floor: float = 1e-11, ceiling: float = 1e-3, keep: int = 4,
                            thetas: Sequence[float] = (0.3, 0.5, 0.7)) -> OrderResult:
    """Empirical order of the dense output: max error at ``t0 + (j + theta) dt`` over all steps."""
    if problem.analytic is None:
        raise ValueError("dense_convergence_order needs a problem with an exact solution")
    span = problem.t1 - problem.t0

    def error_at(dt: float) -> float:
        n = round(abs(span) / dt)
        sol = solve(problem, algorithm, dt=dt, saveat=[problem.t1])
        tq = torch.tensor([problem.t0 + (j + th) * span / n for j in range(n) for th in thetas],
                          dtype=torch.float64)
        return float((sol(tq).to(torch.float64) - problem.analytic(tq).to(torch.float64)).abs().max())

    dts, errors, used, observed = _ladder(error_at, [abs(span) / 2**k for k in range(kmin, kmax + 1)],
                                          floor, ceiling, keep)
    expected = min(algorithm.order, algorithm.tableau.dense_order + 1)
    return OrderResult(type(algorithm).__name__, problem.name, expected, observed, dts, errors, used)


@dataclass
class WorkPrecisionPoint:
    method: str
    problem: str
    rtol: float
    atol: float
    error: float
    nfe: int
    naccept: int
    nreject: int
    wall_time: float


def work_precision(problem: ODEProblem, algorithms: Sequence, rtols: Sequence[float], *,
                   atol_ratio: float = 1e-3, repeats: int = 3) -> list[WorkPrecisionPoint]:
    """Error at ``t1`` (max norm), NFE and wall time (median of ``repeats``) over a tolerance ladder.

    ``atol = atol_ratio * rtol``. Algorithms are anything ``solve`` accepts with ``rtol``/``atol``
    (our adaptive methods, or ``TorchDiffEq``).
    """
    out = []
    for alg in algorithms:
        for rtol in rtols:
            atol = rtol * atol_ratio
            times = []
            sol = None
            for _ in range(repeats):
                t0 = time.perf_counter()
                sol = solve(problem, alg, rtol=rtol, atol=atol, saveat=[problem.t1], dense=False) \
                    if not _is_torchdiffeq(alg) else solve(problem, alg, rtol=rtol, atol=atol)
                times.append(time.perf_counter() - t0)
            out.append(WorkPrecisionPoint(_label(alg), problem.name, rtol, atol, _final_error(problem, sol),
                                          sol.stats.nfe, sol.stats.naccept, sol.stats.nreject,
                                          statistics.median(times)))
    return out


def _is_torchdiffeq(alg) -> bool:
    return type(alg).__name__ == "TorchDiffEq"


def _label(alg) -> str:
    return f"torchdiffeq.{alg.method}" if _is_torchdiffeq(alg) else type(alg).__name__


def plot_orders(results: Sequence[OrderResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r.problem for r in results})
    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 3.8), squeeze=False)
    for ax, name in zip(axes[0], problems):
        for r in (r for r in results if r.problem == name):
            ax.loglog(r.dts, r.errors, "o-", ms=3, label=f"{r.method} ({r.observed:.2f})")
        ax.set_title(name)
        ax.set_xlabel("dt")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("max error at t1")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_work_precision(points: Sequence[WorkPrecisionPoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(p.method for p in points):
        pts = [p for p in points if p.method == method]
        a1.loglog([p.error for p in pts], [p.nfe for p in pts], "o-", ms=3, label=method)
        a2.loglog([p.error for p in pts], [p.wall_time for p in pts], "o-", ms=3, label=method)
    a1.set_xlabel("error at t1")
    a1.set_ylabel("NFE")
    a2.set_xlabel("error at t1")
    a2.set_ylabel("wall time [s]")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle(f"work-precision: {points[0].problem}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: Problems of the order table: smooth, with time scales that let every method, Tsitouras' 5(4)
#: included (its leading error coefficients are tuned small, so its asymptotic regime starts late),
#: reach its asymptotic regime before float64 roundoff (~1e-13).
ORDER_PROBLEMS = ("harmonic", "damped_oscillator", "forced_oscillator", "spiral")


def order_table(problems: Sequence[str] = ORDER_PROBLEMS, methods=None, **kwargs) -> list[OrderResult]:
    """Observed orders of every method on the given reference problems."""
    from .ode import METHODS
    from .reference import problem

    methods = methods or METHODS
    # A method may name the window where its order is asymptotic in float64 (``order_window``).
    return [convergence_order(problem(name), M(), **{**kwargs, **(getattr(M, "order_window", None) or {})})
            for M in methods for name in problems]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convergence-order table and work-precision plots.")
    parser.add_argument("--out", default="out/convergence", help="output directory")
    parser.add_argument("--quick", action="store_true", help="fewer tolerances in the work-precision run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    from .ode import Bosh3, Dopri5, TorchDiffEq, Tsit5, Verner65
    from .reference import problem

    # --quick stops the halving ladder at T/2^12 (enough for every method's asymptotic window here).
    results = order_table(kmax=12) if args.quick else order_table()
    problems = sorted({r.problem for r in results})
    print("Empirical convergence orders (fixed step, float64, max error at t1; slope of log error vs log dt)")
    header = f"{'method':<10} {'theory':>6} " + " ".join(f"{p:>18}" for p in problems) + "   within +-0.25"
    print(header)
    print("-" * len(header))
    all_ok = True
    for method in dict.fromkeys(r.method for r in results):
        rs = {r.problem: r for r in results if r.method == method}
        ok = all(abs(rs[p].deviation) <= 0.25 for p in problems)
        all_ok &= ok
        cells = " ".join(f"{rs[p].observed:>18.3f}" for p in problems)
        print(f"{method:<10} {rs[problems[0]].theoretical:>6} {cells}   {'yes' if ok else 'NO'}")
    plot_orders(results, out / "orders.png")

    rtols = [10.0 ** -k for k in (range(3, 11, 2) if args.quick else range(3, 11))]
    prob = problem("damped_oscillator")
    wp = work_precision(prob, [Bosh3(), Dopri5(), Tsit5(), Verner65(), TorchDiffEq("dopri5")], rtols)
    plot_work_precision(wp, out / "work_precision.png")
    print(f"\nWork-precision on {prob.name} (atol = 1e-3 rtol):")
    print(f"{'method':<20} {'rtol':>8} {'error':>10} {'nfe':>6} {'time [ms]':>10}")
    for p in wp:
        print(f"{p.method:<20} {p.rtol:>8.0e} {p.error:>10.2e} {p.nfe:>6} {1e3 * p.wall_time:>10.2f}")
    (out / "orders.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    (out / "work_precision.json").write_text(json.dumps([asdict(p) for p in wp], indent=1))
    print(f"\nwrote {out}/orders.png, work_precision.png and JSON; all methods within +-0.25: {all_ok}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
