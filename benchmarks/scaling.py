"""Scaling out: ensemble throughput for Serial, Batched and Distributed (``torch.distributed``).

Sections (``--section``), each a function ``section_<name>(args) -> dict`` whose result lands under its
name in ``results.json``; more can be added (a DDP-training section, say) without touching the others.

``ensemble``: trajectories per second of a small ODE ensemble, Lotka-Volterra
``x' = 1.5 x - x y``, ``y' = x y - 3 y`` on ``[0, 5]``, ``y0_i = (1 + i / N, 1)`` (every trajectory
different), Tsit5 with ``rtol = 1e-6``, ``atol = 1e-9``, keeping the final state:

* ``Serial``: one ``solve`` per trajectory (``--serial`` trajectories: 10^4, 200 with ``--quick``;
  throughput is per trajectory, so the counts compare);
* ``Batched``: 10^4 trajectories in one batched solve (shared steps);
* ``Distributed(nprocs=1|2, inner=Serial())`` on the Serial count and ``Distributed(nprocs=1|2,
  inner=Batched())`` on 10^4: one process runs in this one; two are spawned (gloo on localhost), so
  their wall time includes starting two Python processes and importing torch, reported apart from the
  solving time (the slowest rank's ``rank_seconds``) and from the CPU time the ranks used
  (``rank_cpu_seconds``: on a shared machine a rank that waits for a core has CPU time well below its
  wall time, so trajectories per CPU-second is the figure that load does not distort).

In-process runs use one intra-op thread (``--threads``); spawned ranks get ``cpu_count // 2`` each.
The machine's load is not controlled: numbers are what was measured, on the machine named in the JSON.

    python benchmarks/scaling.py [--quick] [--section ensemble] [--out out/benchmarks/scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers import ODEProblem  # noqa: E402
from solvers.ensemble import Batched, Distributed, EnsembleProblem, Serial, solve_ensemble  # noqa: E402
from solvers.ode import Tsit5  # noqa: E402

F64 = torch.float64
N_BATCHED = 10_000


# -- section: ensemble ----------------------------------------------------------------------------------
def lotka_volterra(t, u):
    x, y = u[..., 0], u[..., 1]
    return torch.stack([1.5 * x - x * y, x * y - 3.0 * y], dim=-1)


def vary_y0(problem, i, seed, n=N_BATCHED):
    return problem.replace(y0=torch.tensor([1.0 + i / n, 1.0], dtype=F64))


def final_state(sol, i):
    return sol.ys[-1]


def _ensemble() -> EnsembleProblem:
    prob = ODEProblem(lotka_volterra, torch.tensor([1.0, 1.0], dtype=F64), (0.0, 5.0), name="Lotka-Volterra")
    return EnsembleProblem(prob, prob_func=vary_y0, output_func=final_state)


def _run(name: str, backend, n: int) -> tuple[dict, torch.Tensor]:
    t0 = time.perf_counter()
    sol = solve_ensemble(_ensemble(), Tsit5(), n, backend, rtol=1e-6, atol=1e-9, saveat=[5.0])
    wall = time.perf_counter() - t0
    solving = max(sol.rank_seconds) if sol.rank_seconds else wall
    cpu = sum(sol.rank_cpu_seconds)
    row = {"config": name, "backend": sol.backend, "trajectories": n, "world_size": sol.world_size,
           "wall_s": wall, "solve_s": solving, "rank_seconds": sol.rank_seconds,
           "rank_cpu_seconds": sol.rank_cpu_seconds, "traj_per_cpu_s": n / cpu,
           "traj_per_s_wall": n / wall, "traj_per_s_solve": n / solving, "nfe": sol.stats.nfe,
           "solves": sol.stats.extra["solves"], "success": sol.success}
    print(f"  {name:<23} {n:>6} traj  wall {wall:7.2f} s  solving {solving:7.2f} s  cpu {cpu:7.2f} s  "
          f"{n / wall:9.1f} traj/s (wall) {n / solving:9.1f} (solving) {n / cpu:9.1f} (per cpu-s)",
          flush=True)
    return row, sol.outputs


def section_ensemble(args) -> dict:
    n_serial = args.serial or (200 if args.quick else N_BATCHED)
    print(f"ensemble: Lotka-Volterra, Tsit5 rtol=1e-6; Serial on {n_serial}, Batched on {N_BATCHED} "
          f"trajectories")
    rows, outs = [], {}
    configs = [("Serial", Serial(), n_serial),
               ("Batched", Batched(), N_BATCHED),
               ("Distributed(1, Serial)", Distributed(nprocs=1, inner=Serial()), n_serial),
               ("Distributed(2, Serial)", Distributed(nprocs=2, inner=Serial(), timeout=1800), n_serial),
               ("Distributed(1, Batched)", Distributed(nprocs=1, inner=Batched()), N_BATCHED),
               ("Distributed(2, Batched)", Distributed(nprocs=2, inner=Batched(), timeout=1800), N_BATCHED)]
    for name, backend, n in configs:
        row, out = _run(name, backend, n)
        rows.append(row)
        outs[name] = out
    by = {r["config"]: r for r in rows}
    # Agreement: the same trajectories in every configuration (Serial vs Batched to the tolerance: a batch
    # shares its steps; the Distributed runs of a kind equal their in-process counterpart bit for bit).
    k = n_serial
    agree = {
        "batched_vs_serial_max_abs": float((outs["Batched"][:k] - outs["Serial"]).abs().max()),
        "dist2_serial_equals_serial": bool(torch.equal(outs["Distributed(2, Serial)"], outs["Serial"])),
        "dist2_batched_vs_batched_max_abs": float((outs["Distributed(2, Batched)"]
                                                    - outs["Batched"]).abs().max()),
    }
    speedup = {
        "batched_over_serial_per_trajectory": (by["Batched"]["traj_per_s_wall"]
                                               / by["Serial"]["traj_per_s_wall"]),
        "dist2_over_dist1_serial_solving": (by["Distributed(2, Serial)"]["traj_per_s_solve"]
                                            / by["Distributed(1, Serial)"]["traj_per_s_solve"]),
        "dist2_over_dist1_serial_wall": (by["Distributed(2, Serial)"]["traj_per_s_wall"]
                                         / by["Distributed(1, Serial)"]["traj_per_s_wall"]),
        "dist2_over_dist1_batched_solving": (by["Distributed(2, Batched)"]["traj_per_s_solve"]
                                             / by["Distributed(1, Batched)"]["traj_per_s_solve"]),
        "dist2_over_dist1_batched_wall": (by["Distributed(2, Batched)"]["traj_per_s_wall"]
                                          / by["Distributed(1, Batched)"]["traj_per_s_wall"]),
    }
    print("  speedups: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    print("  agreement: " + ", ".join(f"{k} {v}" for k, v in agree.items()))
    return {"problem": "Lotka-Volterra, Tsit5 rtol=1e-6 atol=1e-9, t in [0, 5]",
            "serial_trajectories": n_serial, "batched_trajectories": N_BATCHED, "rows": rows,
            "speedup": speedup, "agreement": agree}


def plot_ensemble(res: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    names = [r["config"] for r in rows]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    x = range(len(rows))
    for k, (key, label) in enumerate([("traj_per_s_wall", "per s of wall time (incl. process start)"),
                                      ("traj_per_s_solve", "per s of solving (slowest rank)"),
                                      ("traj_per_cpu_s", "per CPU-second (all ranks)")]):
        ax.bar([i + (k - 1) * 0.27 for i in x], [r[key] for r in rows], width=0.27, label=label)
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{n}\n{r['trajectories']} traj" for n, r in zip(names, rows)], fontsize=7)
    ax.set_ylabel("trajectories / s")
    ax.set_title("Ensemble throughput, Lotka-Volterra (Tsit5): Serial, Batched, Distributed (gloo)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "ensemble_throughput.png"
    fig.savefig(path, dpi=120)
    return path


SECTIONS = {"ensemble": (section_ensemble, plot_ensemble)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer Serial trajectories (throughput is per trajectory)")
    ap.add_argument("--serial", type=int, default=None, help="trajectories for the Serial runs")
    ap.add_argument("--section", choices=sorted(SECTIONS) + ["all"], default="all")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of in-process runs")
    ap.add_argument("--out", default="out/benchmarks/scaling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}  # keep the other sections' results
    results["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch": torch.__version__, "threads_in_process": args.threads,
                          "load_average_before": list(os.getloadavg())}
    for name in (SECTIONS if args.section == "all" else [args.section]):
        run, plot = SECTIONS[name]
        res = run(args)
        res["quick"] = bool(args.quick)
        results[name] = res
        print(f"wrote {plot(res, out)}")
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
