"""Operators behind a ``LinearProblem``: one matvec interface for every form of ``A``.

``A`` may be a dense or sparse torch tensor, a scipy sparse matrix or a matvec callable. Krylov solvers
only need ``x -> A x``; preconditioners that factorise (IC(0), AMG) also need the matrix itself, which
``as_scipy`` provides when ``A`` is explicit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["LinearOperator", "as_operator", "as_scipy", "check_symmetric"]


class LinearOperator:
    """``x -> A x`` on torch tensors of the problem's dtype/device, with the matrix kept when explicit.

    Attributes:
        n: size of the (square) operator.
        matrix: the explicit matrix as given (torch or scipy) or ``None`` for a callable.
        nmatvec: number of products computed so far (the solvers' work counter).
    """

    def __init__(self, A: object, n: int, dtype: torch.dtype, device: torch.device):
        self.n = n
        self.dtype = dtype
        self.device = device
        self.nmatvec = 0
        self.matrix = None if (callable(A) and not isinstance(A, Tensor)) else A
        self._scipy: sp.csr_matrix | None = None
        if isinstance(A, Tensor):
            if A.layout == torch.sparse_coo:
                A = A.coalesce().to_sparse_csr()
            self._apply = _torch_apply(A.to(device=device, dtype=dtype))
        elif sp.issparse(A):
            csr = sp.csr_matrix(A)
            self._scipy = csr
            if device.type == "cpu":
                # scipy's CSR product is single-threaded and as fast as torch's on CPU; keep it.
                csr_t = csr.astype(np.float64 if dtype == torch.float64 else np.float32)
                self._apply = _scipy_apply(csr_t, dtype)
            else:
                t = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                            torch.from_numpy(csr.indices.astype(np.int64)),
                                            torch.from_numpy(csr.data), size=csr.shape)
                self._apply = _torch_apply(t.to(device=device, dtype=dtype))
        else:
            self._apply = A  # a matvec callable

    def __call__(self, x: Tensor) -> Tensor:
        self.nmatvec += 1
        return self._apply(x)

    def diagonal(self) -> Tensor | None:
        """The diagonal of ``A`` when explicit, else ``None``."""
        if self.matrix is None:
            return None
        if isinstance(self.matrix, Tensor):
            M = self.matrix
            if M.layout == torch.strided:
                return M.diagonal().to(device=self.device, dtype=self.dtype)
            C = (M.to_sparse_coo() if M.layout != torch.sparse_coo else M).coalesce()
            i, v = C.indices(), C.values()
            on = i[0] == i[1]
            d = torch.zeros(M.shape[0], dtype=v.dtype, device=v.device)
            d.index_add_(0, i[0][on], v[on])  # no densification: O(nnz)
            return d.to(device=self.device, dtype=self.dtype)
        return torch.as_tensor(np.asarray(self._scipy.diagonal()), dtype=self.dtype, device=self.device)


def _torch_apply(M: Tensor) -> Callable[[Tensor], Tensor]:
    if M.layout == torch.strided:
        return lambda x: M @ x
    return lambda x: (M @ x.unsqueeze(-1)).squeeze(-1)


def _scipy_apply(csr: sp.csr_matrix, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    def apply(x: Tensor) -> Tensor:
        y = csr @ x.detach().numpy()
        return torch.from_numpy(np.ascontiguousarray(y)).to(dtype)
    return apply


def as_operator(problem, dtype: torch.dtype | None = None) -> LinearOperator:
    """The problem's ``A`` as a ``LinearOperator`` acting on tensors like ``problem.b``."""
    b = problem.b
    return LinearOperator(problem.A, b.numel(), dtype or b.dtype, b.device)


def as_scipy(A: object) -> sp.csr_matrix | None:
    """``A`` as a scipy CSR matrix (float64) if explicit, else ``None``."""
    if sp.issparse(A):
        return sp.csr_matrix(A, dtype=np.float64)
    if isinstance(A, Tensor):
        M = A.detach().cpu()
        if M.layout == torch.strided:
            return sp.csr_matrix(M.double().numpy())
        M = M.to_sparse_coo().coalesce() if M.layout != torch.sparse_coo else M.coalesce()
        i = M.indices().numpy()
        return sp.csr_matrix((M.values().double().numpy(), (i[0], i[1])), shape=tuple(M.shape))
    return None


def check_symmetric(op: LinearOperator, rtol: float | None = None, seed: int = 0) -> None:
    """Raise ``ValueError`` if ``A`` is visibly non-symmetric.

    Exact for explicit matrices (``max |A - A^T| <= rtol max |A|``, O(nnz)); for a matvec callable a
    probe with two random vectors, ``|u^T A v - v^T A u| <= rtol ||u|| ||A v||`` (two products), which
    catches any non-symmetry with probability one in exact arithmetic.
    """
    eps = torch.finfo(op.dtype).eps
    rtol = rtol if rtol is not None else 100 * eps
    S = as_scipy(op.matrix) if op.matrix is not None else None
    if S is not None:
        scale = abs(S).max() if S.nnz else 0.0
        diff = abs(S - S.T).max() if S.nnz else 0.0
        if diff > rtol * max(scale, np.finfo(float).tiny):
            raise ValueError(f"A is not symmetric: max |A - A^T| = {diff:.3g} (max |A| = {scale:.3g}); "
                             "CG-type solvers need a symmetric positive (semi-)definite matrix")
        return
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(op.n, generator=g, dtype=op.dtype).to(op.device)
    v = torch.randn(op.n, generator=g, dtype=op.dtype).to(op.device)
    Av, Au = op(v), op(u)
    a, c = float(torch.dot(u, Av)), float(torch.dot(v, Au))
    bound = rtol * 10 * float(torch.linalg.vector_norm(u) * torch.linalg.vector_norm(Av) + 1e-300)
    if abs(a - c) > bound:
        raise ValueError(f"A is not symmetric: u^T A v = {a:.6g} but v^T A u = {c:.6g} for random u, v; "
                         "CG-type solvers need a symmetric positive (semi-)definite operator")
