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
positive semidefinite when ``Q`` is. Eliminating variables can make others eliminable (the
states of an MPC, from the last one back to ``x_0``): ``eliminable`` finds the rounds on the
structure, and ``EliminationChain`` applies all of them at once — ordered by round, ``A_{R,E}``
is triangular and ``M = −A_{R,E}^{-1} A_{R,K}``, ``c = A_{R,E}^{-1} b_R`` cost one triangular
solve. Everything is torch (differentiable: ``M`` and ``c`` may depend on the parameters, then
``Q'``/``q'`` do too). The multipliers of the eliminated rows follow from stationarity in
``t_E``: ``A_{R,E}^\top ν_R = −(Qz + q)_E``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["EliminationChain", "eliminable"]


def _structure(const: np.ndarray, maps, shape) -> tuple[np.ndarray, np.ndarray]:
    """(nonzero mask, parameter-dependent mask) of a block, as dense boolean arrays."""
    nz = const.reshape(-1) != 0
    dep = np.zeros(nz.shape, dtype=bool)
    for m in maps:
        if m is not None:
            dep[m[0]] = True
    return (nz | dep).reshape(shape), dep.reshape(shape)


def _eliminable_once(A_nz, A_dep, G_nz):
    """``(E, R)``: per equality row with a candidate, its first eliminable variable (the lowest
    column), or None. A candidate appears in one row only, so the variables are distinct."""
    once = A_nz.sum(0) == 1
    cand = A_nz & ~A_dep & (once & ~G_nz.any(0))[None, :]
    R = np.flatnonzero(cand.any(1))
    if not len(R):
        return None
    return cand[R].argmax(1), R


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
        p_cur, n_cur = A_nz.shape
        rounds.append((n_cur, p_cur, E, R, A_const[R, E]))
        K, Rc = np.ones(n_cur, bool), np.ones(p_cur, bool)
        K[E], Rc[R] = False, False
        A_nz, A_dep, A_const = (x[Rc][:, K] for x in (A_nz, A_dep, A_const))
        G_nz = G_nz[:, K]
    return rounds


def _combine(rounds):
    """The rounds as one elimination on the original QP: ``(n, p, E, R)`` in original indices,
    ordered round by round (``A_{R,E}`` is then upper triangular, see ``EliminationChain``)."""
    n, p = rounds[0][0], rounds[0][1]
    vars_alive, rows_alive = np.arange(n), np.arange(p)
    E_all, R_all = [], []
    for _, _, E, R, _ in rounds:
        E_all.append(vars_alive[E])
        R_all.append(rows_alive[R])
        vars_alive, rows_alive = np.delete(vars_alive, E), np.delete(rows_alive, R)
    return n, p, np.concatenate(E_all), np.concatenate(R_all)


class EliminationChain(nn.Module):
    r"""The rounds of ``eliminable``, applied as one elimination (``reduce``) and undone
    (``recover``).

    Ordered round by round, the eliminated rows ``R`` and variables ``E`` give an upper triangular
    ``A_{R,E}`` with the constant coefficients ``a`` on its diagonal: a variable of round ``i``
    appears only in rows still present at round ``i``, and among those only in its own row, so not
    in the rows of later rounds — nor in any kept row or any inequality. Hence

    .. math::

        t_E = M y + c, \qquad M = -A_{R,E}^{-1} A_{R,K}, \quad c = A_{R,E}^{-1} b_R

    (one batched triangular solve, whatever the number of rounds: the states of an MPC are
    condensed in one step), and the multipliers of the eliminated rows follow from stationarity
    in ``t_E``: ``A_{R,E}^\top ν_R = −(Qz + q)_E`` (a transposed triangular solve).

    Args:
        rounds: the output of ``eliminable`` (non-empty); kept as ``rounds``.
    """

    def __init__(self, rounds):
        super().__init__()
        self.rounds = list(rounds)
        n, p, E, R = _combine(self.rounds)
        K = np.setdiff1d(np.arange(n), E)
        Rc = np.setdiff1d(np.arange(p), R)
        for name, val in (("E", E), ("R", R), ("K", K), ("Rc", Rc)):
            self.register_buffer(name, torch.as_tensor(val, dtype=torch.int64), persistent=False)
        self.n = n

    def _affine(self, A, b):
        """``M (…, |E|, |K|)``, ``c (…, |E|)`` of ``t_E = M y + c`` and ``A_{R,E}``."""
        AR = A.index_select(-2, self.R)
        ARE = AR.index_select(-1, self.E)
        M = -torch.linalg.solve_triangular(ARE, AR.index_select(-1, self.K), upper=True)
        bR = b.index_select(-1, self.R)
        if ARE.dim() == 2 and bR.dim() == 2:       # one matrix, the batch as right-hand sides
            c = torch.linalg.solve_triangular(ARE, bR.mT, upper=True).mT
        else:
            c = torch.linalg.solve_triangular(ARE, bR.unsqueeze(-1), upper=True).squeeze(-1)
        return M, c, ARE

    def reduce(self, Q, q, G, h, A, b):
        """The reduced blocks ``(Q', q', G', h', A', b')`` (module docstring) and what ``recover``
        needs."""
        M, c, ARE = self._affine(A, b)
        K, E = self.K, self.E
        QK = Q.index_select(-2, K)
        QKK = QK.index_select(-1, K)
        QKE = QK.index_select(-1, E)
        QEE = Q.index_select(-2, E).index_select(-1, E)
        Mt = M.transpose(-1, -2)
        QKE_M = QKE @ M
        W = QKE + Mt @ QEE                                   # (…, |K|, |E|)
        Qr = QKK + QKE_M + QKE_M.transpose(-1, -2) + Mt @ QEE @ M
        qE = q.index_select(-1, E)
        qr = q.index_select(-1, K) + _mv(Mt, qE) + _mv(W, c)
        Gr = None if G is None else G.index_select(-1, K)
        Ar = br = None
        if self.Rc.numel():
            Ar = A.index_select(-2, self.Rc).index_select(-1, K)
            br = b.index_select(-1, self.Rc)
        return (Qr, qr, Gr, h, Ar, br), (Q, q, M, c, ARE)

    def recover(self, z, lam, nu, trail, need_nu: bool):
        """The canonical ``z (B, n)`` and (if ``need_nu``) ``ν`` from the reduced solution
        ``(B, ·)``; the multipliers of the eliminated rows are values (without gradient)."""
        Q, q, M, c, ARE = trail
        y = z
        tE = (_mv(M, y) + c).expand(y.shape[0], -1)
        z = y.new_zeros(y.shape[0], self.n).index_copy(-1, self.K, y).index_copy(-1, self.E, tE)
        if need_nu:
            nu = self._equality_duals(nu, z, Q, q, ARE)
        return z, lam, nu

    def _equality_duals(self, nu_rest, z, Q, q, ARE):
        """``ν (B, p)``: the reduced problem's for the kept rows, ``A_{R,E}^{−⊤}(−(Qz + q)_E)``
        for the eliminated ones."""
        z, Q, q, ARE = z.detach(), Q.detach(), q.detach(), ARE.detach()
        grad = _mv(Q, z) if Q.dim() == 3 else z @ Q.mT
        rhs = -(grad + q).index_select(-1, self.E)
        if ARE.dim() == 2:
            nuR = torch.linalg.solve_triangular(ARE.mT, rhs.mT, upper=False).mT
        else:
            nuR = torch.linalg.solve_triangular(ARE.mT, rhs.unsqueeze(-1), upper=False).squeeze(-1)
        p = self.R.numel() + self.Rc.numel()
        nu = z.new_zeros(z.shape[0], p).index_copy(-1, self.R, nuR.expand(z.shape[0], -1))
        if nu_rest is not None and self.Rc.numel():
            nu = nu.index_copy(-1, self.Rc, nu_rest.detach())
        return nu


def _mv(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``M x`` for ``M (…, r, k)`` and ``x (…, k)`` (one matrix and a batch of vectors: one
    product)."""
    if M.dim() == 2:
        return x @ M.mT
    return (M @ x.unsqueeze(-1)).squeeze(-1)
