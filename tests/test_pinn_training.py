"""Training: the Lagrangian PINN beats the Eulerian PINN at beta = 30; solve interface, history, options."""

import math

import pytest
import torch

from pinn import PINN, LagrangianPINN, burgers_raissi, causal_residual_loss, collocation_points, convection
from solvers import ReturnCode, solve

torch.set_num_threads(1)


def test_lpinn_beats_pinn_on_convection_beta_30():
    # Krishnapriyan et al.'s failure mode: u_t + 30 u_x = 0, u0 = sin x. Same network, points, budget.
    p = convection(30.0)
    kw = dict(hidden=(32, 32, 32), n_x=64, n_t=32, adam_iters=300, lbfgs_iters=0, seed=0)
    lp = solve(p, LagrangianPINN(**kw), progress=False)
    ep = solve(p, PINN(**kw), progress=False)
    assert lp.success
    assert ep.retcode is ReturnCode.NOT_CONVERGED and "rel_l2_tol 0.1" in ep.message   # it judges itself
    assert lp.stats.rel_l2 < 3e-2
    assert ep.stats.rel_l2 > 0.5
    assert lp.stats.rel_l2 < 0.05 * ep.stats.rel_l2
    assert lp.stats.min_jacobian > 0.5
    assert len(lp.stats.history["min_jacobian"]) == len(lp.stats.history["loss"])
    # the solution answers at arbitrary points
    x = torch.tensor([0.3, 1.0, 5.0])
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(lp.u(x, t), p.reference(x, t).float(), atol=0.05)


def test_pinn_solves_slow_convection_and_records_history():
    p = convection(1.0)
    sol = solve(p, PINN(adam_iters=200, lbfgs_iters=40, n_x=32, n_t=16, hidden=(20, 20)), progress=False,
                log_every=50, monitor_every=100)
    h = sol.stats.history
    assert sol.retcode is ReturnCode.SUCCESS
    assert sol.stats.rel_l2 < 5e-2
    assert h["phase"][0] == "adam" and h["phase"][-1] == "lbfgs"
    assert h["iteration"][:4] == [50, 100, 150, 200]
    assert len(h["loss"]) == len(h["iteration"]) == len(h["error"]) == len(h["loss_residual"])
    assert h["loss"][-1] < h["loss"][0]
    assert h["error"][1] is not None and h["error"][-1] == pytest.approx(sol.stats.rel_l2, rel=1e-6)
    assert sol.stats.adam_iters == 200 and 0 < sol.stats.lbfgs_iters <= 40
    assert sol.stats.threads == torch.get_num_threads()
    assert sol.u(torch.zeros(3, 4), 0.0).shape == (3, 4)


def test_seeded_runs_repeat_and_checkpoint_resumes(tmp_path):
    p = convection(5.0)
    kw = dict(adam_iters=40, lbfgs_iters=0, n_x=16, n_t=8, hidden=(16,), seed=3, lr_decay=1.0)
    a = solve(p, PINN(**kw), progress=False)
    b = solve(p, PINN(**kw), progress=False)
    assert a.stats.final_loss == b.stats.final_loss
    ck = tmp_path / "ck.pt"
    half = solve(p, PINN(**{**kw, "adam_iters": 20}), progress=False, checkpoint=ck, checkpoint_every=10)
    assert ck.exists() and half.stats.adam_iters == 20
    resumed = solve(p, PINN(**kw), progress=False, checkpoint=ck, checkpoint_every=10)
    assert resumed.stats.adam_iters == 40 and resumed.stats.history["iteration"][-1] == 40
    assert resumed.stats.final_loss == pytest.approx(a.stats.final_loss, rel=1e-5)
    assert abs(half.stats.final_loss - a.stats.final_loss) > 1e-3 * a.stats.final_loss


def test_float64_random_and_sobol_collocation_and_causal_weighting():
    p = convection(5.0)
    for kind in ("random", "sobol"):
        x, t = collocation_points(p, 8, 4, kind, seed=1, dtype=torch.float64)
        assert x.shape == (32,) and float(x.min()) >= 0 and float(x.max()) < 2 * math.pi
        assert float(t.min()) >= 0 and float(t.max()) <= 1
    sol = solve(p, PINN(adam_iters=20, lbfgs_iters=5, n_x=16, n_t=8, hidden=(8,), dtype=torch.float64,
                        collocation="sobol", causal_eps=1.0), progress=False)
    assert sol.u(0.5, 0.5).dtype == torch.float64 and math.isfinite(sol.stats.final_loss)
    # causal weights: a large early residual suppresses the later slabs
    r2 = torch.tensor([10.0, 10.0, 1.0, 1.0])
    t = torch.tensor([0.0, 0.1, 0.6, 0.9])
    plain = causal_residual_loss(r2, t, (0.0, 1.0), 2, eps=0.0)
    causal = causal_residual_loss(r2, t, (0.0, 1.0), 2, eps=1.0)
    assert plain == pytest.approx((10 + 1) / 2)
    assert causal == pytest.approx((10 + math.exp(-10) * 1) / 2)


@pytest.mark.filterwarnings("ignore:.*characteristics crossed")  # 10 iterations: expected
def test_dirichlet_pinn_and_lpinn_run_on_raissi_burgers():
    p = burgers_raissi()
    for alg in (PINN(adam_iters=10, lbfgs_iters=0, n_x=16, n_t=8, hidden=(8,)),
                LagrangianPINN(adam_iters=10, lbfgs_iters=0, n_x=16, n_t=8, hidden=(8,), n_lagrangian=64)):
        sol = solve(p, alg, progress=False)
        assert "bc" in sol.stats.final_loss_terms
        assert math.isfinite(sol.stats.rel_l2)


def test_bad_solver_input():
    with pytest.raises(TypeError, match="unknown option"):
        solve(convection(1.0), PINN(adam_iters=1), progres=False)
    with pytest.raises(ValueError, match="collocation"):
        PINN(collocation="halton")
    with pytest.raises(ValueError, match="adam_iters"):
        PINN(adam_iters=-1)
    with pytest.raises(TypeError, match="dtype"):
        PINN(dtype=torch.int64)
    with pytest.raises(ValueError, match="causal_eps"):
        PINN(causal_eps=-1.0)
    with pytest.raises(ValueError, match="hidden"):
        solve(convection(1.0), PINN(hidden=()), progress=False)


@pytest.mark.slow
def test_lpinn_meets_accuracy_goals_with_quick_budget():
    # The benchmark's --quick budget (1000 Adam + 100 L-BFGS): LPINN <= 1e-3 on convection-diffusion at
    # beta = 50 and <= 1e-2 on the moving-shock Burgers case.
    from pinn import burgers_moving_shock, convection_diffusion

    kw = dict(adam_iters=1000, lbfgs_iters=100)
    cd = solve(convection_diffusion(50.0, 0.1), LagrangianPINN(**kw), progress=False)
    assert cd.stats.rel_l2 <= 1e-3
    b = solve(burgers_moving_shock(10.0, 0.01), LagrangianPINN(**kw), progress=False)
    assert b.success and b.stats.rel_l2 <= 1e-2 and b.stats.min_jacobian > 0
