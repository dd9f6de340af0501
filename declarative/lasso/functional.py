"""``solve_lasso``: the functional entry point of the lasso layer (validation + gradient mode)."""

from __future__ import annotations

import torch

from ..modes import GradientMode, resolve_mode
from ..solution import Solution
from ..validation import (check_batched, check_dim, check_finite, check_same_dtype_device,
                          check_tensor, common_batch_size)
from .problem import LassoProblem
from .solver import LassoOptions

__all__ = ["solve_lasso"]


def _as_tensor(name, v, like):
    if isinstance(v, torch.Tensor):
        return check_tensor(name, v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float or a tensor, got {type(v).__name__}")
    return torch.tensor(float(v), dtype=like.dtype, device=like.device)


def _canonical_lam(lam: torch.Tensor, B: int | None, k: int) -> torch.Tensor:
    """View lam as broadcastable to (B, k): () | (k,) | (B, 1) | (B, k)."""
    if lam.dim() == 0:
        return lam
    if lam.dim() == 1:
        if lam.shape[0] == k:
            return lam  # per-coordinate weights (wins when B == k: pass (B, 1) for per-element)
        if B is not None and lam.shape[0] == B:
            return lam.unsqueeze(-1)
    if lam.dim() == 2 and B is not None and lam.shape[0] == B and lam.shape[1] in (1, k):
        return lam
    want = f"(), (k,) = ({k},)" + (f", (B,) = ({B},), (B, 1) or (B, k) = ({B}, {k})" if B else "")
    raise ValueError(f"lam: expected a float or a tensor of shape {want}, got {tuple(lam.shape)}")


@torch.compiler.disable  # solver: host checks, data-dependent loops (a graph break)
def solve_lasso(D: torch.Tensor, x: torch.Tensor, lam, mu=0.0, *,
                mode: "str | GradientMode" = "implicit", beta: float | None = None,
                options: LassoOptions | None = None, warm_start: Solution | None = None,
                check: bool = True) -> Solution:
    r"""Solve the (batched) lasso / elastic net, differentiably.

        z* = argmin_z ½‖Dz − x‖² + Σ_i lam_i |z_i| + (mu/2)‖z‖²

    Args:
        D: dictionary, ``(B, d, k)`` or ``(d, k)``.
        x: signals, ``(B, d)`` or ``(d,)``.
        lam: ℓ1 weight ≥ 0: a float or a tensor of shape ``()``, ``(B,)`` (per element), ``(k,)``
            (per coordinate; this reading wins when ``B == k``, pass ``(B, 1)`` then), or ``(B, k)``.
        mu: elastic-net weight ≥ 0: a float or a tensor of shape ``()`` or ``(B,)``.
        mode: ``"implicit"`` (exact, one-sided at weakly active coordinates), ``"contrastive"``,
            ``"symmetric"`` (need ``beta``) or a ``GradientMode``.
        beta: nudging strength of the contrastive modes.
        options: ``LassoOptions``.
        warm_start: a previous ``Solution`` (its ``z`` is polished first).
        check: raise ``SolverError`` naming the failing batch elements (default); with
            ``check=False`` the per-element ``status`` is returned instead.

    Returns:
        ``Solution`` with ``z`` ``(B, k)`` (or ``(k,)``), ``status``, ``iterations`` and
        ``residuals["kkt"]`` (the optimality residual, see ``declarative.lasso.solver``).

    Raises:
        ValueError / TypeError: wrong shapes, mixed dtypes or devices, NaN/inf, lam < 0, mu < 0.

    Shape:
        - D: ``(B, d, k)`` or ``(d, k)``; x: ``(B, d)`` or ``(d,)``; z: ``(B, k)`` or ``(k,)``.
    """
    gm = resolve_mode(mode, beta, problem=LassoProblem)
    check_tensor("D", D)
    check_tensor("x", x)
    bD = check_batched("D", D, "dk")
    bx = check_batched("x", x, "d")
    d, k = D.shape[-2:]
    check_dim("x", x.shape[-1], d, "d (the number of rows of D)")
    lam_t = _as_tensor("lam", lam, D)
    mu_t = None
    if isinstance(mu, torch.Tensor) or mu != 0:
        mu_t = _as_tensor("mu", mu, D)
    check_same_dtype_device(D=D, x=x, lam=lam_t, mu=mu_t)
    B = common_batch_size(D=(D, bD), x=(x, bx),
                          mu=(mu_t, mu_t is not None and mu_t.dim() == 1))
    if mu_t is not None and mu_t.dim() > 1:
        raise ValueError(f"mu: expected a float or a tensor of shape () or (B,), got {tuple(mu_t.shape)}")
    if mu_t is not None and mu_t.dim() == 1 and B is None:
        B = mu_t.shape[0]
    lam_c = _canonical_lam(lam_t, B, k)
    for name, t in (("D", D), ("x", x), ("lam", lam_t)) + ((("mu", mu_t),) if mu_t is not None else ()):
        check_finite(name, t)
    if bool((lam_t < 0).any()):
        raise ValueError(f"lam: expected values >= 0, got minimum {lam_t.min().item():g}")
    if mu_t is not None and bool((mu_t < 0).any()):
        raise ValueError(f"mu: expected values >= 0, got minimum {mu_t.min().item():g}")
    problem = LassoProblem(options)
    params = (D, x, lam_c) if mu_t is None else (D, x, lam_c, mu_t)
    sol = gm.apply(problem, params, warm_start)
    if check:
        sol.raise_for_status("lasso solve")
    return sol
