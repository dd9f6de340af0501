"""Sparsemax: the Euclidean projection onto the probability simplex, with one-sided derivatives
at ties (weakly active coordinates)."""

from __future__ import annotations

import torch

from .base import SimplexActivationProblem


def _simplex_threshold(s: torch.Tensor) -> torch.Tensor:
    """τ with ``Σ_i max(0, s_i − τ) = 1`` over the last dimension (sort-based, exact), for rows
    shifted to ``max_i s_i = 0``: the support's entries then lie in ``(−1, 0]`` and their
    cumulative sum cannot overflow, whatever the size of the input (entries far below the support
    may sum to ``−inf``, which only keeps them out of it)."""
    n = s.shape[-1]
    srt, _ = torch.sort(s, dim=-1, descending=True)
    cs = srt.cumsum(-1) - 1
    k = torch.arange(1, n + 1, dtype=s.dtype, device=s.device)
    # ≥ 1 for a finite row (its largest entry, 0 > −1, is always in); NaN rows count none
    support = (srt * k > cs).sum(-1, keepdim=True).clamp(min=1)
    return cs.gather(-1, support - 1) / support


class SparsemaxProblem(SimplexActivationProblem):
    """``z* = argmin_z ½‖z − a‖²  s.t.  z ≥ 0, 1ᵀz = 1`` over ``dim`` (Martins & Astudillo 2016).

    ``z = max(0, a − τ)`` with the threshold τ found by sorting. Implicit tangent in direction ``u``
    (the backward QP on the simplex, ``docs/guide/problems.md``): with support ``S = {z_i > 0}`` and weakly
    active set ``W = {z_i = 0, a_i = τ}``,

        d = argmin ½‖d − u‖²  s.t.  1ᵀd = 0,  d_i ≥ 0 (i ∈ W),  d_i = 0 (i ∉ S ∪ W),

    i.e. ``d_i = u_i − μ`` on S and ``max(0, u_i − μ)`` on W, with μ solving ``1ᵀd = 0``. The root μ
    is found exactly by sorting ``u_W`` (the same prefix argument as the sparsemax threshold).
    Without ties this is the usual sparsemax Jacobian ``u_S − mean_S(u)``.

    A coordinate counts as weakly active when ``|a_i − τ| ≤ tol`` (``z_i ≤ tol`` and
    ``a_i ≥ τ − tol``) with ``tol = min(16 · eps(dtype) · (1 + max_i |a_i|), 1/(4n))`` — the
    rounding error of τ (capped so that the largest output, at least ``1/n``, stays in the
    support for inputs so large that their rounding exceeds it); exact ties in the input (e.g.
    ``a = (1, 0, −1)``: τ = 0) and ties that the forward rounds to a tiny positive ``z_i`` are
    detected in float32 and float64.

    Inputs: each row is shifted by its maximum before the threshold is computed, so huge finite
    inputs (``±1e300`` in float64, ``3e38`` in float32) give the exact projection. As with
    ``torch.softmax``, NaN propagates: a row holding NaN or ``+inf`` (or only ``−inf``) gives a row
    of NaN, without a host synchronisation; ``−inf`` entries of an otherwise finite row are masked
    (their output is 0). An empty simplex (``n = 0``) gives an empty output; a 0-d input or a
    ``dim`` out of range raises (``check_input``).

    Args:
        dim: the dimension that lies on the simplex (default ``-1``).

    Shape:
        - a, z: ``(*, n, *)``, the simplex over ``dim``.
    """

    def activation(self, a):
        self.check_input(a)
        a_t = a.movedim(self.dim, -1)
        if a_t.shape[-1] == 0:
            return a.clone()
        m = a_t.amax(-1, keepdim=True)
        s = a_t - m   # the shift by the row maximum: no overflow in the threshold's sums
        z = torch.clamp(s - _simplex_threshold(s), min=0)
        z = torch.where(torch.isfinite(m), z, torch.nan)   # NaN / +inf / all −inf rows: NaN
        return z.movedim(-1, self.dim)

    def directional_derivative(self, a, z, u):
        a_t, z_t, u_t = (x.movedim(self.dim, -1) for x in (a, z, u))
        n = a_t.shape[-1]
        if n == 0:
            return torch.zeros_like(u)
        m = a_t.amax(-1, keepdim=True)
        s = a_t - m   # as in the forward
        # the scale of the support's entries, which lie in (m − 1, m]: taken from the row maximum, not
        # from max|a_i| (a −inf or −1e9 mask entry would blow the band up to the cap)
        tol = (16 * torch.finfo(a_t.dtype).eps * (2 + m.abs())).clamp(max=0.25 / n)
        # the band |a_i − τ| ≤ tol is weakly active on both sides: a tie rounded to z_i = 1e-17 > 0
        # is a tie too (else Implicit would disagree with its own β → 0⁺ limit there)
        in_s = z_t > tol
        n_s = in_s.sum(-1, keepdim=True).to(a_t.dtype)
        tau = (torch.where(in_s, s, 0).sum(-1, keepdim=True) - 1) / n_s
        in_w = (~in_s) & (s >= tau - tol)
        sum_s = torch.where(in_s, u_t, 0).sum(-1, keepdim=True)
        neg_inf = torch.tensor(float("-inf"), dtype=u_t.dtype, device=u_t.device)
        v, _ = torch.sort(torch.where(in_w, u_t, neg_inf), dim=-1, descending=True)
        finite = v > neg_inf
        k = torch.arange(1, n + 1, dtype=u_t.dtype, device=u_t.device)
        mu_k = (sum_s + torch.where(finite, v, 0).cumsum(-1)) / (n_s + k)
        k_star = (finite & (v > mu_k)).sum(-1, keepdim=True)
        mu = torch.where(k_star > 0, mu_k.gather(-1, (k_star - 1).clamp(min=0)), sum_s / n_s)
        d = torch.where(in_s, u_t - mu, torch.where(in_w, torch.clamp(u_t - mu, min=0), 0))
        return d.movedim(-1, self.dim)
