"""The failure message of an explicit method on a stiff problem measures stiffness and names the stiff
methods; on a non-stiff problem it does not."""

import pytest
import torch

from solvers import ReturnCode, SolverError, Tsit5, solve
from solvers.ode import RK4, Dopri5
from solvers.reference import problem


@pytest.mark.parametrize("method", [Tsit5, Dopri5])
def test_max_steps_on_a_stiff_problem_names_the_stiff_methods(method):
    prob = problem("stiff_smooth")  # y' = -1000 (y - cos t) - sin t: explicit steps held at ~3/1000
    with pytest.raises(SolverError) as err:
        solve(prob, method(), rtol=1e-6, atol=1e-9, max_steps=200)
    msg = str(err.value)
    assert err.value.retcode is ReturnCode.MAX_STEPS
    assert "looks stiff" in msg and "Rodas5P()" in msg and "AutoSwitch" in msg
    # the measured eigenvalue is the problem's, -1000, within the estimate's accuracy
    lam = float(msg.split("|lambda| ~ ")[1].split(",")[0])
    assert 300 < lam < 3000


def test_max_steps_on_a_non_stiff_problem_says_nothing_about_stiffness():
    with pytest.raises(SolverError) as err:
        solve(problem("harmonic"), Tsit5(), rtol=1e-10, atol=1e-12, max_steps=5)
    assert err.value.retcode is ReturnCode.MAX_STEPS
    assert "stiff" not in str(err.value)


def test_the_hint_spends_no_evaluations_on_success_and_keeps_the_failure_state():
    prob = problem("stiff_smooth")
    sol = solve(prob, Tsit5(), max_steps=200, throw=False)
    assert sol.retcode is ReturnCode.MAX_STEPS
    assert sol.stats.naccept + sol.stats.nreject == 200
    ok = solve(prob.replace(tspan=(0.0, 0.001)), Tsit5())
    assert ok.retcode is ReturnCode.SUCCESS


def test_fixed_step_methods_are_not_given_a_hint_they_cannot_use():
    # a fixed-step solve never hits MAX_STEPS inside the loop (refused before work instead)
    with pytest.raises(ValueError, match="max_steps"):
        solve(problem("stiff_smooth"), RK4(), dt=1e-4, max_steps=10)


def test_hint_measures_in_float32_too():
    prob = problem("stiff_smooth", dtype=torch.float32)
    with pytest.raises(SolverError, match="looks stiff"):
        solve(prob, Tsit5(), rtol=1e-4, atol=1e-6, max_steps=200)
