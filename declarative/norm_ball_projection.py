"""Euclidean (Frobenius) projections of matrices onto operator-norm balls, batched.

Used to keep the map of an equilibrium model ``w = tanh(A w + B x + c)`` a contraction: since
``|tanh′| ≤ 1``, ``‖∂_wΦ‖ ≤ ‖A‖`` in any induced norm, so ``‖A‖₂ < 1`` (spectral norm) or
``‖A‖_∞ < 1`` (maximum absolute row sum) makes the fixed-point iteration converge linearly from any
start (Grazzi et al. 2020, §3.2). Projected gradient descent applies the projection after every
step.

* ``project_spectral_ball`` – the nearest matrix in Frobenius norm with ``‖X‖₂ ≤ r``:

  .. math::

      A = U \\operatorname{diag}(\\sigma) V^\\top \\;\\mapsto\\;
      U \\operatorname{diag}(\\min(\\sigma, r)) V^\\top ,

  (the singular values clipped at ``r``; Lewis 1995 — the Frobenius norm and the spectral ball
  are unitarily invariant). Matrices already inside the ball are returned unchanged (bit for
  bit); the others are rebuilt from their clipped singular values (not as the correction
  ``A − U diag((σ − r)₊) Vᵀ``, which cancels in float32 when ``σ_max ≫ r`` and can leave
  ``‖P‖₂ > r``). Below float64 the SVD is computed in float64 and the result rounded once:
  float32 singular vectors (cuSOLVER's on a GPU) are orthogonal only to about 1e-5, and the
  product rebuilt from them left the ball by more than that. The inside matrices do not enter the SVD's backward, so they get the identity
  gradient even with repeated singular values (``0.5·I``, the zero matrix, low rank).

* ``project_inf_norm_ball`` – the nearest matrix in Frobenius norm with
  ``‖X‖_∞ = max_i Σ_j |X_ij| ≤ r``. The constraint is one ℓ₁ ball per row and the Frobenius
  distance separates over rows, so every row is projected onto ``{x : ‖x‖₁ ≤ r}`` (Duchi et al.
  2008, by sorting):

  .. math::

      x \\mapsto \\operatorname{sign}(x) (|x| - \\tau)_+, \\qquad
      \\tau = \\max\\Big(0, \\max_k \\tfrac{1}{k}\\big(\\textstyle\\sum_{j \\le k} |x|_{(j)} - r\\big)\\Big),

  with ``|x|_{(1)} ≥ |x|_{(2)} ≥ …`` the sorted magnitudes. Rows inside the ball are unchanged.

Both are torch expressions, differentiable by autograd almost everywhere (the spectral one, for a
matrix outside the ball, where its singular values are distinct, as ``torch.linalg.svd``'s backward
requires).

Shape:
    A: ``(*, m, n)`` (any leading batch dimensions); ``radius``: a positive number or a tensor
    broadcastable to ``A.shape[:-2]``; output: ``(*, m, n)``.

References:
    A. Lewis. The convex analysis of unitarily invariant matrix functions. J. Convex Anal. 2(1), 1995.
    J. Duchi, S. Shalev-Shwartz, Y. Singer, T. Chandra. Efficient projections onto the l1-ball
    for learning in high dimensions. ICML 2008.
    R. Grazzi et al. On the iteration complexity of hypergradient computation. ICML 2020, §3.2.
"""

from __future__ import annotations

import torch

from .validation import check_positive, check_tensor

__all__ = ["project_inf_norm_ball", "project_spectral_ball"]


def _check_matrix(A) -> torch.Tensor:
    check_tensor("A", A)
    if A.dim() < 2:
        raise ValueError(f"A: expected a matrix or a batch of matrices (*, m, n), got shape {tuple(A.shape)}")
    return A


def _radius(radius, A: torch.Tensor) -> torch.Tensor:
    """The radius as a tensor of shape ``A.shape[:-2]`` (validated: finite and positive)."""
    if isinstance(radius, torch.Tensor):
        check_tensor("radius", radius)
        if not bool(torch.isfinite(radius).all()) or bool((radius <= 0).any()):
            raise ValueError("radius: expected finite positive values, got a tensor with "
                             f"min {radius.min().item():g}")
        try:
            return torch.broadcast_to(radius.to(dtype=A.dtype, device=A.device), A.shape[:-2])
        except RuntimeError:
            raise ValueError(f"radius: shape {tuple(radius.shape)} does not broadcast to the batch "
                             f"shape of A {tuple(A.shape[:-2])}") from None
    r = check_positive("radius", radius)
    return torch.full(A.shape[:-2], r, dtype=A.dtype, device=A.device)


def project_spectral_ball(A: torch.Tensor, radius=1.0) -> torch.Tensor:
    """The Frobenius-nearest matrix with spectral norm ``≤ radius``: singular values clipped.

    Args:
        A: ``(*, m, n)`` floating tensor.
        radius: ``r > 0`` (a number, or a tensor broadcastable to ``A.shape[:-2]``). For a strict
            contraction pass ``1 − ε``.

    Returns:
        ``U diag(min(σ, r)) Vᵀ``, shape ``(*, m, n)``; matrices with ``σ_max ≤ r`` are returned
        unchanged.

    Raises:
        TypeError: ``A`` is not a floating tensor.
        ValueError: ``A`` has fewer than two dimensions, or ``radius`` is not positive and finite.

    Shape:
        - A: ``(*, m, n)``; radius: number or ``(*)``; output: ``(*, m, n)``.

    Examples::

        >>> A = 3 * torch.randn(200, 200)
        >>> P = project_spectral_ball(A, 1 - 1e-3)
        >>> torch.linalg.matrix_norm(P, ord=2)   # ≤ 0.999 (up to round-off)
    """
    A = _check_matrix(A)
    r = _radius(radius, A)
    # below float64 the SVD runs in float64 and its result is rounded once: float32 singular
    # vectors (cuSOLVER's in particular) are orthogonal only to ~1e-5, enough for their product to
    # leave the ball by that much
    work, r_work = (A, r) if A.dtype == torch.float64 else (A.double(), r.double())
    inside = (torch.linalg.svdvals(work.detach()) <= r_work.detach().unsqueeze(-1)).all(-1)[..., None, None]
    # the SVD that is differentiated sees the inside matrices as constants: its backward (undefined
    # for repeated singular values) then never reaches them
    U, S, Vh = torch.linalg.svd(torch.where(inside, work.detach(), work), full_matrices=False)
    projected = ((U * torch.minimum(S, r_work.unsqueeze(-1)).unsqueeze(-2)) @ Vh).to(A.dtype)
    return torch.where(inside, A, projected)


def _project_rows_l1(X: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Every row of ``X`` (``(*, m, n)``) onto the ℓ₁ ball of radius ``r`` (``(*, 1)`` broadcast)."""
    mag = X.abs()
    u, _ = torch.sort(mag, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - r.unsqueeze(-1)
    k = torch.arange(1, X.shape[-1] + 1, dtype=X.dtype, device=X.device)
    # τ = max_k (css_k / k), clamped at 0: the threshold of Duchi et al. (the maximum is attained
    # at their ρ, the largest k with u_k > css_k / k)
    tau = (css / k).amax(dim=-1, keepdim=True).clamp_min(0)
    return torch.sign(X) * torch.relu(mag - tau)


def project_inf_norm_ball(A: torch.Tensor, radius=1.0) -> torch.Tensor:
    """The Frobenius-nearest matrix with induced ∞-norm (maximum absolute row sum) ``≤ radius``:
    every row projected onto the ℓ₁ ball of radius ``r``.

    Args:
        A: ``(*, m, n)`` floating tensor.
        radius: ``r > 0`` (a number, or a tensor broadcastable to ``A.shape[:-2]``).

    Returns:
        ``(*, m, n)``; rows with ``Σ_j |A_ij| ≤ r`` are unchanged.

    Raises:
        TypeError: ``A`` is not a floating tensor.
        ValueError: ``A`` has fewer than two dimensions, or ``radius`` is not positive and finite.

    Shape:
        - A: ``(*, m, n)``; radius: number or ``(*)``; output: ``(*, m, n)``.

    Examples::

        >>> P = project_inf_norm_ball(torch.randn(4, 50, 50), 0.9)
        >>> P.abs().sum(-1).amax(-1)   # each ≤ 0.9
    """
    A = _check_matrix(A)
    r = _radius(radius, A).unsqueeze(-1)        # (*, 1): one radius per matrix, for every row
    return _project_rows_l1(A, r)
