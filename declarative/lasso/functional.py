"""``solve_lasso``: the functional entry point of the lasso layer (validation + gradient mode)."""

from __future__ import annotations

import torch

from ..modes import GradientMode, resolve_mode
from ..solution import Solution
from ..validation import (check_batched, check_dim, check_finite, check_instance,
                          check_same_dtype_device, check_tensor, check_warm_start, common_batch_size,
                          cast_solution, promote_scalar, upcast_low_precision)
from .problem import LassoProblem
from .solver import LassoOptions

__all__ = ["solve_lasso"]


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

    .. math::

        z^\star = \arg\min_z \tfrac12\|Dz - x\|^2 + \sum_i \lambda_i |z_i| + \tfrac{\mu}{2}\|z\|^2

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

    float16 / bfloat16 inputs are solved in float32 (no CPU kernels for the factorisations in
    half precision) and the solution is returned in the input dtype; gradients reach the inputs in
    their own dtype. A batch of zero problems (``B = 0``) returns empty results (and zero
    gradients); an empty problem (``d = 0`` or ``k = 0``) is a ``ValueError``. A scalar ``lam`` or
    ``mu`` (a Python number or a 0-d tensor) takes the dtype of ``D``, as in torch's type promotion.

    Raises:
        ValueError / TypeError: wrong shapes, mixed dtypes or devices, NaN/inf, lam < 0, mu < 0,
            ``options`` that is not a ``LassoOptions``, a ``warm_start`` that is not a ``Solution``
            of the solution's shape.

    Shape:
        - D: ``(B, d, k)`` or ``(d, k)``; x: ``(B, d)`` or ``(d,)``; z: ``(B, k)`` or ``(k,)``.
    """
    gm = resolve_mode(mode, beta, problem=LassoProblem)
    check_instance("options", options, LassoOptions)
    check_tensor("D", D)
    check_tensor("x", x)
    bD = check_batched("D", D, "dk")
    bx = check_batched("x", x, "d")
    d, k = D.shape[-2:]
    if d == 0 or k == 0:
        raise ValueError(f"D: expected a non-empty dictionary (d >= 1 rows, k >= 1 atoms), got "
                         f"shape {tuple(D.shape)}")
    check_dim("x", x.shape[-1], d, "d (the number of rows of D)")
    check_same_dtype_device(D=D, x=x)
    lam_t = promote_scalar("lam", lam, D)
    mu_t = None
    if isinstance(mu, torch.Tensor) or mu != 0:
        mu_t = promote_scalar("mu", mu, D)
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
    z_shapes = [(B, k)] if B is not None else [(k,)]
    check_warm_start("warm_start", warm_start, D, z_shapes)
    t, low = upcast_low_precision(D=D, x=x, lam=lam_c, mu=mu_t)
    if warm_start is not None and low is not None:
        warm_start = cast_solution(warm_start, torch.float32)
    problem = LassoProblem(options)
    params = (t["D"], t["x"], t["lam"]) if mu_t is None else (t["D"], t["x"], t["lam"], t["mu"])
    sol = cast_solution(gm.apply(problem, params, warm_start), low)
    if check:
        sol.raise_for_status("lasso solve")
    return sol
