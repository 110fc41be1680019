"""Reading and penalising solver internals.

1. Solve Van der Pol (mu = 10, moderately stiff) with Tsit5 and ``trace=True``; plot the solution,
   every attempted step size (accepted and rejected), the scaled error estimate the controller used
   and the normalised stiffness ``stiffness_estimate * |dt|`` (close to 1: the step is limited by
   stability, not accuracy).
2. Penalise them: fit a small neural ODE to damped spirals, once plainly and once with
   ``loss += lam * mean(error_estimate * dt)`` (the ERNODE regulariser of Pal et al., ICML 2021,
   computed from the trace of the very solve that produced the prediction), and compare the NFE the
   adaptive solver needs afterwards.

    python examples/ode_internals.py [--quick] [--out out/examples/ode_internals]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from solvers import ODEProblem, Tsit5, solve


def van_der_pol(mu: float = 10.0) -> ODEProblem:
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x**2) * v - x], dim=-1)

    return ODEProblem(f, torch.tensor([2.0, 0.0], dtype=torch.float64), (0.0, 3 * mu), name="vdp")


def read_internals(out: Path) -> dict:
    import matplotlib.pyplot as plt

    prob = van_der_pol()
    sol = solve(prob, Tsit5(), rtol=1e-6, atol=1e-8, trace=True)
    tr = sol.trace
    acc = tr.accepted
    ratio = tr.stiffness_estimate * tr.dt.abs()
    fig, ax = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    ax[0].plot(sol.ts, sol.ys[:, 0], lw=1)
    ax[0].set_ylabel("x(t)")
    ax[1].semilogy(tr.t[acc], tr.dt[acc].abs(), ".", ms=2, label="accepted")
    ax[1].semilogy(tr.t[~acc], tr.dt[~acc].abs(), "x", ms=4, color="r", label="rejected")
    ax[1].set_ylabel("|dt|")
    ax[1].legend(fontsize=8)
    ax[2].semilogy(tr.t, tr.error_estimate, ".", ms=2)
    ax[2].axhline(1.0, color="k", lw=0.5)
    ax[2].set_ylabel("error estimate")
    ax[3].plot(tr.t[acc], ratio[acc], ".", ms=2)
    ax[3].axhline(1.0, color="k", lw=0.5)
    ax[3].set_ylabel("stiffness x |dt|")
    ax[3].set_xlabel("t")
    fig.suptitle(f"Van der Pol mu=10, Tsit5: {sol.stats.naccept} accepted, {sol.stats.nreject} rejected, "
                 f"NFE {sol.stats.nfe}")
    fig.tight_layout()
    fig.savefig(out / "van_der_pol_internals.png", dpi=120)
    plt.close(fig)
    limited = float((ratio[acc] > 0.5).double().mean())
    print(f"Van der Pol: NFE {sol.stats.nfe}, accepted {sol.stats.naccept}, rejected {sol.stats.nreject}; "
          f"{100 * limited:.0f}% of accepted steps have stiffness*|dt| > 0.5 (stability-limited)")
    return dict(nfe=sol.stats.nfe, naccept=sol.stats.naccept, nreject=sol.stats.nreject,
                stability_limited_fraction=limited)


T_END = 3.0
# EEst * dt is O(0.1) per step and the fit loss O(1e-3) once trained: larger weights trade fit for NFE.
LAM = 0.1


def spiral_data(n: int = 40):
    """A damped spiral y' = A y from several initial states (a batch of trajectories)."""
    true_a = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=torch.float64)
    ts = torch.linspace(0.0, T_END, n, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(16, 2, generator=g)
    # The reference data in float64 (rtol 1e-8 is below float32's resolution), the model in float32.
    prob = ODEProblem(lambda t, y: y @ true_a.T, y0.double(), (0.0, T_END))
    with torch.no_grad():
        ys = solve(prob, Tsit5(), rtol=1e-8, atol=1e-10, saveat=ts).ys.float()
    return ts, ys


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, t, y):
        return self.net(y)


def train(lam: float, steps: int, ts, ys, seed: int = 0) -> tuple[list[float], list[int], Field]:
    torch.manual_seed(seed)
    field = Field()
    opt = torch.optim.Adam(field.parameters(), lr=2e-2)
    losses, nfes = [], []
    for _ in range(steps):
        prob = ODEProblem(field, ys[0], (0.0, T_END))
        sol = solve(prob, Tsit5(), rtol=1e-5, atol=1e-7, saveat=ts, trace=True)
        fit = (sol.ys - ys).pow(2).mean()
        tr = sol.trace.accepted_only()
        reg = (tr.error_estimate * tr.dt.to(tr.error_estimate)).mean()  # ERNODE
        loss = fit + lam * reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(fit.detach()))
        nfes.append(sol.stats.nfe)
    return losses, nfes, field


def penalise(out: Path, steps: int) -> dict:
    import matplotlib.pyplot as plt

    ts, ys = spiral_data()
    results = {}
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for lam in (0.0, LAM):
        losses, nfes, field = train(lam, steps, ts, ys)
        with torch.no_grad():
            test = solve(ODEProblem(field, ys[0], (0.0, T_END)), Tsit5(), rtol=1e-5, atol=1e-7, saveat=ts)
        label = "plain" if lam == 0 else f"ERNODE lam={lam}"
        results[label] = dict(final_fit=losses[-1], final_nfe=test.stats.nfe)
        ax[0].semilogy(losses, label=label)
        ax[1].plot(nfes, label=label)
        print(f"{label:>16}: final MSE {losses[-1]:.4f}, NFE of the trained model {test.stats.nfe}")
    ax[0].set_ylabel("mean squared error")
    ax[1].set_ylabel("NFE per solve")
    for a in ax:
        a.set_xlabel("training step")
        a.legend()
    fig.tight_layout()
    fig.savefig(out / "penalised_training.png", dpi=120)
    plt.close(fig)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer training steps (about a minute)")
    ap.add_argument("--out", default="out/examples/ode_internals")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (150 if args.quick else 500)
    results = {"van_der_pol": read_internals(out), "penalised": penalise(out, steps), "steps": steps}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/van_der_pol_internals.png, penalised_training.png, results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
