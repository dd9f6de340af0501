"""cvxpy reference solutions of the lasso / elastic net (``docs/guide/problems.md``), free and nudged.

Per batch element, with Clarabel at tight tolerance,

    z* = argmin_z ½‖Dz − x‖² + Σ_i lam_i |z_i| + (mu/2)‖z‖² + β gᵀz .

The ℓ1 term is written with the split ``z = z⁺ − z⁻``, ``z± ≥ 0`` so that Clarabel solves a QP
(the interior-point iterates stop short of the boundary, so zeros come out as ~1e-10, not 0).
Measured against the polished solver of ``declarative.lasso`` on Gaussian problems
(d, k ≤ 20, |x| ≲ 3) the solutions agree to ≲ 1e-9; ``ATOL = 1e-8`` keeps a margin. A central
difference quotient of two reference solves with step h has error ≲ 2·ATOL/h (and, in D, a
truncation error O(h²): the solution is piecewise *linear* in x, lam and the nudge β, but rational
in D).

numpy/cvxpy only: never used by a forward or backward pass. cvxpy is imported inside functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ATOL", "lasso_reference", "lasso_reference_batch"]

#: Absolute tolerance of the reference solutions (see the module docstring).
ATOL = 1e-8

_CLARABEL = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-12,
                 max_iter=500)


_CACHE: dict = {}


def _parametrised(d: int, k: int):
    """A DPP-compliant cvxpy problem for sizes (d, k), compiled once and re-solved."""
    import cvxpy as cp

    if (d, k) not in _CACHE:
        D, x = cp.Parameter((d, k)), cp.Parameter(d)
        lam, lin, mu = cp.Parameter(k, nonneg=True), cp.Parameter(k), cp.Parameter(nonneg=True)
        zp, zm = cp.Variable(k, nonneg=True), cp.Variable(k, nonneg=True)
        z = zp - zm
        obj = (0.5 * cp.sum_squares(D @ z - x) + lam @ (zp + zm) + 0.5 * mu * cp.sum_squares(z)
               + lin @ z)
        _CACHE[(d, k)] = (cp.Problem(cp.Minimize(obj)), D, x, lam, lin, mu, zp, zm)
    return _CACHE[(d, k)]


def lasso_reference(D, x, lam, mu: float = 0.0, g=None, beta: float = 0.0) -> np.ndarray:
    """Solve one (nudged) lasso / elastic net with cvxpy + Clarabel.

    Args:
        D: (d, k). x: (d,). lam: float or (k,) per-coordinate weights ≥ 0. mu: float ≥ 0.
        g, beta: optional nudge ``β gᵀz`` (β may be negative).

    Returns:
        z: (k,) float64 array.
    """
    import cvxpy as cp

    D = np.asarray(D, dtype=np.float64)
    d, k = D.shape
    prob, Dp, xp, lamp, linp, mup, zp, zm = _parametrised(d, k)
    Dp.value = D
    xp.value = np.asarray(x, dtype=np.float64).reshape(-1)
    lamp.value = np.broadcast_to(np.asarray(lam, dtype=np.float64), (k,)).copy()
    mup.value = float(mu)
    lin = np.zeros(k) if g is None else float(beta) * np.asarray(g, dtype=np.float64).reshape(-1)
    linp.value = lin
    prob.solve(solver=cp.CLARABEL, **_CLARABEL)
    if prob.status != cp.OPTIMAL:
        raise RuntimeError(f"lasso reference: cvxpy/Clarabel returned status {prob.status!r}")
    return np.asarray(zp.value - zm.value)


def lasso_reference_batch(D, x, lam, mu=0.0, g=None, beta: float = 0.0) -> np.ndarray:
    """``lasso_reference`` over a batch (a Python loop: references only).

    Args:
        D: (B, d, k) or (d, k). x: (B, d). lam: float, (B,), (k,) or (B, k) (per-element rows).
        mu: float or (B,). g: (B, k) or None.

    Returns:
        z: (B, k).
    """
    x = np.asarray(x, dtype=np.float64)
    B = x.shape[0]
    D = np.broadcast_to(np.asarray(D, dtype=np.float64), (B,) + np.shape(D)[-2:])
    k = D.shape[-1]
    lam = np.asarray(lam, dtype=np.float64)
    if lam.ndim == 1 and lam.shape[0] != k:
        lam = lam[:, None]
    lam = np.broadcast_to(lam, (B, k))
    mu = np.broadcast_to(np.asarray(mu, dtype=np.float64), (B,))
    out = np.empty((B, k))
    for b in range(B):
        out[b] = lasso_reference(D[b], x[b], lam[b], mu[b], None if g is None else np.asarray(g)[b], beta)
    return out
