"""The AID linear solves with a dense Jacobian: when forming ``∂_wΦ`` beats ``k`` separate products.

``FixedPoint(k)`` and ``ConjugateGradient(k)`` need ``k`` products ``∂_wΦᵀ v`` in sequence, each one
backward through the graph of ``Φ`` (``FixedPointLinearisation.jt``). On small problems a product
costs the autograd engine's per-call overhead (about 50–130 µs on this project's CPU machines),
not arithmetic. The Jacobian ``J = ∂_wΦ`` (``D × D`` per element, ``D`` the size of ``w``) costs
``D`` VJPs, but in one vmapped backward (matrix–matrix instead of matrix–vector products): measured
at about 3 separate VJPs for ``D = 100`` and 50 for ``D = 300``. After that every product is one
batched matrix–vector product ``vᵀJ`` (about 5 µs at ``D = 100``).

Policy (the ``jacobian=`` argument of the modes):

* ``"products"`` – never form ``J`` (matrix-free; memory ``O(B·D)`` during the backward);
* ``"dense"``    – always form ``J`` (memory ``B·D²`` during the backward);
* ``"auto"``     – form ``J`` when ``D ≤ 4k`` and ``B·D² ≤ 2²²`` entries (32 MiB in float64):
  below that ratio the ``k`` products are cheaper than the ``D``-column Jacobian.

Either way nothing is kept between the forward and the backward, so AID's saved state stays
independent of ``t`` and ``k``.

With ``J`` formed, the iterations are those of the matrix-free path with a cheaper operator (the
same iterates up to round-off), with two shortcuts. ``FixedPoint(k)``'s iterate is the truncated
Neumann series ``Σ_{i<k} (Jᵀ)ⁱ g``, which needs only ``O(log k)`` matrix products by doubling the
number of terms (used when that is cheaper, ``neumann_by_doubling``). CG on a ``D``-dimensional symmetric positive
definite system terminates in at most ``D`` steps in exact arithmetic (Hestenes & Stiefel 1952,
finite termination), so ``ConjugateGradient(k)`` with ``k ≥ D`` *is* the solution of the system;
we compute it by a Cholesky factorisation (symmetric ``∂_wΦ``) or an LU factorisation of
``I − ∂_wΦᵀ`` (what CG on the normal equations converges to), which is at least as accurate as
``k`` floating-point CG steps. Where that factorisation fails (the matrix is not positive definite,
resp. singular, i.e. the premise of CG is violated) the ``k`` CG steps are run instead.

Shape:
    w, g, v: ``(B, *event)``; ``J``: ``(B, D, D)``, ``D = prod(event)``.

References:
    M. Hestenes, E. Stiefel. Methods of conjugate gradients for solving linear systems. J. Res.
    NBS 49(6), 1952 (finite termination).
"""

from __future__ import annotations

import torch

from .linear_solvers import LinearSolve, batch_dot, conjugate_gradient, fixed_point_iteration
from .linearisation import FixedPointLinearisation

__all__ = ["JACOBIAN_POLICIES", "DenseJacobian", "check_jacobian_policy", "neumann_by_doubling",
           "use_dense_jacobian"]

JACOBIAN_POLICIES = ("auto", "dense", "products")
_MAX_ENTRIES = 1 << 22


def check_jacobian_policy(policy) -> str:
    """``policy`` if it is one of ``JACOBIAN_POLICIES``, else a ``ValueError`` listing them."""
    if policy not in JACOBIAN_POLICIES:
        raise ValueError(f"jacobian: expected one of {', '.join(map(repr, JACOBIAN_POLICIES))}, "
                         f"got {policy!r}")
    return policy


def use_dense_jacobian(policy: str, w: torch.Tensor, k: int) -> bool:
    """Whether the AID solve with ``k`` steps at ``w`` (``(B, *event)``) forms ``∂_wΦ`` (the
    policy of the module docstring)."""
    if policy != "auto":
        return policy == "dense"
    B, D = w.shape[0], w.shape[1:].numel()
    return 0 < D <= 4 * k and B * D * D <= _MAX_ENTRIES


def neumann_by_doubling(D: int, k: int) -> bool:
    """Whether ``k`` Neumann terms of a dense ``D × D`` matrix are cheaper by doubling: about
    ``2 log₂k`` matrix products (``D³`` each, at GEMM speed) against ``k`` matrix–vector products
    (``D²`` each, memory-bound and one dispatch each); we take GEMM as 8× faster per operation."""
    return 2 * max(k - 1, 1).bit_length() * D <= 8 * k


def _neumann_doubling(J: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    """``Σ_{i<k} g_b ᵀ J_bⁱ`` per element (rows), ``k ≥ 1``, by binary doubling of the number of
    terms: with ``S_m = Σ_{i<m} gᵀJⁱ`` and ``P = J^m``, ``S_{2m} = S_m + S_m P`` and
    ``S_{m+1} = g + S_m J``."""
    bits = bin(k)[2:]
    r, P = g, J                                       # S_1 = g, P = J¹ (the leading bit is 1)
    for i, bit in enumerate(bits[1:], start=1):
        last = i == len(bits) - 1
        r = r + _rows_times(r, P)                     # S_2m
        if bit == "1":
            r = g + _rows_times(r, J)                 # S_2m+1
        if not last:
            P = P @ P
            if bit == "1":
                P = P @ J
    return r


def _rows_times(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``v_b ᵀ M_b`` for every element: ``(B, D) × (B, D, D) → (B, D)`` (one GEMM when ``B = 1``)."""
    if M.shape[0] == 1:
        return v @ M[0]
    return (v.unsqueeze(1) @ M).squeeze(1)


class DenseJacobian:
    """The AID solves of ``(I − ∂_wΦᵀ) v = g`` with ``J = ∂_wΦ`` formed once.

    Args:
        J: ``∂_wΦ`` per element, ``(B, D, D)``.
        event: the event shape of ``w`` (``prod(event) = D``).
    """

    def __init__(self, J: torch.Tensor, event: tuple):
        self.J, self.event = J, tuple(event)
        self.B, self.D = J.shape[0], J.shape[-1]

    @classmethod
    def of(cls, lin: FixedPointLinearisation) -> "DenseJacobian":
        """From a linearisation (its ``jacobian()``, one vmapped backward)."""
        return cls(lin.jacobian(), tuple(lin.w.shape[1:]))

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.B, self.D)

    def _shaped(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape((self.B,) + self.event)

    def jt(self, v: torch.Tensor) -> torch.Tensor:
        """``∂_wΦᵀ v`` (``(B, *event)``)."""
        return self._shaped(_rows_times(self._flat(v), self.J))

    def fixed_point(self, g: torch.Tensor, k: int) -> LinearSolve:
        """``v_k`` of ``k`` steps of ``v ← ∂_wΦᵀ v + g`` from ``v = 0`` (``FixedPoint(k)``), i.e. the
        truncated Neumann series ``v_k = Σ_{i<k} (Jᵀ)ⁱ g``: by the ``k`` matrix–vector steps, or,
        when ``neumann_by_doubling(D, k)``, by doubling the number of terms
        (``S_{2m} = S_m + (Jᵀ)^m S_m``, ``S_{m+1} = g + Jᵀ S_m``) with ``O(log k)`` matrix products."""
        b = self._flat(g)
        J = self.J
        if k < 2 or not neumann_by_doubling(self.D, k):
            res = fixed_point_iteration(lambda v: _rows_times(v, J), b, max_iter=k)
            res.x = self._shaped(res.x)
            return res
        prev = _neumann_doubling(J, b, k - 1)             # v_{k−1}, then one step for the residual
        x = b + _rows_times(prev, J)
        steps = torch.full((self.B,), k, dtype=torch.int64, device=b.device)
        return LinearSolve(self._shaped(x), steps, batch_dot(x - prev, x - prev).sqrt(),
                           torch.ones(self.B, dtype=torch.bool, device=b.device))

    def solve_adjoint(self, g: torch.Tensor, *, symmetric: bool, max_iter: int) -> LinearSolve:
        """``v`` with ``(I − ∂_wΦᵀ) v = g``: exactly ``max_iter`` CG steps from ``v = 0`` on the
        system (``symmetric``) or on the normal equations, as ``FixedPointLinearisation.
        solve_adjoint``; the exact solution when ``max_iter ≥ D`` (finite termination, see the
        module docstring)."""
        b = self._flat(g)
        eye = torch.eye(self.D, dtype=b.dtype, device=b.device)
        N = eye - self.J                     # I − J; rows: (I − Jᵀ) v = vᵀ(I − J) = v @ N
        if max_iter >= self.D:
            exact = self._direct(N, b, symmetric)
            if exact is not None:
                return exact
        if symmetric:
            res = conjugate_gradient(lambda v: _rows_times(v, N), b, max_iter=max_iter)
        else:
            M = N.mT @ N                     # (I − Jᵀ)(I − J) = Nᵀ N, symmetric
            res = conjugate_gradient(lambda u: _rows_times(u, M), b, max_iter=max_iter)
            res.x = _rows_times(res.x, N.mT)  # v = (I − J) u
        res.x = self._shaped(res.x)
        return res

    def _direct(self, N: torch.Tensor, b: torch.Tensor, symmetric: bool) -> LinearSolve | None:
        """The solution by a factorisation, or None when it fails for some element."""
        if symmetric:
            A = 0.5 * (N + N.mT)             # I − Jᵀ, symmetrised against round-off in J
            L, info = torch.linalg.cholesky_ex(A)
            if bool((info != 0).any()):
                return None
            x = torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)
        else:
            x, info = torch.linalg.solve_ex(N.mT, b)
            if bool((info != 0).any()) or not bool(torch.isfinite(x).all()):
                return None
            A = N.mT
        r = b - (A @ x.unsqueeze(-1)).squeeze(-1)
        steps = torch.full((self.B,), self.D, dtype=torch.int64, device=b.device)
        return LinearSolve(self._shaped(x), steps, batch_dot(r, r).sqrt(),
                           torch.ones(self.B, dtype=torch.bool, device=b.device))
