"""Solver overhead: our Tsit5 and Dopri5 against torchdiffeq's dopri5, in the same process.

Problems:
  (a) a neural vector field, MLP 2-64-2 (tanh), batch 256, t in [0, 5], rtol 1e-6 / atol 1e-8,
      without grad and with backprop through the solve;
  (b) a 10-dimensional linear system y' = A y with exact solution expm(A t) y0.

For each: NFE, wall time (median of repeats), the ratio to torchdiffeq, the overhead ratio
wall / (NFE x time of one f evaluation) and the error at t1 (against the exact solution, or a
float64 solve at rtol 1e-12 for the MLP). A work-precision sweep over tolerances 1e-3..1e-10 is
plotted. Speed numbers are ratios measured in this one process (machines here are shared).

    python benchmarks/ode_overhead.py [--quick] [--out out/benchmarks/ode_overhead] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torchdiffeq
from torch import nn

from solvers import Dopri5, ODEProblem, Tsit5, solve

TARGETS = {"overhead_nograd": 2.0, "wall_ratio_nograd": 0.7, "wall_ratio_backprop": 0.8}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mlp_problem(device: torch.device, dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2)).to(device, dtype)
    y0 = torch.randn(256, 2, device=device, dtype=dtype)
    return net, y0


def linear_problem(device: torch.device):
    g = torch.Generator().manual_seed(1)
    n = 10
    m = torch.randn(n, n, dtype=torch.float64, generator=g)
    a = (m - m.T) + 0.3 * (m @ m.T) / n  # oscillatory part plus a decaying part ...
    a = a - (torch.linalg.eigvals(a).real.max() + 0.2) * torch.eye(n, dtype=torch.float64)  # ... all decaying
    y0 = torch.randn(n, dtype=torch.float64, generator=g)
    a, y0 = a.to(device), y0.to(device)

    def exact(t: float) -> torch.Tensor:
        return torch.linalg.matrix_exp(a * t) @ y0

    return a, y0, exact


class Counter:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


def run_case(name, f, y0, t1, rtol, atol, exact_end, repeats, grad: bool, params=()):
    """Time our methods and torchdiffeq on one problem; returns rows of measurements."""
    t_eval = torch.tensor([0.0, t1], dtype=torch.float64, device=y0.device)
    prob = ODEProblem(f, y0, (0.0, t1))
    with torch.no_grad():
        t_f = median_time(lambda: [f(t_eval[0], y0) for _ in range(50)], repeats) / 50

    def ours(alg):
        def go():
            sol = solve(prob, alg, rtol=rtol, atol=atol, saveat=[t1], dense=False)
            if grad:
                sol.ys[-1].pow(2).sum().backward()
            return sol
        return go

    def tde():
        ys = torchdiffeq.odeint(f, y0, t_eval, rtol=rtol, atol=atol, method="dopri5")
        if grad:
            ys[-1].pow(2).sum().backward()
        return ys

    rows = []
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for label, fn, alg in [("Tsit5", None, Tsit5()), ("Dopri5", None, Dopri5()),
                               ("torchdiffeq.dopri5", tde, None)]:
            if alg is not None:
                fn = ours(alg)
                sol = solve(prob, alg, rtol=rtol, atol=atol, saveat=[t1], dense=False)
                nfe, y_end = sol.stats.nfe, sol.ys[-1]
            else:
                cnt = Counter(f)
                y_end = torchdiffeq.odeint(cnt, y0, t_eval, rtol=rtol, atol=atol, method="dopri5")[-1]
                nfe = cnt.n
            wall = median_time(fn, repeats)
            err = float((y_end.detach().double() - exact_end).abs().max())
            rows.append(dict(case=name, grad=grad, method=label, nfe=nfe, wall_ms=1e3 * wall,
                             overhead=wall / (nfe * t_f) if not grad else None, error=err,
                             f_eval_us=1e6 * t_f))
    base = rows[-1]["wall_ms"]
    for r in rows:
        r["wall_ratio_vs_torchdiffeq"] = r["wall_ms"] / base
    return rows


def work_precision(f, y0, t1, exact_end, tols, repeats):
    prob = ODEProblem(f, y0, (0.0, t1))
    t_eval = torch.tensor([0.0, t1], dtype=torch.float64, device=y0.device)
    out = []
    with torch.no_grad():
        for tol in tols:
            for label, alg in [("Tsit5", Tsit5()), ("Dopri5", Dopri5()), ("torchdiffeq.dopri5", None)]:
                if alg is not None:
                    sol = solve(prob, alg, rtol=tol, atol=tol * 1e-2, saveat=[t1], dense=False)
                    y_end, nfe = sol.ys[-1], sol.stats.nfe
                    wall = median_time(lambda a=alg, r=tol: solve(prob, a, rtol=r, atol=r * 1e-2, saveat=[t1],
                                                                   dense=False), repeats)
                else:
                    cnt = Counter(f)
                    y_end = torchdiffeq.odeint(cnt, y0, t_eval, rtol=tol, atol=tol * 1e-2)[-1]
                    nfe = cnt.n
                    wall = median_time(lambda r=tol: torchdiffeq.odeint(f, y0, t_eval, rtol=r, atol=r * 1e-2),
                                       repeats)
                out.append(dict(method=label, rtol=tol, nfe=nfe, wall_ms=1e3 * wall,
                                error=float((y_end.double() - exact_end).abs().max())))
    return out


def plot(wp, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in wp):
        rs = [r for r in wp if r["method"] == method]
        axes[0].loglog([r["error"] for r in rs], [r["nfe"] for r in rs], "o-", ms=3, label=method)
        axes[1].loglog([r["error"] for r in rs], [r["wall_ms"] for r in rs], "o-", ms=3, label=method)
    axes[0].set_ylabel("NFE")
    axes[1].set_ylabel("wall time [ms]")
    for ax in axes:
        ax.set_xlabel("max error at t1")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("10-d linear system: work-precision, tolerances 1e-3..1e-10")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/benchmarks/ode_overhead")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repeats = 5 if args.quick else 15

    net, y0 = mlp_problem(device)
    f_mlp = lambda t, y: net(y)  # noqa: E731
    net64 = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2)).to(device, torch.float64)
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    with torch.no_grad():
        ref = solve(ODEProblem(lambda t, y: net64(y), y0.double(), (0.0, 5.0)), Tsit5(), rtol=1e-12,
                    atol=1e-12, saveat=[5.0]).ys[-1]
    rows = []
    rows += run_case("mlp", f_mlp, y0, 5.0, 1e-6, 1e-8, ref, repeats, grad=False)
    rows += run_case("mlp", f_mlp, y0, 5.0, 1e-6, 1e-8, ref, repeats, grad=True)
    a, y0l, exact = linear_problem(device)
    f_lin = lambda t, y: a @ y  # noqa: E731
    rows += run_case("linear10", f_lin, y0l, 5.0, 1e-6, 1e-8, exact(5.0), repeats, grad=False)

    print(f"device {device}, torch threads {torch.get_num_threads()}, repeats {repeats}")
    print(f"{'case':<9} {'mode':<9} {'method':<19} {'NFE':>5} {'wall ms':>9} {'vs tde':>7} "
          f"{'overhead':>8} {'error':>9}")
    for r in rows:
        ov = f"{r['overhead']:.2f}" if r["overhead"] is not None else "-"
        print(f"{r['case']:<9} {'backprop' if r['grad'] else 'no grad':<9} {r['method']:<19} {r['nfe']:>5} "
              f"{r['wall_ms']:>9.2f} {r['wall_ratio_vs_torchdiffeq']:>7.2f} {ov:>8} {r['error']:>9.2e}")

    def pick(case, grad, method):
        return next(r for r in rows if r["case"] == case and r["grad"] == grad and r["method"] == method)

    tde_ng, tde_bp = pick("mlp", False, "torchdiffeq.dopri5"), pick("mlp", True, "torchdiffeq.dopri5")
    verdict = {}
    for m in ("Tsit5", "Dopri5"):
        ng, bp = pick("mlp", False, m), pick("mlp", True, m)
        verdict[m] = dict(
            overhead_nograd=(ng["overhead"], ng["overhead"] <= TARGETS["overhead_nograd"]),
            wall_ratio_nograd=(ng["wall_ratio_vs_torchdiffeq"],
                               ng["wall_ratio_vs_torchdiffeq"] <= TARGETS["wall_ratio_nograd"]),
            wall_ratio_backprop=(bp["wall_ratio_vs_torchdiffeq"],
                                 bp["wall_ratio_vs_torchdiffeq"] <= TARGETS["wall_ratio_backprop"]),
            error_not_worse=(ng["error"], ng["error"] <= tde_ng["error"]),
        )
    print(f"\ntorchdiffeq overhead ratio (no grad): {tde_ng['overhead']:.2f}; "
          f"torchdiffeq backprop wall {tde_bp['wall_ms']:.1f} ms")
    for m, v in verdict.items():
        print(f"{m}: " + ", ".join(f"{k} {val:.3g} ({'met' if ok else 'NOT met'}, target "
                                   f"{TARGETS.get(k, 'tde error')})" for k, (val, ok) in v.items()))

    tols = [10.0 ** -k for k in (range(3, 11, 2) if args.quick else range(3, 11))]
    wp = work_precision(f_lin, y0l, 5.0, exact(5.0), tols, max(3, repeats // 3))
    plot(wp, out / "work_precision.png")
    print("\nwork-precision (linear10):")
    for r in wp:
        print(f"  {r['method']:<19} rtol {r['rtol']:.0e}  NFE {r['nfe']:>5}  {r['wall_ms']:>8.2f} ms  "
              f"error {r['error']:.2e}")
    (out / "results.json").write_text(json.dumps(dict(device=str(device), threads=torch.get_num_threads(),
                                                      rows=rows, verdict=verdict, work_precision=wp),
                                                 indent=1, default=str))
    print(f"\nwrote {out}/results.json and {out}/work_precision.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
