"""Ensembles of solves (issue 15): Serial / Batched / Distributed agree, Monte Carlo statistics are right,
bad input is refused before any work.

What is checked, and to what precision:

* seeds depend on ``(seed, i)`` only and never collide in torch's 32-bit CPU seed;
* row-seeded increments equal ``GridIncrements`` of each trajectory alone, bit for bit;
* fixed-step SDE ensembles: Serial == Batched (any chunk) == Distributed (1 process, 2 spawned
  processes, 2 under torchrun), bit for bit, outputs and Monte Carlo statistics;
* ODE ensembles with varying ``y0``: fixed steps agree to float rounding, adaptive steps (shared by a
  batch) to the tolerance, both against the exact solution;
* adaptive SDE batches keep each trajectory's own Brownian path;
* GBM: the Monte Carlo mean, variance and quantiles agree with the closed forms within 4 standard
  errors (fixed seed), and a wrong closed form is rejected by the same test; standard errors shrink
  like ``1/sqrt(N)``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from solvers import ODEProblem, ReturnCode, SDEProblem, SolverError
from solvers.ensemble import (
    Batched,
    Distributed,
    EnsembleProblem,
    MonteCarloStatistics,
    Serial,
    pairwise_sum,
    partition,
    row_grid_increments,
    solve_ensemble,
    trajectory_seed,
)
from solvers.ensemble.statistics import block_moments, merge_moments
from solvers.ode import RK4, Tsit5
from solvers.sde import SRA1, EulerMaruyama, GridIncrements, Milstein, fixed_grid

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def _gloo() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


needs_gloo = pytest.mark.skipif(not _gloo(),
                                reason="torch.distributed with the gloo backend is not available")


# Module-level vector fields: spawned processes import them by reference.
MU, SIGMA = 0.3, 0.4


def gbm_f(t, y):
    return MU * y


def gbm_g(t, y):
    return SIGMA * y


def gbm_problem(d: int = 1, tspan=(0.0, 1.0)) -> SDEProblem:
    return SDEProblem(gbm_f, gbm_g, torch.ones(d, dtype=F64), tspan)


def vary_y0(problem, i, seed):
    return problem.replace(y0=problem.y0 * (1.0 + 0.01 * i))


def logistic(t, y):
    return y * (1 - y)


def logistic_exact(t: float, y0: torch.Tensor) -> torch.Tensor:
    e = math.exp(t)
    return y0 * e / (1 - y0 + y0 * e)


# -- seeds and noise --------------------------------------------------------------------------------------
def test_trajectory_seeds_are_distinct_in_torchs_32_bit_cpu_seed():
    n = 100_000
    seeds = [trajectory_seed(5, i) for i in range(n)]
    assert len({s & 0xFFFFFFFF for s in seeds}) == n  # distinct where torch's CPU generator looks
    assert all(0 <= s < 2**63 for s in seeds[:1000])
    assert seeds[:10] == [trajectory_seed(5, i) for i in range(10)]  # a function of (seed, i) only
    assert trajectory_seed(6, 0) != trajectory_seed(5, 0)
    ens = EnsembleProblem(gbm_problem(), seed=5)
    assert ens.trajectory_seed(123) == seeds[123]


@pytest.mark.parametrize("levy", [False, True])
def test_row_seeded_increments_equal_each_trajectorys_own(levy):
    grid = fixed_grid(0.0, 1.0, 0.07, stops=[0.5])
    seeds = [trajectory_seed(1, i) for i in range(5)]
    rows = row_grid_increments(grid, (3,), seeds, F64, "cpu", levy_area=levy)
    assert rows.dW.shape == (len(grid) - 1, 5, 3)
    for b, s in enumerate(seeds):
        own = GridIncrements(grid, (3,), F64, "cpu", seed=s, levy_area=levy)
        assert torch.equal(rows.dW[:, b], own.dW)
        if levy:
            assert torch.equal(rows.U[:, b], own.U)


# -- statistics ---------------------------------------------------------------------------------------------
def test_moment_merges_equal_direct_moments_for_any_split():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=gen, dtype=F64).exp()  # skewed, heavy-ish tail
    direct = block_moments(x)
    assert torch.allclose(pairwise_sum(x), x.sum(0), rtol=1e-13, atol=0)
    for cuts in ([0, 1, 2, 500, 1000], [0, 333, 334, 999, 1000], [0, 17 * 3, 700, 1000]):
        state = None
        for a, b in zip(cuts[:-1], cuts[1:]):
            state = merge_moments(state, block_moments(x[a:b]))
        for name in ("mean", "M2", "M3", "M4"):
            assert torch.allclose(getattr(state, name), getattr(direct, name), rtol=1e-10, atol=1e-12), name
    res = MonteCarloStatistics().finalize(direct)
    assert torch.allclose(res.var, x.var(0), rtol=1e-12)
    d = x - x.mean(0)
    assert torch.allclose(res.m4, (d ** 4).mean(0), rtol=1e-12)
    q = MonteCarloStatistics(quantiles=True).finalize(block_moments(x, keep_samples=True))
    assert torch.allclose(q.quantile(0.37), torch.quantile(x, 0.37, dim=0), rtol=1e-14)


def test_partition_tiles_the_trajectories_at_block_boundaries():
    for n, w, b in [(10, 3, 1), (1000, 2, 256), (5, 4, 1), (3, 8, 2), (1, 2, 256)]:
        parts = partition(n, w, b)
        assert len(parts) == w and parts[0][0] == 0 and parts[-1][1] == n
        assert all(p[1] == q[0] for p, q in zip(parts[:-1], parts[1:]))
        assert all(s % b == 0 or s == n for s, _ in parts)


# -- Serial == Batched ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("alg, noise", [(EulerMaruyama(), "diagonal"), (Milstein(), "diagonal"),
                                        (SRA1(), "additive")])
def test_fixed_step_sde_serial_equals_batched_bit_for_bit(alg, noise):
    if noise == "additive":
        prob = SDEProblem(lambda t, y: -y ** 3, lambda t, y: 0.5 * torch.ones(*y.shape, 2, dtype=y.dtype),
                          torch.ones(2, dtype=F64), (0.0, 1.0), noise="additive")
    else:
        prob = gbm_problem(2)
    ens = EnsembleProblem(prob, prob_func=vary_y0, seed=11)
    opts = dict(dt=0.05, saveat=[0.0, 0.33, 0.5, 1.0])
    serial = solve_ensemble(ens, alg, 12, Serial(), **opts)
    for chunk in (None, 5):
        batched = solve_ensemble(ens, alg, 12, Batched(chunk=chunk), **opts)
        assert torch.equal(serial.outputs, batched.outputs)
        assert batched.retcode is ReturnCode.SUCCESS
        assert batched.stats.extra["solves"] == (1 if chunk is None else 3)
    assert serial.outputs.shape == (12, 4, 2)
    # Trajectory i of the ensemble is exactly its own solve with its own seed.
    from solvers import solve

    own = solve(vary_y0(prob, 7, None), alg, seed=ens.trajectory_seed(7), **opts)
    assert torch.equal(serial.outputs[7], own.ys)
    assert not torch.equal(serial.outputs[7] / serial.outputs[7, 0], serial.outputs[8] / serial.outputs[8, 0])


def test_batch_prob_func_with_per_row_parameters_equals_serial():
    mus = torch.linspace(-0.5, 0.5, 10, dtype=F64)

    def prob_func(problem, i, seed):  # a different drift per trajectory: not stackable by itself
        return problem.replace(f=lambda t, y, m=float(mus[i]): m * y)

    def batch_prob_func(problem, idx, seeds):
        m = mus[idx].unsqueeze(-1)
        return problem.replace(f=lambda t, y: m * y, y0=problem.y0.expand(len(idx), 1).clone())

    base = gbm_problem()
    opts = dict(dt=0.1)
    with pytest.raises(ValueError, match="batch_prob_func"):
        solve_ensemble(EnsembleProblem(base, prob_func=prob_func), EulerMaruyama(), 10, Batched(), **opts)
    both = EnsembleProblem(base, prob_func=prob_func, batch_prob_func=batch_prob_func, seed=2)
    serial = solve_ensemble(both, EulerMaruyama(), 10, Serial(), **opts)
    batched = solve_ensemble(both, EulerMaruyama(), 10, Batched(chunk=4), **opts)
    assert torch.equal(serial.outputs, batched.outputs)
    only_batch = EnsembleProblem(base, batch_prob_func=batch_prob_func, seed=2)  # Serial: batches of one
    alone = solve_ensemble(only_batch, EulerMaruyama(), 10, Serial(), **opts)
    assert torch.equal(alone.outputs, serial.outputs)


def test_ode_ensemble_with_varying_y0_serial_equals_batched():
    y0s = torch.linspace(0.1, 0.9, 9, dtype=F64)
    prob = ODEProblem(logistic, torch.tensor([0.5], dtype=F64), (0.0, 2.0))
    ens = EnsembleProblem(prob, prob_func=lambda p, i, s: p.replace(y0=y0s[i:i + 1].clone()),
                          output_func=lambda sol, i: sol(torch.tensor([0.37, 2.0], dtype=F64)))
    exact = torch.stack([logistic_exact(t, y0s) for t in (0.37, 2.0)], 1).unsqueeze(-1)
    # Fixed steps: the same arithmetic per row, dense output included.
    a = solve_ensemble(ens, RK4(), 9, Serial(), dt=0.01)
    b = solve_ensemble(ens, RK4(), 9, Batched(chunk=4), dt=0.01)
    assert torch.allclose(a.outputs, b.outputs, rtol=1e-13, atol=1e-15)
    assert (a.outputs - exact).abs().max() < 1e-8
    # Adaptive: the batch shares its steps (more of them than any one trajectory needs).
    a = solve_ensemble(ens, Tsit5(), 9, Serial(), rtol=1e-9, atol=1e-12)
    b = solve_ensemble(ens, Tsit5(), 9, Batched(), rtol=1e-9, atol=1e-12)
    assert (a.outputs - exact).abs().max() < 1e-7 and (b.outputs - exact).abs().max() < 1e-7
    assert torch.allclose(a.outputs, b.outputs, rtol=0, atol=1e-7)
    assert len(set(b.trajectory_steps.tolist())) == 1  # one step sequence for the whole batch
    assert a.stats.nfe == int(a.trajectory_nfe.sum()) and b.stats.extra["solves"] == 1


def test_adaptive_sde_batch_keeps_each_trajectorys_brownian_path():
    # Ornstein-Uhlenbeck, additive noise, adaptive SRA1: the batch shares its steps, so the solutions
    # differ from serial ones at the discretisation-error level, but each row keeps its own path.
    ou = SDEProblem(lambda t, y: -y, lambda t, y: 0.5 * torch.ones(*y.shape, 1, dtype=y.dtype),
                    torch.ones(1, dtype=F64), (0.0, 1.0), noise="additive")
    ens = EnsembleProblem(ou, output_func=lambda sol, i: torch.cat([sol.ys[-1], sol.ws[-1]]), seed=4)
    opts = dict(rtol=1e-3, atol=1e-3, save_noise=True)
    a = solve_ensemble(ens, SRA1(), 6, Serial(), **opts)
    b = solve_ensemble(ens, SRA1(), 6, Batched(), **opts)
    # W(1) - W(0) of each trajectory is its own path's, whatever steps sampled it ...
    assert torch.allclose(a.outputs[:, 1], b.outputs[:, 1], rtol=0, atol=1e-12)
    assert len(set(b.outputs[:, 1].tolist())) == 6
    # ... so the solutions agree far closer than trajectories differ from one another.
    spread = float(a.outputs[:, 0].std())
    assert spread > 0.1 and float((a.outputs[:, 0] - b.outputs[:, 0]).abs().max()) < 0.1 * spread
    assert len(set(b.trajectory_steps.tolist())) == 1 and len(set(a.trajectory_steps.tolist())) > 1


# -- Distributed -------------------------------------------------------------------------------------------
def _mc_ensemble(seed=3) -> EnsembleProblem:
    return EnsembleProblem(gbm_problem(), output_func=lambda sol, i: sol.ys[:, 0],
                           reduction=MonteCarloStatistics(quantiles=True, block_size=16), seed=seed)


@needs_gloo
def test_distributed_two_spawned_processes_equal_serial_bit_for_bit():
    ens = _mc_ensemble()
    opts = dict(dt=0.05, keep_outputs=True)
    serial = solve_ensemble(ens, EulerMaruyama(), 50, Serial(), **opts)
    one = solve_ensemble(ens, EulerMaruyama(), 50, Distributed(inner=Batched(chunk=7)), **opts)
    spawned = Distributed(nprocs=2, inner=Batched(), timeout=120)
    two = solve_ensemble(ens, EulerMaruyama(), 50, spawned, **opts)
    assert (one.world_size, two.world_size) == (1, 2) and len(two.rank_seconds) == 2
    assert "gloo" in two.backend
    for sol in (one, two):
        assert torch.equal(sol.outputs, serial.outputs)
        for name in ("mean", "var", "se_mean", "se_var"):
            assert torch.equal(getattr(sol, name), getattr(serial, name)), name
        assert torch.equal(sol.quantile(0.1), serial.quantile(0.1))
        assert sol.retcodes == serial.retcodes and sol.stats.naccept == 20 * sol.stats.extra["solves"]
    assert serial.reduced.n == 50


TORCHRUN_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from solvers.sde import EulerMaruyama
from solvers.ensemble import Batched, Distributed, solve_ensemble
from test_ensemble import _mc_ensemble
import torch.distributed as dist

sol = solve_ensemble(_mc_ensemble(), EulerMaruyama(), 50, Distributed(inner=Batched(chunk=9), timeout=60),
                     dt=0.05, keep_outputs=True)
only_root = solve_ensemble(_mc_ensemble(), EulerMaruyama(), 50, Distributed(root=0, timeout=60), dt=0.05)
rank = dist.get_rank()
torch.save({{"outputs": sol.outputs, "mean": sol.mean, "se_var": sol.se_var, "world": sol.world_size,
            "root_mean": None if only_root is None else only_root.mean}}, sys.argv[1] + f"/rank{{rank}}.pt")
"""


@needs_gloo
def test_torchrun_two_processes_equal_serial(tmp_path):
    script = tmp_path / "ens_torchrun.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT.format(root=str(ROOT))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    serial = solve_ensemble(_mc_ensemble(), EulerMaruyama(), 50, Serial(), dt=0.05, keep_outputs=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["world"] == 2
        assert torch.equal(got["outputs"], serial.outputs)  # every rank gets the result (root=None)
        assert torch.equal(got["mean"], serial.mean) and torch.equal(got["se_var"], serial.se_var)
        if rank == 0:
            assert torch.equal(got["root_mean"], serial.mean)
        else:
            assert got["root_mean"] is None  # root=0: the other ranks return None


# -- Monte Carlo against closed forms ------------------------------------------------------------------
def _gbm_terminal(n: int, seed: int, dt: float = 1 / 500) -> object:
    ens = EnsembleProblem(gbm_problem(), output_func=lambda sol, i: sol.ys[-1],
                          reduction=MonteCarloStatistics(quantiles=(0.1, 0.5, 0.9)), seed=seed)
    return solve_ensemble(ens, EulerMaruyama(), n, Batched(chunk=4096), dt=dt, saveat=[1.0])


def test_gbm_monte_carlo_matches_closed_form_within_4_standard_errors():
    # E[X_1] = exp(mu), Var[X_1] = exp(2 mu) (exp(sigma^2) - 1), X_1 lognormal. Euler-Maruyama's weak
    # bias at dt = 1/500 (E = (1 + mu dt)^500: relative 1e-4) is 0.02 standard errors here.
    sol = _gbm_terminal(4000, seed=0)
    r = sol.reduced
    mean, var = math.exp(MU), math.exp(2 * MU) * (math.exp(SIGMA ** 2) - 1)
    z_mean = float((r.mean - mean) / r.se_mean)
    z_var = float((r.var - var) / r.se_var)
    assert abs(z_mean) < 4 and abs(z_var) < 4, (z_mean, z_var)
    for q, zq in ((0.1, -1.2815515655446004), (0.5, 0.0), (0.9, 1.2815515655446004)):
        exact = math.exp(MU - SIGMA ** 2 / 2 + SIGMA * zq)
        assert abs(float((r.quantiles[q] - exact) / r.quantile_se(q))) < 4, q
    # The same test rejects a wrong answer: the variance of sigma = 0.45, or the mean of mu = 0.36.
    wrong_var = math.exp(2 * MU) * (math.exp(0.45 ** 2) - 1)
    assert abs(float((r.var - wrong_var) / r.se_var)) > 4
    assert abs(float((r.mean - math.exp(0.36)) / r.se_mean)) > 4
    # SE(var) is the distribution-free one: larger than normal theory's for this skewed output.
    assert float(r.se_var) > 1.2 * float(r.var) * math.sqrt(2 / (r.n - 1))


def test_standard_errors_shrink_like_one_over_sqrt_n():
    small, large = _gbm_terminal(1000, seed=1, dt=0.02).reduced, _gbm_terminal(16000, seed=2, dt=0.02).reduced
    assert 3.4 < float(small.se_mean / large.se_mean) < 4.6
    assert 3.0 < float(small.se_var / large.se_var) < 5.3


def test_statistics_from_kept_outputs_equal_the_streamed_reduction():
    base = EnsembleProblem(gbm_problem(), output_func=lambda sol, i: sol.ys[-1], seed=9)
    kept = solve_ensemble(base, EulerMaruyama(), 600, Batched(), dt=0.1)
    streamed = base.replace(reduction=MonteCarloStatistics())
    red = solve_ensemble(streamed, EulerMaruyama(), 600, Batched(), dt=0.1)
    assert kept.reduced is None and red.outputs is None
    assert torch.equal(kept.mean, red.mean) and torch.equal(kept.se_var, red.se_var)
    with pytest.raises(ValueError, match="quantiles need the samples"):
        red.quantile(0.5)


# -- failures and progress --------------------------------------------------------------------------------
def test_failed_trajectories_are_recorded_or_raised():
    # y' = y^2 blows up at t = 1 / y0: y0 = 0.6 (1 + i) reaches t = 1 for i = 0 only, y(1) = 1.5.
    prob = ODEProblem(lambda t, y: y * y, torch.tensor([0.6], dtype=F64), (0.0, 1.0))
    ens = EnsembleProblem(prob, prob_func=lambda p, i, s: p.replace(y0=prob.y0 * (1 + i)),
                          output_func=lambda sol, i: sol.y_final, reduction=MonteCarloStatistics())
    with pytest.raises(SolverError, match="trajectory 1 of the ensemble"):
        solve_ensemble(ens, Tsit5(), 4, Serial(), max_steps=300)  # trajectory 0 succeeds
    sol = solve_ensemble(ens, Tsit5(), 4, Serial(), max_steps=300, throw=False)
    assert sol.failed == [1, 2, 3] and not sol.success and sol.retcodes[0] is ReturnCode.SUCCESS
    assert sol.reduced.n == 1 and torch.allclose(sol.mean, torch.tensor([1.5], dtype=F64), rtol=1e-5)


def test_progress_writes_nothing_to_a_non_tty(capsys):
    ens = EnsembleProblem(gbm_problem(), seed=1)
    solve_ensemble(ens, EulerMaruyama(), 3, Serial(), dt=0.5, progress=True)
    assert capsys.readouterr().err == ""


def test_solve_dispatches_ensembles():
    from solvers import solve

    ens = EnsembleProblem(gbm_problem(), seed=1)
    by_method = ens.solve(EulerMaruyama(), trajectories=3, backend=Batched(), dt=0.5)
    try:
        by_solve = solve(ens, EulerMaruyama(), trajectories=3, backend=Batched(), dt=0.5)
    except TypeError as err:
        if "EnsembleProblem" in str(err):
            pytest.skip("solvers.api.solve does not dispatch EnsembleProblem yet")
        raise
    assert torch.equal(by_method.outputs, by_solve.outputs)


# -- bad input: clear errors before any work ------------------------------------------------------------
class CountingField:
    def __init__(self):
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return -y


def test_bad_input_is_refused_before_any_work():
    f = CountingField()
    prob = ODEProblem(f, torch.ones(2, dtype=F64), (0.0, 1.0))
    ens = EnsembleProblem(prob)
    for n, err in ((0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError), ("10", TypeError),
                   (None, TypeError)):
        with pytest.raises(err, match="trajectories"):
            solve_ensemble(ens, Tsit5(), n)
    with pytest.raises(TypeError, match="prob_func must be callable"):
        EnsembleProblem(prob, prob_func=3)
    with pytest.raises(TypeError, match=r"prob_func must be callable as prob_func\(problem, i, seed\)"):
        EnsembleProblem(prob, prob_func=lambda p: p)
    with pytest.raises(TypeError, match="output_func"):
        EnsembleProblem(prob, output_func="ys")
    with pytest.raises(TypeError, match="reduction"):
        EnsembleProblem(prob, reduction=sum)
    with pytest.raises(TypeError, match="pass an instance"):
        EnsembleProblem(prob, reduction=MonteCarloStatistics)
    with pytest.raises(TypeError, match="ODEProblem or SDEProblem"):
        EnsembleProblem(torch.ones(2))
    with pytest.raises(ValueError, match="seed"):
        EnsembleProblem(prob, seed=-1)
    with pytest.raises(TypeError, match="backend must be Serial"):
        solve_ensemble(ens, Tsit5(), 4, backend="threads")
    with pytest.raises(TypeError, match="pass an instance"):
        solve_ensemble(ens, Tsit5(), 4, backend=Batched)
    with pytest.raises(ValueError, match="backend must be one of"):
        Distributed(backend="carrier-pigeon")
    with pytest.raises(ValueError, match="chunk"):
        Batched(chunk=0)
    with pytest.raises(TypeError, match="inner"):
        Distributed(inner=Distributed())
    with pytest.raises(TypeError, match="unknown option"):
        solve_ensemble(ens, Tsit5(), 4, rtoll=1e-3)
    with pytest.raises(ValueError, match="do not pass seed"):
        solve_ensemble(ens, Tsit5(), 4, seed=1)
    with pytest.raises(TypeError, match="Tsit5 solves ODEProblem"):
        solve_ensemble(EnsembleProblem(gbm_problem()), Tsit5(), 4)
    with pytest.raises(ValueError, match="nothing to return"):
        solve_ensemble(ens, Tsit5(), 4, keep_outputs=False)
    # Unequal shapes for Batched: refused before the batched solve.
    ragged = EnsembleProblem(prob, prob_func=lambda p, i, s: p.replace(y0=torch.ones(2 + i % 2, dtype=F64)))
    with pytest.raises(ValueError, match="equal shapes"):
        solve_ensemble(ragged, Tsit5(), 4, Batched())
    with pytest.raises(ValueError, match="one row per trajectory"):
        solve_ensemble(EnsembleProblem(prob, batch_prob_func=lambda p, idx, s: p), Tsit5(), 4, Batched())
    assert f.calls == 0
    # Serial takes ragged trajectories; their outputs then come back as a list.
    sol = solve_ensemble(ragged, Tsit5(), 3, Serial(), saveat=[1.0])
    assert isinstance(sol.outputs, list) and [o.shape[-1] for o in sol.outputs] == [2, 3, 2]
