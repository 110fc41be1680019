"""Eulerian PINN vs Lagrangian PINN on fast convection (Mojgani, Balajewicz, Hassanzadeh 2023).

``u_t + beta u_x = 0`` on [0, 2 pi), periodic, ``u0 = sin x``, beta = 50 (``--beta``). The Eulerian PINN
settles on a smooth wrong solution (Krishnapriyan et al.'s failure mode); the Lagrangian PINN learns the
characteristics ``x = x0 + beta t`` and the (constant) state on them. Same network size, collocation
points and optimiser budget for both.

    python examples/lagrangian_pinn_convection.py --quick --out out/examples/lagrangian_pinn_convection

Writes ``solutions.png`` (reference, PINN, LPINN, errors, characteristics), ``history.png`` (loss and
error during training) and ``frames.png`` (exact solutions in both frames and their singular values).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pinn import PINN, LagrangianPINN, convection, convection_diffusion  # noqa: E402
from solvers import solve  # noqa: E402


def frames_figure(path: Path) -> None:
    """Exact solutions only: the Gaussian front in the Eulerian and the Lagrangian frame, and the
    singular values of both solution matrices (256 x 100) as beta grows (the Kolmogorov n-width)."""
    beta, nu = 10.0, 0.01
    p = convection_diffusion(beta, nu, u0="gaussian")
    x, t = p.grid(256, 100)
    eul = p.reference(x, t)
    lag = p.reference(x + beta * t, t)  # u along x = x0 + beta t, the characteristics
    ext = [0, 2 * math.pi, 0, 1]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].imshow(eul.numpy(), origin="lower", aspect="auto", extent=ext, cmap="viridis")
    axes[0].set_title(f"Eulerian frame u(x, t), beta = {beta:g}, nu = {nu:g}")
    axes[0].set_xlabel("x")
    axes[1].imshow(lag.numpy(), origin="lower", aspect="auto", extent=ext, cmap="viridis")
    axes[1].set_title("Lagrangian frame u(x0, t) on x = x0 + beta t")
    axes[1].set_xlabel("x0")
    for ax in axes[:2]:
        ax.set_ylabel("t")
    for b, c in ((1.0, "C0"), (10.0, "C1"), (50.0, "C3")):
        q = convection_diffusion(b, nu, u0="gaussian")
        s_e = torch.linalg.svdvals(q.reference(x, t))
        s_l = torch.linalg.svdvals(q.reference(x + b * t, t))
        axes[2].semilogy((s_e / s_e[0]).numpy()[:60], "-", color=c, label=f"Eulerian, beta={b:g}")
        axes[2].semilogy((s_l / s_l[0]).numpy()[:60], "--", color=c, label=f"Lagrangian, beta={b:g}")
    axes[2].set_ylim(1e-12, 2)
    axes[2].set_xlabel("index k")
    axes[2].set_title("singular values s_k / s_1 (Gaussian front)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short training (for `make demo`)")
    ap.add_argument("--beta", type=float, default=50.0)
    ap.add_argument("--nu", type=float, default=0.0, help="add diffusion nu u_xx")
    ap.add_argument("--u0", default="sin", choices=["sin", "gaussian"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/examples/lagrangian_pinn_convection")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    problem = (convection(args.beta, u0=args.u0) if args.nu == 0
               else convection_diffusion(args.beta, args.nu, u0=args.u0))
    budget = dict(adam_iters=600, lbfgs_iters=50) if args.quick else dict(adam_iters=5000, lbfgs_iters=500)
    common = dict(hidden=(32, 32, 32), n_x=64, n_t=32, seed=args.seed, **budget)
    print(f"{problem.name}: torch threads = {torch.get_num_threads()}, {budget}")
    sols = {}
    for name, alg in (("PINN", PINN(**common)), ("LPINN", LagrangianPINN(**common))):
        sols[name] = solve(problem, alg, monitor_every=100)
        st = sols[name].stats
        print(f"  {name:5s}: rel L2 = {st.rel_l2:.3e}, train time = {st.train_time:.1f} s, "
              f"retcode = {sols[name].retcode.name}"
              + (f", min dx/dx0 = {st.min_jacobian:.3f}" if "min_jacobian" in st.extra else ""))
    ratio = sols["LPINN"].stats.train_time / sols["PINN"].stats.train_time
    print(f"  LPINN/PINN training time = {ratio:.2f} (same process)")

    x, t = problem.grid(256, 100)
    ref = problem.reference(x, t)
    u_p = sols["PINN"].u(x, t).double()
    u_l = sols["LPINN"].u(x, t).double()
    ext = [float(x.min()), float(x.max()), float(t.min()), float(t.max())]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    kw = dict(origin="lower", aspect="auto", extent=ext, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    panels = (("reference", ref), ("Eulerian PINN", u_p), ("Lagrangian PINN", u_l))
    for ax, (title, u) in zip(axes[0], panels):
        im = ax.imshow(u.numpy(), **kw)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("t")
    fig.colorbar(im, ax=axes[0, 2])
    for ax, (title, u, sol) in zip(axes[1, :2], (("|PINN - ref|", u_p, sols["PINN"]),
                                                 ("|LPINN - ref|", u_l, sols["LPINN"]))):
        im = ax.imshow((u - ref).abs().numpy(), origin="lower", aspect="auto", extent=ext, cmap="magma")
        ax.set_title(f"{title}  (rel L2 {sol.stats.rel_l2:.2e})")
        ax.set_xlabel("x")
        ax.set_ylabel("t")
        fig.colorbar(im, ax=ax)
    ax = axes[1, 2]
    ts = torch.linspace(0, 1, 200)
    lsol = sols["LPINN"]
    for x0 in torch.linspace(0, 2 * math.pi, 7)[:-1]:
        xc, _ = lsol.characteristics(x0.expand_as(ts), ts)
        xw = torch.remainder(xc, 2 * math.pi).numpy()
        # break the line where it wraps around the period
        jumps = (abs(xw[1:] - xw[:-1]) > math.pi).nonzero()[0] + 1
        start = 0
        for stop in list(jumps) + [len(xw)]:
            ax.plot(xw[start:stop], ts.numpy()[start:stop], "k-", lw=0.7)
            start = stop
    ax.set_xlim(0, 2 * math.pi)
    ax.set_title("learned characteristics x(x0, t) mod 2 pi")
    ax.set_xlabel("x")
    ax.set_ylabel("t")
    fig.suptitle(problem.name)
    fig.tight_layout()
    fig.savefig(out / "solutions.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, sol in sols.items():
        h = sol.stats.history
        axes[0].semilogy(h["iteration"], h["loss"], label=name)
        its = [i for i, e in zip(h["iteration"], h["error"]) if e is not None]
        errs = [e for e in h["error"] if e is not None]
        axes[1].semilogy(its, errs, "o-", label=name)
    for ax, lab in zip(axes, ("training loss", "relative L2 error")):
        ax.set_xlabel("iteration (Adam, then L-BFGS)")
        ax.set_title(lab)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=110)
    plt.close(fig)
    frames_figure(out / "frames.png")
    print(f"wrote {out / 'solutions.png'}, {out / 'history.png'}, {out / 'frames.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
