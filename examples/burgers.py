"""Viscous Burgers with a moving shock: Eulerian PINN vs Lagrangian PINN, against Cole-Hopf.

``u_t + u u_x = nu u_xx``, ``u0 = sin x + C`` on [0, 2 pi), periodic, nu = 0.01 (the moving-shock case
of Mojgani et al. 2023). The reference is the Cole-Hopf solution (Gauss-Hermite quadrature), shifted
with the shock speed C. The Lagrangian PINN's characteristics converge into the shock: ``dx/dx0``
becomes small there but stays positive while viscosity keeps the solution single-valued; the solve
reports the minimum.

``--raissi`` adds Raissi's case (``-sin(pi x)`` on [-1, 1], nu = 0.01/pi, zero Dirichlet ends) for both
networks; there the characteristics are squeezed into a shock of width ~1e-3, which the Lagrangian
network's smooth map cannot resolve: expect a crossing warning or a poor error, reported honestly.

    python examples/burgers.py --quick --out out/examples/burgers
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pinn import PINN, LagrangianPINN, burgers_moving_shock, burgers_raissi  # noqa: E402
from solvers import solve  # noqa: E402


def run(problem, budget, seed):
    common = dict(hidden=(32, 32, 32), n_x=64, n_t=32, seed=seed, **budget)
    sols = {}
    for name, alg in (("PINN", PINN(**common)), ("LPINN", LagrangianPINN(**common))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            sols[name] = solve(problem, alg)
        st = sols[name].stats
        extra = f", min dx/dx0 = {st.min_jacobian:.3g}" if "min_jacobian" in st.extra else ""
        print(f"  {name:5s}: rel L2 = {st.rel_l2:.3e}, train time = {st.train_time:.1f} s, "
              f"retcode = {sols[name].retcode.name}{extra}")
        for w in caught:
            print(f"         warning: {w.message}")
    return sols


def figure(problem, sols, path):
    x, t = problem.grid(256, 100)
    ref = problem.reference(x, t)
    us = {k: s.u(x, t).double() for k, s in sols.items()}
    ext = [float(x.min()), float(x.max()), float(t.min()), float(t.max())]
    lim = float(ref.abs().max())
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    kw = dict(origin="lower", aspect="auto", extent=ext, cmap="RdBu_r")
    for ax, (title, u) in zip(axes[0], (("Cole-Hopf reference", ref), ("Eulerian PINN", us["PINN"]),
                                        ("Lagrangian PINN", us["LPINN"]))):
        im = ax.imshow(u.numpy(), vmin=float(ref.min()), vmax=float(ref.max()), **kw)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("t")
    fig.colorbar(im, ax=axes[0, 2])
    ax = axes[1, 0]
    for name, u in us.items():
        ax.semilogy(t[:, 0].numpy(), ((u - ref).norm(dim=1) / ref.norm(dim=1)).numpy(),
                    label=f"{name} (total {sols[name].stats.rel_l2:.2e})")
    ax.set_xlabel("t")
    ax.set_title("relative L2 error per time")
    ax.legend()
    ax = axes[1, 1]
    for k, c in zip((0, 50, 99), ("C0", "C1", "C2")):
        ax.plot(x[k].numpy(), ref[k].numpy(), "-", color=c, lw=2, alpha=0.4,
                label=f"ref t={float(t[k, 0]):.2f}")
        ax.plot(x[k].numpy(), us["PINN"][k].numpy(), ":", color=c, label="PINN" if k == 0 else None)
        ax.plot(x[k].numpy(), us["LPINN"][k].numpy(), "--", color=c, label="LPINN" if k == 0 else None)
    ax.set_xlabel("x")
    ax.set_title("profiles")
    ax.legend(fontsize=7)
    ax = axes[1, 2]
    lsol = sols["LPINN"]
    (a, b), L = problem.domain, problem.length
    ts = torch.linspace(*problem.tspan, 200)
    for x0 in torch.linspace(a, b, 25)[:-1] if problem.periodic else torch.linspace(a, b, 25):
        xc, _ = lsol.characteristics(x0.expand_as(ts), ts)
        xw = (a + torch.remainder(xc - a, L)).numpy() if problem.periodic else xc.numpy()
        jumps = (abs(xw[1:] - xw[:-1]) > L / 2).nonzero()[0] + 1
        start = 0
        for stop in list(jumps) + [len(xw)]:
            ax.plot(xw[start:stop], ts.numpy()[start:stop], "k-", lw=0.7)
            start = stop
    ax.set_xlim(a, b)
    ax.set_xlabel("x")
    ax.set_ylabel("t")
    jm = lsol.stats.extra.get("min_jacobian", math.nan)
    ax.set_title(f"LPINN characteristics (min dx/dx0 = {jm:.2g})")
    fig.suptitle(f"{problem.name}  (|u| <= {lim:.2g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short training (for `make demo`)")
    ap.add_argument("--C", type=float, default=10.0, help="shock speed of u0 = sin x + C")
    ap.add_argument("--nu", type=float, default=0.01)
    ap.add_argument("--raissi", action="store_true", help="also run Raissi's Burgers case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/examples/burgers")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = dict(adam_iters=600, lbfgs_iters=50) if args.quick else dict(adam_iters=5000, lbfgs_iters=500)
    print(f"torch threads = {torch.get_num_threads()}, {budget}")
    cases = [("moving_shock", burgers_moving_shock(args.C, args.nu))]
    if args.raissi:
        cases.append(("raissi", burgers_raissi()))
    for tag, problem in cases:
        print(problem.name)
        sols = run(problem, budget, args.seed)
        figure(problem, sols, out / f"{tag}.png")
        print(f"  wrote {out / (tag + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
