"""Reference problems with exact solutions derived and verified in SymPy."""

from ..symbolic import lambdify_torch, to_torch
from .builder import ReferenceError, ode_from_sympy
from .detest import detest_problem, detest_problems
from .ode_problems import NONSTIFF, PROBLEMS, problem

__all__ = ["ode_from_sympy", "lambdify_torch", "to_torch", "ReferenceError", "problem", "PROBLEMS",
           "NONSTIFF", "detest_problems", "detest_problem"]
