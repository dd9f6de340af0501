r"""Elimination of cvxpy's auxiliary variables from a canonical QP.

cvxpy's canonicalisation introduces variables defined by one equality each — ``t = Fx − g`` for
``sum_squares(Fx − g)``, ``t = y − x`` for ``sum_squares(y − x)`` — which can double the size of
the QP. A canonical variable ``t_j`` is eliminated when it appears in no inequality and in exactly
one equality row ``r``, with a constant coefficient ``a = A_{rj}`` (one such variable per row):

.. math::

    t_E = M y + c, \qquad M = −A_{R,K} / a, \quad c = b_R / a,

with ``K`` the kept variables ``y`` and ``R`` the eliminated rows. With ``z = (y, My + c)`` the QP
becomes

.. math::

    Q' = Q_{KK} + Q_{KE} M + M^\top Q_{EK} + M^\top Q_{EE} M, \quad
    q' = q_K + M^\top q_E + (Q_{KE} + M^\top Q_{EE}) c,

``G' = G_{:,K}``, ``h' = h``, ``A' = A_{R^c,K}``, ``b' = b_{R^c}`` — the same minimiser, ``Q'``
positive semidefinite when ``Q`` is. Everything is torch (differentiable: ``M`` and ``c`` may
depend on the parameters, then ``Q'``/``q'`` do too). The multiplier of an eliminated row follows
from stationarity in ``t_j``: ``ν_r = −(Qz + q)_j / a``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Elimination", "EliminationChain", "eliminable"]


def _structure(const: np.ndarray, maps, shape) -> tuple[np.ndarray, np.ndarray]:
    """(nonzero mask, parameter-dependent mask) of a block, as dense boolean arrays."""
    nz = const.reshape(-1) != 0
    dep = np.zeros(nz.shape, dtype=bool)
    for m in maps:
        if m is not None:
            dep[m[0]] = True
    return (nz | dep).reshape(shape), dep.reshape(shape)


def _eliminable_once(A_nz, A_dep, G_nz):
    """``(E, R)``: one eliminable variable per equality row where there is one, or None."""
    in_g = G_nz.any(0)
    once = A_nz.sum(0) == 1
    cand = A_nz & ~A_dep & once[None, :] & ~in_g[None, :]
    rows, cols = [], []
    for r in range(A_nz.shape[0]):
        js = np.nonzero(cand[r])[0]
        if len(js):
            rows.append(r)
            cols.append(js[0])
    return (np.asarray(cols), np.asarray(rows)) if rows else None


def eliminable(canon, max_rounds: int = 64) -> list:
    """Rounds of eliminations ``[(n, p, E, R, a), ...]`` (module docstring), each on the QP left by
    the previous ones: eliminating ``t`` can leave a variable that appeared in two rows in one
    (e.g. the states of an MPC, condensed from the last one back to ``x_0``). Empty if none."""
    n, m, p = canon.n, canon.m, canon.p
    if p == 0:
        return []
    A_nz, A_dep = _structure(canon.constants["A"], canon.maps["A"], (p, n))
    G_nz = _structure(canon.constants["G"], canon.maps["G"], (m, n))[0] if m else np.zeros((0, n), bool)
    A_const = canon.constants["A"]
    rounds = []
    while A_nz.shape[0] and len(rounds) < max_rounds:
        found = _eliminable_once(A_nz, A_dep, G_nz)
        if found is None:
            break
        E, R = found
        n_cur, p_cur = A_nz.shape[1], A_nz.shape[0]
        rounds.append((n_cur, p_cur, E, R, A_const[R, E]))
        K, Rc = np.setdiff1d(np.arange(n_cur), E), np.setdiff1d(np.arange(p_cur), R)
        A_nz, A_dep, A_const = (x[Rc][:, K] for x in (A_nz, A_dep, A_const))
        G_nz = G_nz[:, K]
    return rounds


class Elimination(nn.Module):
    """One round: reduce the QP blocks and map the reduced solution back (module docstring).

    Args:
        n, p: variables and equality rows of the QP it reduces.
        E, R: eliminated variables and their rows. a: their (constant) coefficients ``A_{R,E}``.
    """

    def __init__(self, n, p, E, R, a):
        super().__init__()
        K = np.setdiff1d(np.arange(n), E)
        Rc = np.setdiff1d(np.arange(p), R)
        for name, val in (("E", E), ("R", R), ("K", K), ("Rc", Rc)):
            self.register_buffer(name, torch.as_tensor(val, dtype=torch.int64))
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))
        self.n = n

    def _affine(self, A, b):
        """``M (…, |E|, |K|)`` and ``c (…, |E|)`` of ``t_E = M y + c``."""
        a = self.a.to(A.dtype)
        AR = A.index_select(-2, self.R)
        M = -AR.index_select(-1, self.K) / a.unsqueeze(-1)
        c = b.index_select(-1, self.R) / a
        return M, c

    def reduce(self, Q, q, G, h, A, b):
        """The reduced blocks ``(Q', q', G', h', A', b')`` and ``(M, c)``."""
        M, c = self._affine(A, b)
        K, E = self.K, self.E
        QKK = Q.index_select(-2, K).index_select(-1, K)
        QKE = Q.index_select(-2, K).index_select(-1, E)
        QEE = Q.index_select(-2, E).index_select(-1, E)
        Mt = M.transpose(-1, -2)
        QKE_M = QKE @ M
        W = QKE + Mt @ QEE                                   # (…, |K|, |E|)
        Qr = QKK + QKE_M + QKE_M.transpose(-1, -2) + Mt @ QEE @ M
        qE = q.index_select(-1, E)
        qr = q.index_select(-1, K) + (Mt @ qE.unsqueeze(-1)).squeeze(-1) + (W @ c.unsqueeze(-1)).squeeze(-1)
        Gr = None if G is None else G.index_select(-1, K)
        Ar = br = None
        if self.Rc.numel():
            Ar = A.index_select(-2, self.Rc).index_select(-1, K)
            br = b.index_select(-1, self.Rc)
        return (Qr, qr, Gr, h, Ar, br), (M, c)

    def primal(self, y, M, c):
        """The canonical ``z (B, n)`` from the reduced solution ``y (B, |K|)``."""
        tE = (M @ y.unsqueeze(-1)).squeeze(-1) + c
        tE = tE.expand(y.shape[0], -1)
        z = y.new_zeros(y.shape[0], self.n)
        return z.index_copy(-1, self.K, y).index_copy(-1, self.E, tE)

    def equality_duals(self, nu_rest, z, Q, q):
        """Multipliers ``ν (B, p)`` of every equality row: the reduced problem's for the kept
        rows, ``−(Qz + q)_j / a`` for the eliminated ones (without gradient)."""
        z, Q, q = z.detach(), Q.detach(), q.detach()
        grad = (Q @ z.unsqueeze(-1)).squeeze(-1) + q if Q.dim() == 3 else z @ Q.T + q
        nuR = -grad.index_select(-1, self.E) / self.a.to(z.dtype)
        p = self.R.numel() + self.Rc.numel()
        nu = z.new_zeros(z.shape[0], p).index_copy(-1, self.R, nuR.expand(z.shape[0], -1))
        if nu_rest is not None and self.Rc.numel():
            nu = nu.index_copy(-1, self.Rc, nu_rest.detach())
        return nu


class EliminationChain(nn.Module):
    """The rounds of ``eliminable`` applied in turn (``reduce``) and undone in reverse
    (``recover``)."""

    def __init__(self, rounds):
        super().__init__()
        self.rounds = nn.ModuleList(Elimination(*r) for r in rounds)

    def reduce(self, *blocks):
        """The reduced blocks and what ``recover`` needs (each round's blocks and ``(M, c)``)."""
        trail = []
        for r in self.rounds:
            reduced, affine = r.reduce(*blocks)
            trail.append((blocks, affine))
            blocks = reduced
        return blocks, trail

    def recover(self, z, lam, nu, trail, need_nu: bool):
        """The canonical ``z`` and (if ``need_nu``) ``ν`` from the reduced solution ``(B, ·)``."""
        for r, (blocks, affine) in zip(reversed(self.rounds), reversed(trail)):
            z = r.primal(z, *affine)
            if need_nu:
                nu = r.equality_duals(nu, z, blocks[0], blocks[1])
        return z, lam, nu
