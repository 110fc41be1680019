"""Events: event-time error and wall time against tolerance, ours against scipy and torchdiffeq.

Problems (float64, exact event times known):
  drag: a ball falling from h = 10 with linear air drag k = 0.5 (y' = v, v' = -g - k v), terminal
        event at the ground; exact time from y(t) = h - (g/k) t + (g/k^2)(1 - exp(-k t)) = 0 solved
        with mpmath to 30 digits. Also the IFT gradient dt*/dh against the exact -1/v(t*).
  oscillator: y = (sin t, cos t) on [0, 20], non-terminal zero crossings of sin t (k pi, k = 1..6);
        the error is the largest over the six.

Solvers (wall time: forward solve without gradients; the gradient comes from a separate solve):
  our Tsit5 and Dopri5 through ``solve(..., events=Event(...))``; scipy ``solve_ivp`` RK45
and DOP853 with ``events=``; torchdiffeq's ``odeint_event`` (dopri5; a single terminal event, so the
drag problem only). rtol from 1e-3 to 1e-10, atol = 1e-3 rtol. Wall time is the median of repeats in
this process (machines here are shared: compare ratios, not absolute times).

    python benchmarks/events.py [--quick] [--out out/benchmarks/events] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import mpmath
import numpy as np
import torch

from solvers import Dopri5, ODEProblem, Tsit5, solve
from solvers.events import Event

F64 = torch.float64
GRAV, DRAG, H0 = 9.81, 0.5, 10.0


def median_time(fn, repeats: int):
    out = fn()  # warm-up, and the result
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def median_pair(fn_a, fn_b, repeats: int):
    """Median wall times of two functions timed in alternation (after one warm-up each)."""
    out = (fn_a(), fn_b())
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((fn_a, ta), (fn_b, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return out, (statistics.median(ta), statistics.median(tb))


# -- problems ---------------------------------------------------------------------------------------
def drag_exact() -> tuple[float, float]:
    """The ground time and dt*/dh = -1 / v(t*) (implicit differentiation of y(t*; h) = 0)."""
    mpmath.mp.dps = 30
    g, k, h = mpmath.mpf(GRAV), mpmath.mpf(DRAG), mpmath.mpf(H0)
    t = mpmath.findroot(lambda s: h - g / k * s + g / k**2 * (1 - mpmath.exp(-k * s)), 2.0)
    v = -g / k * (1 - mpmath.exp(-k * t))
    return float(t), float(-1 / v)


def drag_torch(t, y):
    return torch.stack([y[1], -GRAV - DRAG * y[1]])


def drag_numpy(t, y):
    return np.array([y[1], -GRAV - DRAG * y[1]])


def osc_torch(t, y):
    return torch.stack([y[1], -y[0]])


def osc_numpy(t, y):
    return np.array([y[1], -y[0]])


OSC_T1 = 20.0
OSC_EXACT = [k * math.pi for k in range(1, 7)]


# -- runners: each returns (event times, nfe, gradient or None) -------------------------------------
def ours(method, problem: str, rtol: float, atol: float, grad: bool = False):
    if problem == "drag":
        h = torch.tensor(H0, dtype=F64, requires_grad=grad)
        prob = ODEProblem(drag_torch, torch.stack([h, torch.zeros((), dtype=F64)]), (0.0, 10.0))
        sol = solve(prob, method(), rtol=rtol, atol=atol, events=Event(lambda t, y: y[0], direction=-1))
        dh = float(torch.autograd.grad(sol.events.t[0], h)[0]) if grad else None
        return sol.events.t.detach().tolist(), sol.stats.nfe, dh
    prob = ODEProblem(osc_torch, torch.tensor([0.0, 1.0], dtype=F64), (0.0, OSC_T1))
    sol = solve(prob, method(), rtol=rtol, atol=atol, events=Event(lambda t, y: y[0], terminal=False))
    return sol.events.t.tolist(), sol.stats.nfe, None


def ours_plain(method, problem: str, rtol: float, atol: float):
    """The same solve without events: the reference for the cost of event handling."""
    if problem == "drag":
        t1 = drag_exact()[0]
        prob = ODEProblem(drag_torch, torch.tensor([H0, 0.0], dtype=F64), (0.0, t1))
    else:
        prob = ODEProblem(osc_torch, torch.tensor([0.0, 1.0], dtype=F64), (0.0, OSC_T1))
    sol = solve(prob, method(), rtol=rtol, atol=atol)
    return [], sol.stats.nfe, None


def scipy_run(method: str, problem: str, rtol: float, atol: float, grad: bool = False):
    from scipy.integrate import solve_ivp

    def ev(t, y):
        return y[0]

    if problem == "drag":
        ev.terminal, ev.direction = True, -1
        sol = solve_ivp(drag_numpy, (0.0, 10.0), [H0, 0.0], method=method, rtol=rtol, atol=atol, events=ev)
    else:
        ev.terminal = False
        sol = solve_ivp(osc_numpy, (0.0, OSC_T1), [0.0, 1.0], method=method, rtol=rtol, atol=atol, events=ev)
    # scipy counts g = 0 at t0 as an event (its test is g_old <= 0 <= g_new); we do not: drop it.
    times = [t for t in sol.t_events[0].tolist() if t != 0.0]
    return times, int(sol.nfev), None


def torchdiffeq_run(problem: str, rtol: float, atol: float, grad: bool = False):
    from torchdiffeq import odeint_event

    if problem != "drag":
        return None
    nfe = [0]

    def f(t, y):
        nfe[0] += 1
        return drag_torch(t, y)

    h = torch.tensor(H0, dtype=F64, requires_grad=grad)
    y0 = torch.stack([h, torch.zeros((), dtype=F64)])
    t_ev, _ = odeint_event(f, y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0],
                           method="dopri5", rtol=rtol, atol=atol)
    dh = float(torch.autograd.grad(t_ev, h)[0]) if grad else None
    return [float(t_ev.detach())], nfe[0], dh


def peers() -> tuple[dict, dict]:
    """The runners available here, and the missing peers with the reason."""
    runners = {"ours Tsit5": lambda *args: ours(Tsit5, *args),
               "ours Dopri5": lambda *args: ours(Dopri5, *args)}
    missing = {}
    try:
        import scipy.integrate  # noqa: F401

        runners["scipy RK45"] = lambda *args: scipy_run("RK45", *args)
        runners["scipy DOP853"] = lambda *args: scipy_run("DOP853", *args)
    except ImportError as err:
        missing["scipy"] = str(err)
    try:
        from torchdiffeq import odeint_event  # noqa: F401

        runners["torchdiffeq dopri5 (odeint_event)"] = torchdiffeq_run
    except ImportError as err:
        missing["torchdiffeq.odeint_event"] = str(err)
    return runners, missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="three tolerances, one repeat")
    ap.add_argument("--out", default="out/benchmarks/events")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tols = [1e-3, 1e-6, 1e-9] if args.quick else [10.0**-k for k in range(3, 11)]
    repeats = 1 if args.quick else 5

    t_drag, grad_drag = drag_exact()
    exact = {"drag": [t_drag], "oscillator": OSC_EXACT}
    runners, missing = peers()
    rows = []
    for problem in ("drag", "oscillator"):
        print(f"\n{problem}: exact event times {', '.join(f'{t:.15f}' for t in exact[problem])}"
              + (f"; exact dt*/dh = {grad_drag:.15f}" if problem == "drag" else ""))
        print(f"{'solver':<36} {'rtol':>7} {'max |t - t*|':>13} {'found':>5} {'nfe':>6} {'wall ms':>8}"
              + ("  dt*/dh rel.err" if problem == "drag" else ""))
        for name, run in runners.items():
            for rtol in tols:
                atol = 1e-3 * rtol
                res, wall = median_time(lambda run=run, p=problem, r=rtol, a=atol: run(p, r, a), repeats)
                if res is None:
                    continue
                times, nfe, _ = res
                # The gradient (where the solver gives one) from a separate, untimed solve.
                grad = run(problem, rtol, atol, True)[2]
                ok = len(times) == len(exact[problem])
                err = max(abs(a - b) for a, b in zip(times, exact[problem])) if ok else float("nan")
                gerr = abs(grad - grad_drag) / abs(grad_drag) if grad is not None else None
                rows.append({"problem": problem, "solver": name, "rtol": rtol, "atol": atol, "error": err,
                             "found": len(times), "expected": len(exact[problem]), "nfe": nfe,
                             "wall_s": wall, "grad_rel_error": gerr})
                gtxt = f"  {gerr:14.2e}" if gerr is not None else ""
                print(f"{name:<36} {rtol:7.0e} {err:13.2e} {len(times):>5} {nfe:>6} {wall * 1e3:8.2f}{gtxt}")
        # The cost of event handling: the same Tsit5 solve without events (to the event time for
        # drag), timed in alternation with the solve with events so that load changes hit both alike.
        for rtol in tols:
            atol = 1e-3 * rtol
            with_fn = lambda p=problem, r=rtol, a=atol: ours(Tsit5, p, r, a)  # noqa: E731
            without_fn = lambda p=problem, r=rtol, a=atol: ours_plain(Tsit5, p, r, a)  # noqa: E731
            (res_w, res_wo), (wall_w, wall_wo) = median_pair(with_fn, without_fn, max(repeats, 3))
            row = next(row for row in rows if row["problem"] == problem and row["solver"] == "ours Tsit5"
                       and row["rtol"] == rtol)
            row.update(wall_events_paired_s=wall_w, wall_no_events_s=wall_wo, nfe_no_events=res_wo[1])
            print(f"{'ours Tsit5 without events':<36} {rtol:7.0e} {'':>13} {'':>5} {res_wo[1]:>6} "
                  f"{wall_wo * 1e3:8.2f}  (with events, paired: {wall_w * 1e3:.2f} ms, "
                  f"x{wall_w / wall_wo:.2f})")
    if "torchdiffeq dopri5 (odeint_event)" in runners:
        print("\ntorchdiffeq odeint_event: a single terminal event (not run on the oscillator's six "
              "crossings); it bisects the interpolant to |dt| <= atol.")
    for peer, why in missing.items():
        print(f"missing peer {peer}: {why}")

    result = {"command": "python benchmarks/events.py" + (" --quick" if args.quick else ""),
              "exact": exact, "exact_grad_drag": grad_drag, "missing": missing, "rows": rows,
              "torch": torch.__version__, "threads": args.threads}
    (out / "events.json").write_text(json.dumps(result, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for r, problem in enumerate(("drag", "oscillator")):
        for name in runners:
            sel = [row for row in rows if row["problem"] == problem and row["solver"] == name]
            if not sel:
                continue
            err = [max(row["error"], 1e-17) for row in sel]
            axes[r, 0].loglog([row["rtol"] for row in sel], err, "o-", ms=3, label=name)
            axes[r, 1].loglog([row["wall_s"] * 1e3 for row in sel], err, "o-", ms=3, label=name)
        axes[r, 0].set_xlabel("rtol (atol = 1e-3 rtol)")
        axes[r, 1].set_xlabel("wall time [ms]")
        for c in range(2):
            axes[r, c].set_ylabel(f"{problem}: max |t_event - exact|")
            axes[r, c].grid(True, which="both", lw=0.3)
        axes[r, 0].invert_xaxis()
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("event-time error vs tolerance and vs wall time")
    fig.tight_layout()
    fig.savefig(out / "events.png", dpi=120)
    plt.close(fig)
    print(f"\nwrote {out / 'events.json'} and {out / 'events.png'}")


if __name__ == "__main__":
    main()
