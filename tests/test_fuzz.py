"""Property-based fuzzing of the public entry points (issue 16, item 11).

The contract every case checks: a solve either succeeds with a finite result of the right shape
and dtype, or fails with ``ValueError`` / ``TypeError`` / ``SolverError`` (with ``throw=False``: a
non-success ``retcode``) before heavy work. Never NaN with ``SUCCESS``, never an internal
``IndexError``/``RuntimeError``, never a hang (sizes and ``max_steps`` are bounded).

Two hypothesis profiles: ``fast`` (the default, ~25 examples per test, for ``make test``) and the
same tests under ``-m slow`` with 300 examples (``make test-all``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers import (
    RK4,
    Bosh3,
    Dopri5,
    Euler,
    IntegralProblem,
    LinearProblem,
    ODEProblem,
    ReturnCode,
    SDEProblem,
    SolverError,
    Tsit5,
    Vern6,
    Vern7,
    Verner65,
    solve,
)
from solvers.linear import CG
from solvers.sde import EulerMaruyama, LambaEM

settings.register_profile("fast", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
FAST = settings.get_profile("fast")
LONG = settings.get_profile("long")

CLEAN = (ValueError, TypeError, SolverError)
RK_METHODS = (Euler, Bosh3, RK4, Dopri5, Tsit5, Verner65, Vern6, Vern7)
BAD_TOLS = (-1e-6, 0.0, float("nan"), float("inf"), "1e-6", None, [1e-6], True)


def _both(test):
    """The test twice: the fast profile (default run) and the long one under ``-m slow``."""
    fast = settings(FAST)(given_strategies[test.__name__](test))
    long = pytest.mark.slow(settings(LONG)(given_strategies[test.__name__](test)))
    return fast, long


given_strategies: dict = {}


def fuzz(**strategies):
    def wrap(fn):
        given_strategies[fn.__name__] = given(**strategies)
        return fn
    return wrap


def assert_clean_or_finite(run, shape=None, dtype=None):
    """``run()`` raises a clean error, or returns a solution whose result is finite."""
    try:
        sol = run()
    except CLEAN:
        return None
    if hasattr(sol, "retcode") and sol.retcode is not ReturnCode.SUCCESS:
        return sol
    ys = getattr(sol, "ys", None)
    if ys is None:
        ys = getattr(sol, "x", None) if getattr(sol, "x", None) is not None else sol.mean
    assert torch.isfinite(torch.as_tensor(ys)).all(), "non-finite result reported as SUCCESS"
    if shape is not None:
        assert tuple(ys.shape[-len(shape):]) == tuple(shape), (ys.shape, shape)
    if dtype is not None:
        assert ys.dtype == dtype
    return sol


# -- ODEs ---------------------------------------------------------------------------------------------
shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64])
spans = st.tuples(st.floats(-5, 5), st.floats(-5, 5)) | st.sampled_from([(0.0, 0.0), (1.0, 1.0)])


@fuzz(method=st.sampled_from(RK_METHODS), shape=shapes, dtype=dtypes, span=spans,
      rate=st.floats(-3, 1), fixed=st.booleans(), throw=st.booleans())
def _ode_random(method, shape, dtype, span, rate, fixed, throw):
    y0 = torch.linspace(-1, 1, math.prod(shape), dtype=dtype).reshape(shape) + 0.5

    def make():
        prob = ODEProblem(lambda t, y: rate * y + torch.sin(t).to(y.dtype), y0, span)
        opts = dict(max_steps=2000, throw=throw)
        if fixed:
            opts["dt"] = 0.05
        else:
            opts.update(rtol=1e-4, atol=1e-6)
        return solve(prob, method(), **opts)

    assert_clean_or_finite(make, shape=shape, dtype=dtype)


@fuzz(method=st.sampled_from(RK_METHODS), bad=st.sampled_from(["nan", "inf", "-inf"]),
      where=st.sampled_from(["y0", "tspan0", "tspan1", "dt"]))
def _ode_nonfinite_inputs_are_refused(method, bad, where):
    val = float(bad)
    y0 = torch.ones(2, dtype=torch.float64)
    span, opts = (0.0, 1.0), {}
    if where == "y0":
        y0 = y0.clone()
        y0[1] = val
    elif where == "tspan0":
        span = (val, 1.0)
    elif where == "tspan1":
        span = (0.0, val)
    else:
        opts["dt"] = val
    with pytest.raises(CLEAN):
        solve(ODEProblem(lambda t, y: -y, y0, span), method(), max_steps=100, **opts)


@fuzz(method=st.sampled_from(RK_METHODS), which=st.sampled_from(["rtol", "atol"]),
      bad=st.sampled_from(BAD_TOLS))
def _ode_bad_tolerances_are_refused(method, which, bad):
    prob = ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    if bad == 0.0:
        return  # one zero tolerance is valid (pure relative / pure absolute control)
    with pytest.raises(CLEAN):
        solve(prob, method(), max_steps=100, **{which: bad})


@fuzz(method=st.sampled_from(RK_METHODS), t_bad=st.floats(0.05, 0.9), kind=st.sampled_from(["nan", "inf"]),
      fixed=st.booleans())
def _ode_field_turning_nonfinite_mid_solve(method, t_bad, kind, fixed):
    """A field that returns NaN/Inf after some time: never SUCCESS with a non-finite state."""
    val = float(kind)

    def f(t, y):
        out = -y
        return out * val if float(t) > t_bad else out

    prob = ODEProblem(f, torch.ones(3, dtype=torch.float64), (0.0, 1.0))
    opts = dict(dt=0.01) if fixed else dict(rtol=1e-5, atol=1e-8)
    sol = assert_clean_or_finite(lambda: solve(prob, method(), max_steps=5000, throw=False, **opts))
    if sol is not None:
        assert sol.retcode is not ReturnCode.SUCCESS or torch.isfinite(sol.ys).all()


BAD_OPTIONS = [
    dict(max_steps=0), dict(max_steps=-1), dict(max_steps=1.5),
    dict(dt=0.0), dict(dt=-0.1), dict(dt=10.0),
    dict(saveat=[2.0]), dict(saveat=[0.5, 0.2]), dict(saveat=[float("nan")]), dict(saveat="0.5"),
    dict(saveat=[]), dict(dtmin=-1.0), dict(dtmax=0.0), dict(dt0=-0.1), dict(dt0=float("nan")),
    dict(not_an_option=1), dict(controller="pi"),
]
BAD_FIELDS = {
    "wrong_shape": lambda t, y: y[..., :1],
    "wrong_dtype": lambda t, y: (-y).to(torch.float16),
    "not_a_tensor": lambda t, y: None,
    "numpy": lambda t, y: (-y).numpy(),
    "scalar": lambda t, y: torch.tensor(1.0, dtype=y.dtype),
}


@fuzz(method=st.sampled_from(RK_METHODS), opts=st.sampled_from(BAD_OPTIONS), dtype=dtypes)
def _ode_bad_options(method, opts, dtype):
    prob = ODEProblem(lambda t, y: -y, torch.ones(2, dtype=dtype), (0.0, 1.0))
    sol = assert_clean_or_finite(lambda: solve(prob, method(), **{"max_steps": 500, **opts}), dtype=dtype)
    # dt larger than the span is a valid one-step solve; an empty saveat is refused or saves nothing
    if sol is not None and sol.retcode is ReturnCode.SUCCESS:
        assert opts.get("dt") == 10.0 or opts.get("saveat") == [], opts


@fuzz(method=st.sampled_from(RK_METHODS), field=st.sampled_from(sorted(BAD_FIELDS)),
      y0=st.sampled_from(["ok", "int", "0-d", "empty", "float16", "complex"]))
def _ode_bad_fields_and_states(method, field, y0):
    y = {"ok": torch.ones(2, dtype=torch.float64), "int": torch.ones(2, dtype=torch.int64),
         "0-d": torch.tensor(1.0, dtype=torch.float64), "empty": torch.ones(0, dtype=torch.float64),
         "float16": torch.ones(2, dtype=torch.float16), "complex": torch.ones(2, dtype=torch.complex128)}[y0]
    sol = assert_clean_or_finite(lambda: solve(ODEProblem(BAD_FIELDS[field], y, (0.0, 1.0)), method(),
                                               max_steps=200, throw=False))
    assert sol is None or sol.retcode is not ReturnCode.SUCCESS, (field, y0)


# Found by this module, then fixed: dt='0.1' and max_steps='10' were converted silently, and NeuralODE
# checked its tolerances only at the first forward.
def test_string_dt_is_refused():
    prob = ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises(TypeError):
        solve(prob, Euler(), dt="0.1")


def test_string_max_steps_is_refused():
    prob = ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    with pytest.raises((TypeError, ValueError)):
        solve(prob, Tsit5(), max_steps="10")


def test_neural_ode_refuses_a_negative_tolerance_when_built():
    from nde import NeuralODE

    field = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="rtol"):
        NeuralODE(lambda t, y: field(y), rtol=-1e-6, atol=1e-6)


# -- SDEs -----------------------------------------------------------------------------------------------
@fuzz(method=st.sampled_from([EulerMaruyama, LambaEM]), batch=st.integers(1, 4), d=st.integers(1, 3),
      dtype=dtypes, sigma=st.floats(0, 2), span_end=st.floats(-1, 2), fixed=st.booleans(),
      seed=st.integers(0, 2**16))
def _sde_random(method, batch, d, dtype, sigma, span_end, fixed, seed):
    y0 = torch.ones(batch, d, dtype=dtype)

    def make():
        prob = SDEProblem(lambda t, y: -y, lambda t, y: sigma * torch.ones_like(y), y0, (0.0, span_end))
        opts = dict(seed=seed, max_steps=5000)
        if fixed or method is EulerMaruyama:
            opts["dt"] = 0.01
        return solve(prob, method(), **opts)

    assert_clean_or_finite(make, shape=(batch, d), dtype=dtype)


@fuzz(method=st.sampled_from([EulerMaruyama, LambaEM]), which=st.sampled_from(["y0", "g", "rtol"]),
      bad=st.sampled_from(["nan", "inf"]))
def _sde_nonfinite_inputs(method, which, bad):
    val = float(bad)
    y0 = torch.ones(2, dtype=torch.float64)
    def g(t, y):
        return torch.ones_like(y)

    opts = dict(seed=0, max_steps=1000, dt=0.01) if method is EulerMaruyama else dict(seed=0, max_steps=1000)
    if which == "y0":
        y0 = torch.tensor([1.0, val], dtype=torch.float64)
    elif which == "g":
        def g(t, y):
            return torch.full_like(y, val)
    else:
        opts["rtol"] = val
    sol = assert_clean_or_finite(lambda: solve(SDEProblem(lambda t, y: -y, g, y0, (0.0, 1.0)), method(),
                                               **opts))
    assert sol is None or sol.retcode is not ReturnCode.SUCCESS


# -- linear systems ------------------------------------------------------------------------------------------
@fuzz(n=st.integers(1, 12), kind=st.sampled_from(["spd", "indefinite", "nonsymmetric", "nan_b", "empty",
                                                   "shape"]),
      dtype=dtypes, seed=st.integers(0, 2**16))
def _cg_random(n, kind, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = m @ m.T + n * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    if kind == "indefinite":
        A = A - 3 * n * torch.eye(n, dtype=torch.float64) if n > 1 else -A
    elif kind == "nonsymmetric" and n > 1:
        A = A + torch.triu(torch.ones(n, n, dtype=torch.float64), 1)
    elif kind == "nan_b":
        b[0] = float("nan")
    elif kind == "empty":
        A, b = torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    elif kind == "shape":
        b = torch.ones(n + 1, dtype=torch.float64)
    A, b = A.to(dtype), b.to(dtype)
    sol = assert_clean_or_finite(lambda: solve(LinearProblem(A, b), CG(), maxiter=10 * max(n, 1)))
    if sol is not None and kind == "spd" and sol.retcode is ReturnCode.SUCCESS:
        res = torch.linalg.vector_norm(A.double() @ sol.x.double() - b.double())
        assert res <= 1e-3 * max(1.0, float(torch.linalg.vector_norm(b.double())))


# -- integrals ----------------------------------------------------------------------------------------------
@fuzz(a=st.floats(-3, 3), width=st.floats(-1, 3), n=st.integers(-2, 20),
      rule=st.sampled_from(["Trapezoid", "Simpson", "GaussLegendre"]),
      integrand=st.sampled_from(["exp", "nan", "inf_at_0", "batch"]))
def _quadrature_random(a, width, n, rule, integrand):
    import quadrature

    f = {"exp": torch.exp, "nan": lambda x: x * float("nan"),
         "inf_at_0": lambda x: 1 / (x - x.min()), "batch": lambda x: torch.stack([x, x**2])}[integrand]

    def make():
        return solve(IntegralProblem(f, (a, a + width)), getattr(quadrature, rule)(n=n))

    sol = assert_clean_or_finite(make)
    if sol is not None and integrand == "exp" and n >= 10 and sol.retcode is ReturnCode.SUCCESS:
        exact = math.exp(a + width) - math.exp(a)
        assert abs(float(sol.mean) - exact) <= 1e-2 * max(1.0, abs(exact))


# -- constructors of nde / pinn / quadrature objects ---------------------------------------------------------
@fuzz(rtol=st.sampled_from(BAD_TOLS + (1e-4,)), tspan=st.sampled_from([(0.0, 1.0), (1.0, 1.0),
                                                                         (0.0, float("nan")), "x"]))
def _neural_ode_constructor(rtol, tspan):
    from nde import NeuralODE

    field = torch.nn.Linear(2, 2)
    try:
        model = NeuralODE(lambda t, y: field(y), rtol=rtol, atol=1e-6, tspan=tspan)
    except CLEAN:
        return
    try:
        out = model(torch.ones(3, 2))
    except CLEAN:
        return  # refused at the first call, before any step
    assert torch.isfinite(out).all()


@fuzz(nu=st.sampled_from([0.5, 1.5, 2.5, -1.0, 0.0, float("nan"), "2.5"]),
      lengthscale=st.sampled_from([0.5, 0.0, -1.0, float("inf"), float("nan")]), n=st.integers(-1, 8))
def _bayesian_quadrature_constructor(nu, lengthscale, n):
    from quadrature import BayesianQuadrature, Matern

    def make():
        return solve(IntegralProblem(torch.exp, (0.0, 1.0)),
                     BayesianQuadrature(kernel=Matern(nu=nu, lengthscale=lengthscale), n=n))

    sol = assert_clean_or_finite(make)
    if sol is not None and sol.retcode is ReturnCode.SUCCESS:
        assert math.isfinite(float(sol.variance)) and float(sol.variance) >= 0


for _name in list(given_strategies):
    _fast, _long = _both(globals()[_name])
    globals()[f"test{_name}"] = _fast
    globals()[f"test{_name}_long"] = _long
