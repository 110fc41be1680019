"""The stepping layer: one protocol and one loop for ODE and SDE methods, controllers that own the
tolerances and the first step, and a module graph without import cycles."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from solvers import ODEProblem, ReturnCode, SolverError, init, solve
from solvers.ode import METHODS, Dopri5, Euler, Tsit5
from solvers.problem import SDEProblem
from solvers.sde import SRA1, EulerMaruyama, LambaEM, Milstein
from solvers.stepping import (
    DEFAULT_TOLERANCES,
    IController,
    Integrator,
    PIController,
    Stepper,
    StepResult,
    initial_step,
    step_grid,
)

F64 = torch.float64


def _decay(y0=None, span=(0.0, 2.0)):
    y0 = torch.tensor([1.0, -0.5], dtype=F64) if y0 is None else y0
    return ODEProblem(lambda t, y: -1.5 * y + torch.sin(t), y0, span)


def _gbm(span=(0.0, 1.0), noise="diagonal"):
    return SDEProblem(lambda t, y: -0.5 * y, lambda t, y: 0.3 * y, torch.ones(3, 2, dtype=F64), span)


def _ou():
    return SDEProblem(lambda t, y: -y, lambda t, y: 0.2 * torch.ones(4, 1, 1, dtype=F64),
                      torch.ones(4, 1, dtype=F64), (0.0, 1.0), noise="additive")


# -- one protocol ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [*METHODS, EulerMaruyama, Milstein, SRA1, LambaEM])
def test_every_method_is_a_stepper(method):
    alg = method()
    assert isinstance(alg, Stepper)
    assert alg.kind in DEFAULT_TOLERANCES
    assert alg.error_exponent > 0


@pytest.mark.parametrize("method", [Tsit5, Dopri5])
def test_step_by_hand_is_the_loops_step_bit_for_bit(method):
    """``Method().step`` and the loop call the same ``attempt``: the first accepted steps agree exactly."""
    p = _decay()
    sol = solve(p, method(), dt0=0.1, rtol=1e-6, atol=1e-9, trace=True)
    tr = sol.trace
    assert bool(tr.accepted[:3].all())
    y, f0 = p.y0, None
    for i in range(3):
        t, dt = float(tr.t[i]), float(tr.dt[i])
        res = method().step(p.f, t, y, dt, f0=f0, rtol=1e-6, atol=1e-9)
        assert torch.equal(res.error_estimate, tr.error_estimate[i])
        assert torch.equal(res.stiffness_estimate, tr.stiffness_estimate[i])
        y, f0 = res.y, res.k[-1]
        assert torch.equal(y, sol.ys[i + 1])


def test_sde_step_by_hand_is_the_loops_step_bit_for_bit():
    p = _gbm()
    sol = solve(p, Milstein(), dt=0.1, seed=3)
    dW = sol.brownian.dW
    y = p.y0
    for i in range(10):
        res = Milstein().step(p.f, p.g, 0.1 * i, y, sol.brownian.grid[i + 1] - sol.brownian.grid[i], dW[i])
        y = res.y
        assert isinstance(res, StepResult) and res.nge >= 1
    assert torch.equal(y, sol.ys[-1])


# -- one loop: init() for ODEs and SDEs ------------------------------------------------------------------
@pytest.mark.parametrize("case", ["ode", "sde_fixed", "sde_adaptive"])
def test_init_steps_by_hand_to_the_same_solution(case):
    if case == "ode":
        p, alg, opts = _decay(), Tsit5(), {}
    elif case == "sde_fixed":
        p, alg, opts = _gbm(), EulerMaruyama(), {"dt": 0.05, "seed": 1}
    else:
        p, alg, opts = _ou(), SRA1(), {"seed": 1, "rtol": 1e-3, "atol": 1e-4}
    ref = solve(p, alg, **opts)
    integ = init(p, alg, **opts)
    assert isinstance(integ, Integrator)
    n, last_t = 0, integ.t
    while integ.step():
        n += 1
        assert integ.t > last_t  # every call advances by one accepted step
        last_t = integ.t
    sol = integ.solution()
    assert sol.retcode is ReturnCode.SUCCESS and n + 1 == sol.stats.naccept
    assert torch.equal(sol.ys, ref.ys) and torch.equal(sol.ts, ref.ts)
    assert sol.stats.nfe == ref.stats.nfe
    assert not integ.step()  # a finished integrator stays finished


def test_sde_adaptive_lands_on_saveat_and_keeps_the_proposal():
    p = _ou()
    ts = [0.25, 0.5, 0.75, 1.0]
    sol = solve(p, SRA1(), saveat=ts, seed=0, trace=True)
    assert sol.ts.tolist() == ts
    # Steps clipped to land on a save time do not shrink the next proposal: far fewer steps than
    # save times would force if each landing reset the step.
    assert sol.stats.naccept >= len(ts)


def test_sde_partial_solution_on_max_steps():
    sol = solve(_ou(), SRA1(), rtol=1e-8, atol=1e-8, max_steps=4, throw=False, seed=0)
    assert sol.retcode is ReturnCode.MAX_STEPS and sol.stats.nsteps == 4 and sol.t_final < 1.0
    with pytest.raises(SolverError, match="MAX_STEPS.*Reached t = "):
        solve(_ou(), SRA1(), rtol=1e-8, atol=1e-8, max_steps=4, seed=0)


def test_fixed_step_solves_that_cannot_finish_are_refused_up_front():
    for p, alg in ((_decay(), Euler()), (_gbm(), EulerMaruyama())):
        with pytest.raises(ValueError, match="max_steps"):
            solve(p, alg, dt=1e-3, max_steps=10)


def test_step_grid_lands_on_stops_in_both_directions():
    g = step_grid(0.0, 1.0, 0.3, [0.5])
    assert g[:4] == [0.0, 0.3, 0.5, 0.6] and g[-1] == 1.0 and len(g) == 6
    b = step_grid(1.0, 0.0, 0.25)
    assert b[0] == 1.0 and b[-1] == 0.0 and len(b) == 5 and all(x > y for x, y in zip(b, b[1:]))
    # A stop within rounding of a grid point replaces it (saved times equal the requested ones).
    g = step_grid(0.0, 1.0, 0.1, [0.30000000000000004 - 1e-15])
    assert len(g) == 11


def test_nan_step_size_ends_at_once():
    """A NaN step size must end the solve immediately as UNSTABLE (float16 with the default atol used
    to run for 28 s to MAX_STEPS with dt = nan). That float16 case is now refused before any work
    (``check_precision``: the default atol rounds to zero in float16), so the NaN first step comes
    from a controller here."""
    import dataclasses
    import math

    from solvers.stepping.controllers import IController

    @dataclasses.dataclass(frozen=True)
    class NaNFirstStep(IController):
        def initial_step(self, *args, **kwargs):
            return math.nan, 0

    half = ODEProblem(lambda t, y: -y, torch.ones(3, dtype=torch.float16), (0.0, 1.0))
    with pytest.raises(ValueError, match="float16"):
        solve(half, Tsit5())
    p = ODEProblem(lambda t, y: -y, torch.ones(3), (0.0, 1.0))
    sol = solve(p, Tsit5(), controller=NaNFirstStep(), throw=False)
    assert sol.retcode is ReturnCode.UNSTABLE and sol.stats.nfe <= 3
    with pytest.raises(SolverError, match="UNSTABLE.*step size became nan"):
        solve(p, Tsit5(), controller=NaNFirstStep())


def test_events_are_refused_without_dense_output():
    from solvers.events import Event

    with pytest.raises(ValueError, match="dense output"):
        solve(_gbm(), EulerMaruyama(), dt=0.1, events=Event(lambda t, y: y.sum() - 10))


def test_sde_options_are_checked_by_the_loop():
    with pytest.raises(TypeError, match="unknown option.*'dense'"):
        solve(_gbm(), EulerMaruyama(), dt=0.1, dense=True)
    with pytest.raises(TypeError, match="unknown option.*'seed'"):
        solve(_decay(), Tsit5(), seed=0)


# -- controllers own the tolerances and the first step ---------------------------------------------------
def test_default_tolerances_come_from_the_table():
    p = _decay()
    rtol, atol = DEFAULT_TOLERANCES["ode"]
    a = solve(p, Tsit5(), trace=True)
    b = solve(p, Tsit5(), rtol=rtol, atol=atol, trace=True)
    assert torch.equal(a.ys, b.ys) and torch.equal(a.trace.error_estimate, b.trace.error_estimate)
    rtol, atol = DEFAULT_TOLERANCES["sde"]
    a = solve(_ou(), SRA1(), seed=0)
    b = solve(_ou(), SRA1(), seed=0, rtol=rtol, atol=atol)
    assert torch.equal(a.ys, b.ys)


def test_controller_tolerances_are_used_and_cannot_be_given_twice():
    p = _decay()
    a = solve(p, Tsit5(), controller=IController(rtol=1e-3, atol=1e-6))
    b = solve(p, Tsit5(), rtol=1e-3, atol=1e-6)
    assert torch.equal(a.ys, b.ys) and a.stats.nfe == b.stats.nfe
    assert a.stats.nfe < solve(p, Tsit5()).stats.nfe  # looser than the default: fewer evaluations
    a = solve(p, Tsit5(), controller=PIController(rtol=1e-4))
    assert a.success
    with pytest.raises(ValueError, match="rtol was passed both"):
        solve(p, Tsit5(), rtol=1e-3, controller=IController(rtol=1e-4))
    with pytest.raises(ValueError, match="rtol must be finite"):
        solve(p, Tsit5(), controller=IController(rtol=-1.0))


def test_the_controller_owns_the_first_step():
    class Cautious(IController):
        def initial_step(self, f, t0, y0, f0, direction, order, rtol, atol):
            return 1e-4, 0

    p = _decay()
    sol = solve(p, Tsit5(), controller=Cautious(), trace=True)
    assert float(sol.trace.dt[0]) == 1e-4
    default = solve(p, Tsit5(), trace=True)
    h, _ = initial_step(p.f, 0.0, p.y0, p.f(torch.zeros((), dtype=F64), p.y0), 1.0, 4, 1e-6, 1e-9)
    assert math.isclose(float(default.trace.dt[0]), h)


# -- one loop, no import cycles ----------------------------------------------------------------------
def _module_imports(root: Path, package: str) -> dict[str, set[str]]:
    """Module-level (not function-local) intra-package imports of every module under ``root``."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mod = ".".join(parts)
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith(package):
                    deps.add(target)
                    for alias in node.names:
                        deps.add(f"{target}.{alias.name}")
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith(package))
        graph[mod] = deps
    return {m: {d for d in ds if d in graph and d != m} for m, ds in graph.items()}


def test_no_import_cycles_between_solver_modules():
    """The old loops imported their methods and the methods imported the loops; not any more
    (packages' ``__init__`` re-exports are left out: they only gather names)."""
    root = Path(__file__).resolve().parents[1] / "solvers"
    graph = _module_imports(root, "solvers")
    def is_package(m: str) -> bool:
        return (root.parent / (m.replace(".", "/") + "/__init__.py")).exists()

    graph = {m: {d for d in ds if not is_package(d)} for m, ds in graph.items() if not is_package(m)}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_half_precision_first_step_does_not_overflow():
    """Hairer's norms of a float16 state overflowed (|f| / scale > 65504) and divided by zero; they
    are measured in float64 now, and the solve runs in float16."""
    p = ODEProblem(lambda t, y: -1000 * y, torch.full((3,), 30.0, dtype=torch.float16), (0.0, 0.01))
    sol = solve(p, Tsit5(), rtol=1e-2, atol=1e-3)
    assert sol.ys.dtype == torch.float16 and sol.success
    exact = 30 * math.exp(-10.0)
    assert abs(float(sol.y_final[0]) - exact) < 0.05 * 30
