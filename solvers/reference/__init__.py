"""Reference problems with exact solutions derived and verified in SymPy."""

from .builder import ReferenceError, lambdify_torch, ode_from_sympy
from .ode_problems import NONSTIFF, PROBLEMS, problem

__all__ = ["ode_from_sympy", "lambdify_torch", "ReferenceError", "problem", "PROBLEMS", "NONSTIFF"]
