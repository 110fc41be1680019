"""dtype/device preservation, batching, bad input and failure reporting."""

import math

import pytest
import torch

from solvers import (
    RK4,
    Dopri5,
    Euler,
    ODEProblem,
    PIController,
    ReturnCode,
    SolverError,
    Tsit5,
    solve,
)


def _decay(dtype=torch.float64, shape=(3,)):
    return ODEProblem(lambda t, y: -y, torch.ones(shape, dtype=dtype), (0.0, 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", [Tsit5, Dopri5])
def test_dtype_is_preserved_and_time_is_float64(dtype, method):
    sol = solve(_decay(dtype), method(), rtol=1e-5, atol=1e-7, trace=True)
    assert sol.ys.dtype == dtype and sol(0.5).dtype == dtype
    assert sol.ts.dtype == torch.float64 and sol.trace.t.dtype == torch.float64
    assert sol.trace.error_estimate.dtype == dtype
    assert abs(float(sol.ys[-1, 0]) - math.exp(-1)) < 2e-5


def test_batched_states_share_one_step():
    rates = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    p = ODEProblem(lambda t, y: -rates * y, torch.ones(3, 1, dtype=torch.float64), (0.0, 1.0))
    sol = solve(p, Tsit5(), rtol=1e-9, atol=1e-11)
    assert sol.ys.shape == (len(sol.ts), 3, 1)
    torch.testing.assert_close(sol.ys[-1, :, 0], torch.exp(-rates[:, 0]), rtol=1e-7, atol=1e-9)


def test_time_passed_to_f_is_float64_tensor():
    seen = []

    def f(t, y):
        seen.append((t.dtype, t.dim()))
        return -y

    solve(ODEProblem(f, torch.ones(2, dtype=torch.float32), (0.0, 1.0)), Tsit5())
    assert set(seen) == {(torch.float64, 0)}


@pytest.mark.gpu
def test_runs_on_cuda():
    p = ODEProblem(lambda t, y: -y, torch.ones(4, 2, device="cuda"), (0.0, 1.0))
    sol = solve(p, Tsit5(), rtol=1e-5, atol=1e-7, trace=True)
    assert sol.ys.device.type == "cuda" and sol(0.3).device.type == "cuda"
    assert sol.trace.error_estimate.device.type == "cuda"


@pytest.mark.parametrize("y0, msg", [
    (torch.tensor([1.0, float("nan")]), "NaN"),
    (torch.tensor([float("inf")]), "Inf"),
    (torch.tensor(1.0), "at least one dimension"),
    (torch.tensor([1, 2]), "floating"),
    (torch.zeros(0), "empty"),
])
def test_bad_initial_state(y0, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        ODEProblem(lambda t, y: y, y0, (0.0, 1.0))


@pytest.mark.parametrize("tspan, msg", [((1.0, 1.0), "zero length"), ((0.0, float("nan")), "finite"),
                                        ((0.0,), "pair")])
def test_bad_tspan(tspan, msg):
    with pytest.raises(ValueError, match=msg):
        ODEProblem(lambda t, y: y, torch.ones(1), tspan)


@pytest.mark.parametrize("options, exc, msg", [
    (dict(rtol=-1e-3), ValueError, "rtol"),
    (dict(atol=float("nan")), ValueError, "atol"),
    (dict(rtol=0, atol=0), ValueError, "both be zero"),
    (dict(rtoll=1e-3), TypeError, "unknown option"),
    (dict(dt=-0.1), ValueError, "dt must be"),
    (dict(dt0=0.0), ValueError, "dt0 must be"),
    (dict(saveat=[0.5, 2.0]), ValueError, "inside tspan"),
    (dict(saveat=[0.5, 0.2]), ValueError, "ordered"),
    (dict(saveat=[]), ValueError, "empty"),
    (dict(max_steps=0), ValueError, "max_steps"),
    (dict(dt=0.1, controller=PIController()), ValueError, "fixed steps"),
])
def test_bad_options(options, exc, msg):
    with pytest.raises(exc, match=msg):
        solve(_decay(), Tsit5(), **options)


def test_fixed_step_methods_need_dt():
    with pytest.raises(ValueError, match="no error estimator"):
        solve(_decay(), RK4())


def test_bad_vector_field_output():
    with pytest.raises(ValueError, match="shape"):
        solve(ODEProblem(lambda t, y: y[:1], torch.ones(2), (0.0, 1.0)), Tsit5())
    with pytest.raises(ValueError, match="NaN"):
        solve(ODEProblem(lambda t, y: y * float("nan"), torch.ones(2), (0.0, 1.0)), Tsit5())
    with pytest.raises(ValueError, match="dtype"):
        solve(ODEProblem(lambda t, y: y.double(), torch.ones(2), (0.0, 1.0)), Tsit5())


def test_wrong_algorithm_or_problem_type():
    with pytest.raises(TypeError, match="instance"):
        solve(_decay(), Tsit5)
    with pytest.raises(TypeError, match="solves ODEProblem"):
        solve("not a problem", Tsit5())


def test_max_steps_raises_with_time_and_dt():
    with pytest.raises(SolverError) as info:
        solve(_decay(), Tsit5(), rtol=1e-12, atol=1e-14, max_steps=3)
    err = info.value
    assert err.retcode is ReturnCode.MAX_STEPS and 0 < err.t < 1 and err.dt > 0
    assert "Reached t =" in str(err) and "dt =" in str(err)


def test_max_steps_as_value():
    sol = solve(_decay(), Tsit5(), rtol=1e-12, atol=1e-14, max_steps=3, throw=False)
    assert sol.retcode is ReturnCode.MAX_STEPS and not sol.success
    assert sol.stats.nsteps == 3 and sol.t_final < 1.0 and len(sol.ts) == sol.stats.naccept + 1
    assert "maximum number of steps" in sol.retcode.message


def test_blow_up_gives_dt_min_or_unstable():
    # y' = y^2, y(0) = 1 has a pole at t = 1.
    p = ODEProblem(lambda t, y: y**2, torch.ones(1, dtype=torch.float64), (0.0, 2.0))
    sol = solve(p, Tsit5(), rtol=1e-6, atol=1e-8, throw=False)
    assert sol.retcode in (ReturnCode.DT_MIN, ReturnCode.UNSTABLE)
    assert 0.99 < sol.t_final < 1.01
    with pytest.raises(SolverError, match="t = 0.99|t = 1"):
        solve(p, Tsit5(), rtol=1e-6, atol=1e-8)


def test_dtmin_is_respected():
    p = ODEProblem(lambda t, y: -50 * y, torch.ones(1, dtype=torch.float64), (0.0, 1.0))
    sol = solve(p, Tsit5(), rtol=1e-10, atol=1e-12, dtmin=0.1, dt0=0.5, throw=False)
    assert sol.retcode is ReturnCode.DT_MIN


def test_fixed_step_blow_up_is_reported():
    p = ODEProblem(lambda t, y: y**2, torch.ones(1, dtype=torch.float64), (0.0, 3.0))
    sol = solve(p, Euler(), dt=0.1, throw=False)
    assert sol.retcode is ReturnCode.UNSTABLE
    with pytest.raises(SolverError, match="UNSTABLE"):
        solve(p, Euler(), dt=0.1)


def test_fixed_steps_land_on_the_end():
    sol = solve(_decay(), RK4(), dt=0.3)
    assert sol.stats.naccept == 4 and sol.ts[-1] == 1.0
    assert torch.allclose(sol.ts, torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0], dtype=torch.float64))


def test_dense_output_outside_span_and_disabled():
    sol = solve(_decay(), Tsit5())
    with pytest.raises(ValueError, match="outside"):
        sol(1.5)
    sol = solve(_decay(), Tsit5(), dense=False)
    with pytest.raises(ValueError, match="dense"):
        sol(0.5)
