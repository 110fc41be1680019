"""Reference problems with exact solutions derived and verified in SymPy."""

from ..symbolic import lambdify_torch, to_torch
from .builder import ReferenceError, ode_from_sympy
from .detest import detest_problem, detest_problems
from .ode_problems import NONSTIFF, PROBLEMS, problem
from .stiff import (
    STIFF_ATOL,
    STIFF_PROBLEMS,
    TESTSET_REFERENCES,
    brusselator_2d,
    brusselator_jvp,
    stiff_jacobian,
    stiff_problem,
    stiff_reference,
    van_der_pol_batch,
)

__all__ = ["ode_from_sympy", "lambdify_torch", "to_torch", "ReferenceError", "problem", "PROBLEMS",
           "NONSTIFF", "detest_problems", "detest_problem",
           "STIFF_PROBLEMS", "STIFF_ATOL", "TESTSET_REFERENCES", "stiff_problem", "stiff_jacobian",
           "stiff_reference", "van_der_pol_batch", "brusselator_2d", "brusselator_jvp"]
