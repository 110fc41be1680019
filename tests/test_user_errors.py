"""What a new user hits first (issue 16, items 1, 2, 3 and 5): errors are not relabelled, doomed
solves are refused up front, answers that are wrong say so, and bad arguments are named.

Each test is named after its item and is fast (a tiny problem, a tiny training budget)."""

from __future__ import annotations

import warnings

import pytest
import torch

from solvers import ODEProblem, ReturnCode, SolverError, Tsit5, solve
from solvers.ode.torchdiffeq_backend import TorchDiffEq


def _decay(dtype=torch.float64, f=None):
    return ODEProblem(f or (lambda t, y: -y), torch.ones(3, dtype=dtype), (0.0, 1.0))


# -- item 1: the torchdiffeq backend ---------------------------------------------------------------
def test_item1_torchdiffeq_reraises_errors_of_f():
    """An error raised by the user's f is the user's: it propagates unchanged, also with
    throw=False (it used to become UNSTABLE, 'state or vector field became NaN or Inf')."""

    def shape_bug(t, y):
        raise RuntimeError("shape mismatch in my model")

    def assert_bug(t, y):
        raise AssertionError("underflow in dt (my own assertion, not torchdiffeq's)")

    for throw in (True, False):
        with pytest.raises(RuntimeError, match="shape mismatch in my model"):
            solve(_decay(f=shape_bug), TorchDiffEq("dopri5"), throw=throw)
        with pytest.raises(AssertionError, match="my own assertion"):
            solve(_decay(f=assert_bug), TorchDiffEq("dopri5"), throw=throw)

    def recurse(t, y):
        return recurse(t, y)

    with pytest.raises(RecursionError):
        solve(_decay(f=recurse), TorchDiffEq("rk4"), dt=0.1, throw=False)


def test_item1_torchdiffeq_own_failures_are_return_codes():
    """torchdiffeq's own failures still become return codes."""
    p = _decay()
    sol = solve(p, TorchDiffEq("dopri5"), options={"max_num_steps": 2}, throw=False)
    assert sol.retcode is ReturnCode.MAX_STEPS
    with pytest.raises(SolverError, match="MAX_STEPS.*max_num_steps exceeded"):
        solve(p, TorchDiffEq("dopri5"), options={"max_num_steps": 2})
    # A first step below the float64 resolution of t = 1: torchdiffeq's "underflow in dt".
    late = ODEProblem(lambda t, y: -y, torch.ones(3, dtype=torch.float64), (1.0, 2.0))
    sol = solve(late, TorchDiffEq("dopri5"), options={"first_step": 1e-300}, throw=False)
    assert sol.retcode is ReturnCode.DT_MIN
    with pytest.raises(SolverError, match="DT_MIN.*underflow in dt"):
        solve(late, TorchDiffEq("dopri5"), options={"first_step": 1e-300})


def test_item1_torchdiffeq_counts_steps():
    """naccept/nreject are counted (they used to read 0), for adaptive and fixed-grid methods."""
    p = ODEProblem(lambda t, y: torch.stack([y[..., 1], -y[..., 0]], -1),
                   torch.tensor([1.0, 0.0], dtype=torch.float64), (0.0, 3.0))
    sol = solve(p, TorchDiffEq("dopri5"), rtol=1e-5, atol=1e-8)
    assert sol.stats.naccept > 5
    # dopri5 is FSAL: 6 new evaluations per attempted step, plus the first f and Hairer's probe.
    assert sol.stats.nfe == 6 * sol.stats.nsteps + 2
    tight = solve(p, TorchDiffEq("dopri5"), rtol=1e-8, atol=1e-10)
    assert tight.stats.naccept > sol.stats.naccept
    # A rejection: a first step far too large for the tolerance.
    rej = solve(p, TorchDiffEq("dopri5"), rtol=1e-8, atol=1e-10, options={"first_step": 2.0})
    assert rej.stats.nreject >= 1 and rej.stats.nfe == 6 * rej.stats.nsteps + 1
    fixed = solve(p, TorchDiffEq("rk4"), dt=0.25)
    assert (fixed.stats.naccept, fixed.stats.nreject) == (12, 0)
    assert fixed.stats.nfe == 4 * 12


def test_item1_torchdiffeq_refuses_dt_for_adaptive_methods():
    """dt= has no effect on an adaptive torchdiffeq method: refused, naming dt (it used to be
    forwarded and ignored with a warning)."""
    with pytest.raises(ValueError, match="dt=.*no effect.*'dopri5'"):
        solve(_decay(), TorchDiffEq("dopri5"), dt=0.1)
    with pytest.raises(ValueError, match="step_size"):
        solve(_decay(), TorchDiffEq("bosh3"), options={"step_size": 0.1})
    with pytest.raises(ValueError, match="unknown torchdiffeq method 'dopri6'"):
        TorchDiffEq("dopri6")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(_decay(), TorchDiffEq("rk4"), dt=0.1)   # a fixed-grid method takes dt, no warning


# -- item 2: dtypes that cannot meet the tolerances --------------------------------------------------
@pytest.mark.parametrize("make_alg", [Tsit5, lambda: TorchDiffEq("dopri5")], ids=["Tsit5", "TorchDiffEq"])
def test_item2_precision_refused_or_warned_before_work(make_alg):
    calls = []

    def f(t, y):
        calls.append(1)
        return -y

    # float16: the default atol 1e-9 rounds to zero; bfloat16: rtol 1e-6 is finer than its eps.
    with pytest.raises(ValueError, match="atol = 1e-09.*float16"):
        solve(_decay(torch.float16, f), make_alg())
    with pytest.raises(ValueError, match="bfloat16's machine epsilon 0.00781"):
        solve(_decay(torch.bfloat16, f), make_alg())
    # float32 with rtol 1e-10: 91,196 NFE to reach 6e-6 error before; now refused.
    with pytest.raises(ValueError, match="float32's machine epsilon 1.19e-07"):
        solve(_decay(torch.float32, f), make_alg(), rtol=1e-10, atol=1e-12)
    # atol that underflows relative to the state's scale, with rtol = 0.
    big = ODEProblem(f, torch.full((3,), 1e4), (0.0, 1.0))
    with pytest.raises(ValueError, match="max\\|y0\\| = 1e\\+04"):
        solve(big, make_alg(), rtol=0.0, atol=1e-6)
    assert not calls   # nothing was evaluated
    with pytest.warns(UserWarning, match="float32's machine epsilon 1.19e-07"):
        solve(_decay(torch.float32, f), make_alg(), rtol=5e-7, atol=1e-9)
    with warnings.catch_warnings():   # the defaults are fine for float32, looser ones for float16
        warnings.simplefilter("error")
        solve(_decay(torch.float32, f), make_alg())
        solve(_decay(torch.float16, f), make_alg(), rtol=1e-2, atol=1e-3)
        solve(_decay(torch.float16, f), Tsit5(), dt=0.1)   # fixed steps: tolerances unused


def test_item2_readme_example_does_not_warn():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Ten lines\s*```python\n(.*?)```", readme, re.S).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        exec(compile(block, "README.md", "exec"), {})
    assert "float64" in block


# -- item 5: bad arguments named before work ---------------------------------------------------------
def test_item5_tolerance_types():
    for bad in ("1e-6", True, 1e-6 + 0j, [1e-6]):
        with pytest.raises(TypeError, match="rtol must be a real number"):
            solve(_decay(), Tsit5(), rtol=bad)
        with pytest.raises(TypeError, match="atol must be a real number"):
            solve(_decay(), TorchDiffEq("dopri5"), atol=bad)
    import numpy as np

    sol = solve(_decay(), Tsit5(), rtol=np.float64(1e-6), atol=torch.tensor(1e-9))
    assert sol.retcode is ReturnCode.SUCCESS


def test_item5_label_out_of_range_named_before_training():
    """A label >= num_classes used to fail inside the first batch with torch's IndexError."""
    from nde.datasets import TimeSeriesDataset
    from nde.stable_sde import build_model
    from nde.training import TrainConfig, fit

    torch.manual_seed(0)
    t = torch.linspace(0, 1, 8, dtype=torch.float64)
    x = torch.randn(6, 8, 2)
    good = TimeSeriesDataset("toy", x, torch.tensor([0, 1, 0, 1, 0, 1]), t, ("a", "b"))
    bad = TimeSeriesDataset("toy", x, torch.tensor([0, 1, 2, 1, 0, 1]), t, ("a", "b", "c"))
    model = build_model("lsde", 2, 2, hidden_dim=4, width=4)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, batch_size=6, progress=False)
    with pytest.raises(ValueError, match=r"train.y holds labels in \[0, 2\].*num_classes = 2.*\[0, 1\]"):
        fit(model, bad, good, cfg)
    with pytest.raises(ValueError, match=r"val.y holds labels in \[0, 2\]"):
        fit(model, good, bad, cfg)
    neg = TimeSeriesDataset("toy", x, torch.tensor([0, 1, -1, 1, 0, 1]), t, ("a", "b"))
    with pytest.raises(ValueError, match="labels in \\[-1, 1\\]"):
        fit(model, neg, good, cfg)
    floats = TimeSeriesDataset("toy", x, torch.tensor([0.0, 1, 0, 1, 0, 1]), t, ("a", "b"))
    with pytest.raises(TypeError, match="integer class labels"):
        fit(model, floats, good, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))   # nothing trained


def test_item5_convection_names_beta():
    from pinn.problem import burgers_moving_shock, convection, convection_diffusion

    with pytest.raises(TypeError, match="beta must be a real number.*'fast'"):
        convection("fast")
    with pytest.raises(TypeError, match="nu must be a real number"):
        convection_diffusion(1.0, "0.1")
    with pytest.raises(TypeError, match="C must be a real number"):
        burgers_moving_shock(C="1")
    assert convection(2).params["beta"] == 2.0


def test_item5_vector_field_arity_named_when_the_problem_is_built():
    from solvers import IntegralProblem, SDEProblem

    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"f must be callable as f\(t, y\), but <lambda>\(y\)"):
        ODEProblem(lambda y: -y, y0, (0.0, 1.0))

    class Field(torch.nn.Module):
        def forward(self, y):
            return -y

    with pytest.raises(TypeError, match=r"f\(t, y\).*Field\(y\)"):
        ODEProblem(Field(), y0, (0.0, 1.0))
    with pytest.raises(TypeError, match=r"g \(diffusion\) must be callable as g\(t, y\)"):
        SDEProblem(lambda t, y: -y, lambda y: y, y0, (0.0, 1.0))
    with pytest.raises(TypeError, match=r"analytic must be callable as analytic\(t\)"):
        ODEProblem(lambda t, y: -y, y0, (0.0, 1.0), analytic=lambda t, y: y)
    with pytest.raises(TypeError, match=r"f must be callable as f\(x\)"):
        IntegralProblem(lambda x, y: x, (0.0, 1.0))
    # What binds is accepted: defaults, *args, keyword-only extras, builtins without a signature.
    ODEProblem(lambda t, y, k=2.0: -k * y, y0, (0.0, 1.0))
    ODEProblem(lambda *args: -args[1], y0, (0.0, 1.0))
    ODEProblem(lambda t, y, *, k=1.0: -k * y, y0, (0.0, 1.0))
    ODEProblem(torch.nn.Bilinear(2, 2, 2).double(), y0, (0.0, 1.0))


# -- item 3: a PINN judges its own answer ------------------------------------------------------------
def test_item3_pinn_far_from_its_reference_is_not_converged():
    """Krishnapriyan et al.'s failure case with a deliberately tiny budget: rel L2 ~ 1 used to read
    SUCCESS."""
    from pinn import PINN, LagrangianPINN, convection

    p = convection(30.0)
    kw = dict(hidden=(8,), n_x=16, n_t=8, adam_iters=3, lbfgs_iters=0, seed=0)
    for alg in (PINN(**kw), LagrangianPINN(n_lagrangian=16, **kw)):
        sol = solve(p, alg, progress=False)
        assert sol.stats.rel_l2 > 0.1
        assert sol.retcode is ReturnCode.NOT_CONVERGED and not sol.success
        assert f"{sol.stats.rel_l2:.3e} > rel_l2_tol 0.1" in sol.message
    # the same training judged against a looser threshold, or not judged, succeeds
    loose = solve(p, PINN(rel_l2_tol=10.0, **kw), progress=False)
    assert loose.retcode is ReturnCode.SUCCESS and loose.message == ReturnCode.SUCCESS.message
    # a requested loss tolerance that the training did not reach
    sol = solve(p, PINN(rel_l2_tol=None, loss_tol=1e-9, **kw), progress=False)
    assert sol.retcode is ReturnCode.NOT_CONVERGED
    assert f"final loss {sol.stats.final_loss:.3e} > loss_tol 1e-09" in sol.message
    with pytest.raises(TypeError, match="rel_l2_tol must be a real number"):
        PINN(rel_l2_tol="0.1")
    with pytest.raises(ValueError, match="loss_tol must be finite and >= 0"):
        PINN(loss_tol=-1.0)
