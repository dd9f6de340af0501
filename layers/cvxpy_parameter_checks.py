r"""Call-time checks of the values of structured cvxpy parameters (``symmetric``, ``PSD``, ``NSD``).

cvxpy stores such a parameter reduced — its upper triangle — so a value that is not symmetric,
or not semidefinite, would be read as another matrix without a word. ``check_structured_values``
refuses it: for a value ``P`` (each batch element, ``s = max_{ij} |P_ij|``)

.. math::

    \max_{ij} |P_{ij} - P_{ji}| \le \sqrt{\epsilon}\, s \quad \text{(all three)}, \qquad
    \lambda_{\min}(\pm \tfrac12 (P + P^\top)) \ge -\sqrt{\epsilon}\, s
    \quad \text{(PSD: } +\text{, NSD: } -\text{)},

with ``ε`` the machine epsilon of the value's dtype. Semidefiniteness is tested by one batched
Cholesky factorisation of ``±½(P + Pᵀ) + √ε s I`` (it succeeds iff the smallest eigenvalue is
above ``−√ε s``, up to rounding); eigenvalues are computed only for the error message, of the
failing elements. Cost ``O(B n³/3)`` and one host synchronisation per structured parameter.
Elements with non-finite entries are left to the solver (which reports them as ``NON_FINITE``).

Pure torch, batched, on the value's device; run under ``no_grad`` (values only).
"""

from __future__ import annotations

import torch

__all__ = ["check_structured_values"]

_LOW = (torch.float16, torch.bfloat16)


def _indices(mask: torch.Tensor) -> str:
    idx = torch.nonzero(mask).reshape(-1).tolist()
    return "[" + ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "") + "]"


def _where(mask: torch.Tensor, batched: bool) -> str:
    return f"for batch elements {_indices(mask)}" if batched else "(unbatched value)"


@torch.no_grad()
def _check_one(name: str, structure: str, value: torch.Tensor, batched: bool) -> None:
    """Raise a ``ValueError`` if ``value (*, n, n)`` violates ``structure`` (module docstring)."""
    n = value.shape[-1]
    P = value.detach().reshape(-1, n, n)
    if P.dtype in _LOW:
        P = P.float()
    tol = torch.finfo(P.dtype).eps ** 0.5
    finite = torch.isfinite(P).flatten(1).all(-1)
    P = torch.where(finite.view(-1, 1, 1), P, torch.zeros_like(P))
    scale = P.abs().amax((-2, -1))
    asym = (P - P.mT).abs().amax((-2, -1))
    bad_sym = asym > tol * scale
    bad_def = torch.zeros_like(bad_sym)
    if structure in ("PSD", "NSD"):
        S = 0.5 * (P + P.mT) * (1.0 if structure == "PSD" else -1.0)
        shift = tol * torch.where(scale > 0, scale, torch.ones_like(scale))
        S.diagonal(dim1=-2, dim2=-1).add_(shift.unsqueeze(-1))
        bad_def = (torch.linalg.cholesky_ex(S).info > 0) & ~bad_sym
    bad = bad_sym | bad_def
    if not bool(bad.any()):
        return
    attr = {"symmetric": "symmetric=True", "PSD": "PSD=True", "NSD": "NSD=True"}[structure]
    if bool(bad_sym.any()):
        rel = (asym / scale)[bad_sym].max().item()
        raise ValueError(
            f"parameter {name}: expected a symmetric matrix (declared {attr}; cvxpy reads only its "
            f"upper triangle), got one that is not symmetric {_where(bad_sym, batched)} "
            f"(max |P − Pᵀ| / max |P| = {rel:.3g} > √eps = {tol:.3g})")
    word = "positive" if structure == "PSD" else "negative"
    sign = 1.0 if structure == "PSD" else -1.0
    lo = torch.linalg.eigvalsh(sign * 0.5 * (P[bad_def] + P[bad_def].mT)).amin(-1)
    worst = (lo / scale[bad_def]).min().item()
    raise ValueError(
        f"parameter {name}: expected a {word} semidefinite matrix (declared {attr}), got one "
        f"whose {'smallest' if sign > 0 else 'largest'} eigenvalue is "
        f"{'below' if sign > 0 else 'above'} {'−' if sign > 0 else ''}√eps·max|P| "
        f"{_where(bad_def, batched)} (worst: {sign * worst:.3g}·max|P|, √eps = {tol:.3g})")


def check_structured_values(values, slots) -> None:
    """Check every value whose ``ParameterSlot`` declares a ``structure`` (module docstring).

    Args:
        values: one tensor per slot, ``slot.shape`` or ``(B, *slot.shape)`` (shapes already checked).
        slots: ``layers.cvxpy_canonical.ParameterSlot`` list.

    Raises:
        ValueError: naming the parameter, the violated attribute and the offending batch elements.
    """
    for v, s in zip(values, slots):
        if s.structure is not None and v.numel():
            _check_one(s.name, s.structure, v, v.dim() > len(s.shape))
