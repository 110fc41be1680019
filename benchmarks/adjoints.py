"""Adjoints: gradient error against Backprop, wall time and peak memory against the number of steps.

Problems (float64, t in [0, 1], fixed step dt = 1/N, classic RK4 so that torchdiffeq's fixed-grid
"rk4" is a peer on the same grid):
  (a) neural ODE: MLP 2-64-2 (tanh), batch 256, loss = sum(w * y(1));
  (b) 10-d linear system y' = A y with a learnable A (decaying spectrum), batch 16.

Adjoints: ``Backprop()``, ``CheckpointAdjoint()`` (ceil(sqrt(N)) checkpoints), ``CheckpointAdjoint(4)``,
``BacksolveAdjoint()`` (our RK4 backwards on the same dt), and torchdiffeq's ``odeint`` (backprop
through torchdiffeq) and ``odeint_adjoint`` as peers. Gradient error: max |g - g_ref| / max |g_ref|
over the parameters and y0, g_ref = our Backprop (torchdiffeq's peers: against torchdiffeq's own
odeint, since its "rk4" is the 3/8 rule, not the classic RK4).

Memory: the peak total size of the tensors autograd holds for backward, measured with
``torch.autograd.graph.saved_tensors_hooks`` (storages deduplicated, freed when autograd drops
them), over the forward *and* the backward pass (so the recomputation graphs of checkpointing and
the VJP graphs of the backward solves are included). It does not see tensors held outside autograd
(solver stage buffers, the states a solution keeps). ``tracemalloc`` does not see torch's allocator
and RSS deltas are dominated by allocator caching on a shared machine, so neither is reported.
"fwd MiB" is the peak at the end of the forward solve (before backward). torchdiffeq's
odeint_adjoint keeps the graphs of its backward pass's vector-field evaluations alive (its
augmented dynamics returns the graph-carrying f(t, y) and takes VJPs with ``retain_graph=True``):
in this measurement they are never released, so its "peak" grows with N although its forward is O(1).
Wall times are medians of repeats of forward + backward, in one process (ratios to Backprop).

    OMP_NUM_THREADS=1 python benchmarks/adjoints.py [--quick] [--out out/benchmarks/adjoints]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref
from pathlib import Path

import torch
from torch import nn

from solvers import (
    RK4,
    Backprop,
    BacksolveAdjoint,
    CheckpointAdjoint,
    ODEProblem,
    TorchDiffEq,
    TorchDiffEqAdjoint,
    solve,
)

F64 = torch.float64


class SavedTensorMeter:
    """Live and peak bytes of the tensors autograd saves for backward (storages counted once)."""

    class _Box:
        __slots__ = ("t", "__weakref__")

        def __init__(self, t):
            self.t = t

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.refs: dict[int, int] = {}
        self.forward_peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        c = self.refs[key] - 1
        if c == 0:
            del self.refs[key]
            self.live -= nbytes
        else:
            self.refs[key] = c

    def pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        key, nbytes = st.data_ptr(), st.nbytes()
        c = self.refs.get(key, 0)
        if c == 0:
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self.refs[key] = c + 1
        box = self._Box(t)
        weakref.finalize(box, self._release, key, nbytes)
        return box

    @staticmethod
    def unpack(box):
        return box.t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2)).to(F64)

    def forward(self, t, y):
        return self.net(y)


class Linear(nn.Module):
    def __init__(self, n: int = 10):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        m = torch.randn(n, n, dtype=F64, generator=g) / n ** 0.5
        self.A = nn.Parameter(m - m.T + 0.3 * m - 1.0 * torch.eye(n, dtype=F64))

    def forward(self, t, y):
        return y @ self.A.T


def problems():
    g = torch.Generator().manual_seed(2)
    return {
        "neural_ode_mlp_2_64_2_b256": (MLP(), torch.randn(256, 2, dtype=F64, generator=g)),
        "linear_10d_b16": (Linear(), torch.randn(16, 10, dtype=F64, generator=g)),
    }


ADJOINTS = {
    "Backprop": (lambda n: Backprop(), "ours"),
    "Checkpoint(sqrt N)": (lambda n: CheckpointAdjoint(), "ours"),
    "Checkpoint(4)": (lambda n: CheckpointAdjoint(4), "ours"),
    "Backsolve": (lambda n: BacksolveAdjoint(), "ours"),
    "torchdiffeq odeint": (lambda n: None, "tde"),
    "torchdiffeq odeint_adjoint": (lambda n: TorchDiffEqAdjoint(), "tde"),
}


def run_once(f: nn.Module, y0: torch.Tensor, w: torch.Tensor, name: str, nsteps: int, meter=None):
    make, kind = ADJOINTS[name]
    y0 = y0.clone().requires_grad_(True)
    prob = ODEProblem(f, y0, (0.0, 1.0))
    alg = RK4() if kind == "ours" else TorchDiffEq("rk4")
    params = [y0, *f.parameters()]
    ctx = meter.hooks() if meter is not None else _null()
    with ctx:
        sol = solve(prob, alg, adjoint=make(nsteps), dt=1.0 / nsteps, saveat=[0.0, 1.0])
        if meter is not None:
            meter.forward_peak = meter.peak
        loss = (sol.ys[-1] * w).sum()
        grads = torch.autograd.grad(loss, params)
    return grads


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def rel_err(g, ref) -> float:
    num = max(float((a - b).abs().max()) for a, b in zip(g, ref))
    return num / max(float(b.abs().max()) for b in ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2^4..2^7 steps, one repeat")
    ap.add_argument("--out", default="out/benchmarks/adjoints")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    exps = range(4, 8) if args.quick else range(4, 11)
    repeats = args.repeats or (1 if args.quick else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = {"memory_measure": "peak bytes of tensors saved for backward (saved_tensors_hooks, storages "
                                "deduplicated), forward and backward pass", "dtype": "float64",
              "method": "RK4 (ours) / torchdiffeq rk4, fixed dt = 1/N", "repeats": repeats,
              "threads": torch.get_num_threads(), "results": {}}
    for pname, (f, y0) in problems().items():
        w = torch.randn(y0.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
        rows = []
        for e in exps:
            n = 2 ** e
            refs = {"ours": run_once(f, y0, w, "Backprop", n),
                    "tde": run_once(f, y0, w, "torchdiffeq odeint", n)}
            times = {}
            for name, (_, kind) in ADJOINTS.items():
                meter = SavedTensorMeter()
                g = run_once(f, y0, w, name, n, meter)
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run_once(f, y0, w, name, n)
                    ts.append(time.perf_counter() - t0)
                times[name] = statistics.median(ts)
                rows.append(dict(steps=n, adjoint=name, grad_rel_err=rel_err(g, refs[kind]),
                                 peak_saved_mib=meter.peak / 2 ** 20,
                                 forward_peak_saved_mib=meter.forward_peak / 2 ** 20, wall_s=times[name]))
            for r in rows[-len(ADJOINTS):]:
                r["wall_vs_backprop"] = r["wall_s"] / times["Backprop"]
        report["results"][pname] = rows
        print(f"\n{pname}  (memory: peak saved-for-backward MiB; time: forward+backward)")
        print(f"{'steps':>6} {'adjoint':<28} {'grad err':>9} {'peak MiB':>9} {'fwd MiB':>8} {'wall s':>8} "
              f"{'x Backprop':>10}")
        for r in rows:
            print(f"{r['steps']:>6} {r['adjoint']:<28} {r['grad_rel_err']:>9.1e} {r['peak_saved_mib']:>9.3f} "
                  f"{r['forward_peak_saved_mib']:>8.3f} {r['wall_s']:>8.4f} {r['wall_vs_backprop']:>10.2f}")
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "adjoints.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'adjoints.png'}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = list(report["results"])
    fig, axes = plt.subplots(len(probs), 3, figsize=(14, 4.2 * len(probs)), squeeze=False)
    for row, pname in enumerate(probs):
        rows = report["results"][pname]
        for name in ADJOINTS:
            rs = [r for r in rows if r["adjoint"] == name]
            n = [r["steps"] for r in rs]
            axes[row, 0].loglog(n, [r["peak_saved_mib"] for r in rs], "o-", label=name)
            axes[row, 1].loglog(n, [r["wall_s"] for r in rs], "o-", label=name)
            axes[row, 2].loglog(n, [max(r["grad_rel_err"], 1e-17) for r in rs], "o-", label=name)
        for ax, title in zip(axes[row], ("peak saved-for-backward memory (MiB)", "wall time fwd+bwd (s)",
                                         "gradient error vs reference")):
            ax.set_title(f"{pname}: {title}", fontsize=9)
            ax.set_xlabel("steps")
            ax.grid(True, which="both", alpha=0.3)
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
