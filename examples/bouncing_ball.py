"""A bouncing ball: terminal events, restarts, and the gradient of the k-th bounce time.

A ball dropped from height ``h`` (``y = (height, velocity)``, ``y' = (v, -g)``) hits the ground when
``height`` falls through zero: a terminal :class:`~solvers.events.Event` with ``direction=-1`` (the
restarted flight starts on the ground moving up, so only falling crossings count). At each impact
the solve restarts from the event state with ``v -> -e v`` (restitution ``e``). The exact impact
times are

    T_1 = sqrt(2h/g),    T_k = T_1 + (2 v_1 / g) * (e + e^2 + ... + e^(k-1)),    v_1 = sqrt(2 g h),

so the error of every located bounce is measured against mathematics. The event time is a tensor
differentiable by the implicit function theorem; each flight starts at relative time 0 (the field
is autonomous), so ``T_k`` is the sum of differentiable flight times and ``dT_k/de``, ``dT_k/dh`` come
from one backward pass, checked against the exact derivatives (SymPy) and central finite differences.

    python examples/bouncing_ball.py [--quick] [--out out/examples/bouncing_ball]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import sympy as sp
import torch

from solvers import ODEProblem, Tsit5, solve
from solvers.events import Event

F64 = torch.float64
GROUND = Event(lambda t, y: y[0], terminal=True, direction=-1, name="ground")


def flight(prob: ODEProblem, rtol: float, atol: float):
    """One flight to the ground: (solution, the terminal hit or None)."""
    sol = solve(prob, Tsit5(), rtol=rtol, atol=atol, events=GROUND)
    hits = [h for h in sol.events.hits if h.terminal]
    return sol, hits[-1] if hits else None


def bounce_times(h: torch.Tensor, e: torch.Tensor, grav: float, n: int, rtol: float, atol: float,
                 keep_paths: bool = False):
    """The first ``n`` impact times (a list of differentiable 0-d tensors) and, optionally, the
    sampled trajectory of each flight."""

    def f(t, y):
        return torch.stack([y[1], torch.full_like(y[1], -grav)])

    state = torch.stack([h, torch.zeros_like(h)])
    t_total = torch.zeros((), dtype=F64)
    times, paths = [], []
    for _ in range(n):
        sol, hit = flight(ODEProblem(f, state, (0.0, 100.0)), rtol, atol)
        if hit is None:
            raise RuntimeError("the ball did not reach the ground within the span")
        if keep_paths:
            s = torch.linspace(0.0, hit.t_float, 60, dtype=F64)
            with torch.no_grad():
                paths.append((float(t_total) + s, sol(s)[:, 0]))
        t_total = t_total + hit.t
        times.append(t_total)
        # Restart on the ground with the reflected, damped velocity: y -> (height*, -e v*).
        state = torch.stack([hit.y[0], -e * hit.y[1]])
    return times, paths


def exact_times(n: int):
    """SymPy: T_k(h, e, g) and its derivatives in h and e."""
    h, e, g = sp.symbols("h e g", positive=True)
    v1 = sp.sqrt(2 * g * h)
    t1 = sp.sqrt(2 * h / g)
    T = [t1 + 2 * v1 / g * sum(e**j for j in range(1, k)) for k in range(1, n + 1)]
    return h, e, g, T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 bounces instead of 10")
    ap.add_argument("--out", default="out/examples/bouncing_ball")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    n = 4 if args.quick else 10
    h0, e0, grav = 1.0, 0.8, 9.81
    rtol, atol = 1e-9, 1e-11
    hs, es, gs, T = exact_times(n)
    subs = {hs: h0, es: e0, gs: sp.Float(grav, 30)}

    h = torch.tensor(h0, dtype=F64, requires_grad=True)
    e = torch.tensor(e0, dtype=F64, requires_grad=True)
    start = time.perf_counter()
    times, paths = bounce_times(h, e, grav, n, rtol, atol, keep_paths=True)
    wall = time.perf_counter() - start
    exact = [float(Tk.subs(subs)) for Tk in T]
    errors = [abs(float(tk.detach()) - ex) for tk, ex in zip(times, exact)]

    # Gradient of the last bounce time: autograd (IFT) vs exact vs central differences.
    k = n
    dT_dh, dT_de = (float(v) for v in torch.autograd.grad(times[-1], (h, e)))
    exact_dh = float(sp.diff(T[-1], hs).subs(subs))
    exact_de = float(sp.diff(T[-1], es).subs(subs))
    delta = 1e-6

    def last_time(hv: float, ev: float) -> float:
        with torch.no_grad():
            hv_t, ev_t = torch.tensor(hv, dtype=F64), torch.tensor(ev, dtype=F64)
            ts, _ = bounce_times(hv_t, ev_t, grav, n, rtol, atol)
        return float(ts[-1])

    fd_dh = (last_time(h0 + delta, e0) - last_time(h0 - delta, e0)) / (2 * delta)
    fd_de = (last_time(h0, e0 + delta) - last_time(h0, e0 - delta)) / (2 * delta)

    print(f"bouncing ball: h = {h0}, e = {e0}, g = {grav}, Tsit5 rtol = {rtol:g}, atol = {atol:g}, "
          f"solve(..., events=Event(height, direction=-1))")
    print(f"{'k':>3} {'T_k (ours)':>20} {'T_k (exact)':>20} {'|error|':>10}")
    for i, (tk, ex, err) in enumerate(zip(times, exact, errors), 1):
        print(f"{i:>3} {float(tk.detach()):20.15f} {ex:20.15f} {err:10.2e}")
    print(f"wall time for {n} flights: {wall:.3f} s")
    print(f"dT_{k}/dh: autograd {dT_dh:.12f}  exact {exact_dh:.12f}  central FD {fd_dh:.12f}  "
          f"rel.err {abs(dT_dh - exact_dh) / abs(exact_dh):.1e}")
    print(f"dT_{k}/de: autograd {dT_de:.12f}  exact {exact_de:.12f}  central FD {fd_de:.12f}  "
          f"rel.err {abs(dT_de - exact_de) / abs(exact_de):.1e}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for s, y in paths:
        ax[0].plot(s, y, color="C0", lw=1.2)
    for ex in exact:
        ax[0].axvline(ex, color="0.7", lw=0.6, ls="--")
    ax[0].plot([float(t.detach()) for t in times], [0.0] * n, "o", color="C3", ms=4, label="located impacts")
    ax[0].set_ylabel("height")
    ax[0].set_title(f"bouncing ball, e = {e0}: dashed = exact impact times")
    ax[0].legend(fontsize=8)
    ax[1].semilogy(exact, [max(err, 1e-17) for err in errors], "o-", ms=4)
    ax[1].set_xlabel("t")
    ax[1].set_ylabel("|T_k - exact|")
    fig.tight_layout()
    fig.savefig(out / "bouncing_ball.png", dpi=120)
    plt.close(fig)

    result = {
        "h": h0, "e": e0, "g": grav, "rtol": rtol, "atol": atol, "bounces": n,
        "times": [float(t.detach()) for t in times], "exact": exact, "errors": errors,
        "max_error": max(errors),
        "wall_s": wall,
        "grad_h": {"autograd": dT_dh, "exact": exact_dh, "fd": fd_dh},
        "grad_e": {"autograd": dT_de, "exact": exact_de, "fd": fd_de},
    }
    (out / "bouncing_ball.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'bouncing_ball.png'} and {out / 'bouncing_ball.json'}")
    assert max(errors) < 1e-9, "bounce times should match the exact ones"
    assert math.isclose(dT_dh, exact_dh, rel_tol=1e-6) and math.isclose(dT_de, exact_de, rel_tol=1e-6)


if __name__ == "__main__":
    main()
