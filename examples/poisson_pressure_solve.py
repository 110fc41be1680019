"""Pressure solve of a smoke-like domain with a spherical obstacle: CG vs the deep conjugate direction method.

Builds a box with solid walls, an open (Dirichlet) top and a sphere inside, takes the right-hand side of a
projection step (divergence of a random smooth velocity), solves the pressure Poisson system with CG and
with DCDM using the shipped network (trained at 32^3 on other geometries), and plots the residual curves
and a slice of the pressure.

    python examples/poisson_pressure_solve.py --quick      # 32^3
    python examples/poisson_pressure_solve.py              # 64^3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from solvers import solve  # noqa: E402
from solvers.linear import (  # noqa: E402
    CG,
    DCDM,
    PCG,
    Sphere,
    load_dcdm,
    load_pretrained,
    poisson_problem,
    smoke_domain,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32^3 instead of 64^3")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--weights", default=None, help="a weights file (default: the shipped one)")
    ap.add_argument("--out", default="out/examples/poisson_pressure_solve")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.n or (32 if args.quick else 64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    grid = smoke_domain(n, 3, [Sphere((0.5, 0.5, 0.35), 0.2)])
    problem = poisson_problem(grid, seed=0)
    net = load_pretrained() if args.weights is None else load_dcdm(args.weights)
    runs = {"CG": CG(), "AMG-PCG (pyamg)": PCG("amg"), "DCDM (shipped net)": DCDM(net)}
    sols = {}
    for name, alg in runs.items():
        sol = solve(problem, alg, rtol=args.rtol)
        sols[name] = sol
        print(f"{name:20s} iterations {sol.iterations:4d}  setup {sol.stats.setup_time:6.3f}s  "
              f"solve {sol.stats.solve_time:6.3f}s  final ||r||/||b|| {sol.residuals[-1]:.2e}")
    x_cg, x_dc = sols["CG"].x, sols["DCDM (shipped net)"].x
    diff = float(torch.linalg.vector_norm(x_cg - x_dc) / torch.linalg.vector_norm(x_cg))
    print(f"relative difference of the CG and DCDM pressures: {diff:.2e}")

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4.3))
    for name, sol in sols.items():
        a0.semilogy(sol.residuals, label=f"{name} ({sol.iterations} it)")
    a0.axhline(args.rtol, color="k", lw=0.5, ls=":")
    a0.set_xlabel("iteration")
    a0.set_ylabel("||r|| / ||b||")
    a0.set_title(f"pressure Poisson, {n}^3, {grid.n} unknowns")
    a0.legend()
    p = grid.to_grid(x_dc).numpy()
    p = np.where(grid.fluid, p, np.nan)
    im = a1.imshow(p[:, n // 2, :].T, origin="lower", cmap="viridis")
    a1.set_title("DCDM pressure, slice y = 1/2 (white: solid)")
    a1.set_xlabel("x")
    a1.set_ylabel("z (open top)")
    fig.colorbar(im, ax=a1)
    fig.tight_layout()
    fig.savefig(out / "pressure_solve.png", dpi=120)
    print(f"wrote {out / 'pressure_solve.png'}")


if __name__ == "__main__":
    main()
