r"""``ArgminQPSolver``: this library's batched QP solver as a cvxpylayers (≥ 1.2) solver backend.

cvxpylayers canonicalises the problem itself and hands its ``SolverInterface`` the cone program

.. math::

    \min_x \tfrac12 x^\top P x + c^\top x \quad \text{s.t.} \quad A_c x + b_c \in
    \{0\}^{p} \times \mathbb{R}_+^{m}

as value vectors: ``P`` (CSC nonzeros), ``q = (c, constant)``, ``A = `` the CSC nonzeros of
``[A_c | b_c]``, one row per batch element. ``ArgminQPSolver`` scatters them into
``Q = P``, ``G = −A_c^{(\ge)}``, ``h = b_c^{(\ge)}``, ``A = A_c^{(=)}``, ``b = −b_c^{(=)}``, solves
with ``declarative.qp.solve_qp`` under its gradient mode and returns cvxpylayers' primal ``x`` and
dual ``y = (−ν, λ)`` (the sign of ``dual_value``). The backward differentiates the same scatter,
and the multipliers too when they receive a cotangent (``layers.cvxpy_duals``).

Only zero and nonnegative cones are accepted (checked at ``setup``). Matrices that depend on no
parameter are solved unbatched (shared by the batch), and cvxpy's equality-defined auxiliary
variables are eliminated first, as in ``layers.CvxpyLayer`` (``presolve``).

Examples::

    >>> from cvxpylayers.torch import CvxpyLayer as CL
    >>> layer = CL(problem, parameters=[a], variables=[x], solver=layers.ArgminQPSolver())
"""

from __future__ import annotations

import numpy as np
import torch
from cvxpylayers.interfaces.base import SolverInterface

from declarative import GradientMode, resolve_mode
from declarative.qp import QPOptions, QPProblem, solve_qp
from declarative.validation import check_instance

from .cvxpy_duals import differentiable_duals
from .cvxpy_elimination import EliminationChain, eliminable

__all__ = ["ArgminQPSolver"]


def _csc_positions(structure):
    """Row and column of each CSC nonzero of ``structure = (indices, indptr, shape)``."""
    indices, indptr, _ = structure
    return np.asarray(indices), np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def _depends_on_parameters(mat, rows) -> bool:
    """Whether rows ``rows`` of the parameter-to-data matrix have a nonzero outside the constant
    (last) column."""
    sub = mat.tocsr()[rows][:, :-1]
    return sub.nnz > 0 and bool(np.any(sub.data != 0))


class ArgminQPSolver(SolverInterface):
    """A cvxpylayers ``SolverInterface`` running ``declarative.qp.solve_qp`` (batched, torch).

    Pass an instance as ``solver=`` to ``cvxpylayers.torch.CvxpyLayer``; one instance per layer
    (``setup`` records that layer's sparsity structure).

    Args:
        mode: ``"implicit"``, ``"contrastive"``, ``"symmetric"`` or a ``GradientMode`` object.
        beta: nudging strength of the contrastive modes.
        options: ``declarative.QPOptions``.
        presolve: eliminate equality-defined auxiliary variables (``layers.cvxpy_elimination``).

    Raises:
        ValueError: at ``setup``, a canonical form with cones other than zero and nonnegative.
        RuntimeError: in the backward, a nonzero cotangent on the multipliers of a batch element
            where they have no derivative (weakly active or dependent constraints;
            ``layers.cvxpy_duals``, as for ``layers.CvxpyLayer``).
    """

    canon_solver = "CLARABEL"
    supports_quad_obj = True

    def __init__(self, mode: "str | GradientMode" = "implicit", beta: float | None = None,
                 options: QPOptions | None = None, presolve: bool = True):
        self.mode = resolve_mode(mode, beta, problem=QPProblem)
        self.presolve = presolve
        self.options = check_instance("options", options, QPOptions)
        self._ready = False

    def setup(self, ctx) -> None:
        dims = ctx.cone_dims
        other = {"second-order": sum(dims.soc), "exponential": dims.exp, "PSD": sum(dims.psd),
                 "power": len(dims.p3d) + len(getattr(dims, "pnd", []) or [])}
        bad = [f"{k} ({v} rows)" for k, v in other.items() if v]
        if bad:
            raise ValueError(f"problem: ArgminQPSolver expects a canonical form with zero and "
                             f"nonnegative cones only (LP/QP), got {', '.join(bad)} cones; use "
                             f"cvxpylayers' default solver (DIFFCP) for this problem")
        self.p, self.m = int(dims.zero), int(dims.nonneg)
        A_struct = ctx.reduced_A.problem_data_index
        rows, cols = _csc_positions(A_struct)
        self.n = int(A_struct[2][1]) - 1
        n = self.n
        is_b = cols == n
        self._a_pos = torch.as_tensor(np.where(is_b, 0, rows * n + np.minimum(cols, n - 1)))
        self._b_pos = torch.as_tensor(rows)
        self._is_b = torch.as_tensor(is_b)
        self._const_a = not _depends_on_parameters(ctx.reduced_A.reduced_mat, np.nonzero(~is_b)[0])
        P_struct = ctx.reduced_P.problem_data_index
        if P_struct is not None and ctx.reduced_P.reduced_mat is not None:
            prow, pcol = _csc_positions(P_struct)
            self._p_pos = torch.as_tensor(prow * n + pcol)
            self._const_p = not _depends_on_parameters(ctx.reduced_P.reduced_mat, np.arange(len(prow)))
        else:
            self._p_pos, self._const_p = None, True
        self._chain = self._elimination(ctx.reduced_A.reduced_mat, rows, cols) if self.presolve else None
        self._ready = True

    def _elimination(self, mat, rows, cols):
        """The presolve's rounds from the constraint structure (constant part and which entries
        depend on parameters), or None."""
        n, p, m = self.n, self.p, self.m
        csr = mat.tocsr()
        const = np.asarray(csr[:, -1].todense()).reshape(-1)
        dep = np.diff(csr[:, :-1].tocsr().indptr) > 0
        blocks = {}
        for name, sel, r0, nrows in (("A", (cols < n) & (rows < p), 0, p), ("G", (cols < n) & (rows >= p), p, m)):
            dense = np.zeros((nrows, n))
            dense[rows[sel] - r0, cols[sel]] = const[sel] if name == "A" else -const[sel]
            dst = (rows[sel & dep] - r0) * n + cols[sel & dep]
            blocks[name] = (dense, [(dst, None, None)])

        class _Structure:
            pass
        canon = _Structure()
        canon.n, canon.m, canon.p = n, m, p
        canon.constants = {k: v[0] for k, v in blocks.items()}
        canon.maps = {k: v[1] for k, v in blocks.items()}
        rounds = eliminable(canon)
        return EliminationChain(rounds) if rounds else None

    # -- forward -----------------------------------------------------------------------------------
    def _qp(self, P, q, A):
        """The QP blocks from cvxpylayers' value rows (differentiable in P, q, A)."""
        B, n, p, m = q.shape[0], self.n, self.p, self.m
        dev = q.device
        if self._p_pos is None or P is None:
            Q = q.new_zeros(n, n)
        else:
            Pv = P[:1] if self._const_p else P
            Q = Pv.new_zeros(Pv.shape[0], n * n).index_add(-1, self._p_pos.to(dev), Pv).reshape(-1, n, n)
            Q = Q[0] if self._const_p else Q
        is_b = self._is_b.to(dev)
        mat_vals = A[:1] if self._const_a else A
        Mv = torch.where(is_b, 0.0, mat_vals)
        M = Mv.new_zeros(Mv.shape[0], (p + m) * n).index_add(-1, self._a_pos.to(dev), Mv)
        M = M.reshape(-1, p + m, n)
        M = M[0] if self._const_a else M
        bc = A.new_zeros(B, p + m).index_add(-1, self._b_pos.to(dev), torch.where(is_b, A, 0.0))
        G = h = Aeq = beq = None
        if m:
            G, h = -M[..., p:, :], bc[:, p:]
        if p:
            Aeq, beq = M[..., :p, :], -bc[:, :p]
        return Q, q[:, :n], G, h, Aeq, beq

    def solve_torch_batch(self, P, q, A, dims, solver_args, needs_grad):
        if not self._ready:
            raise RuntimeError("ArgminQPSolver: setup(ctx) was not called (pass the solver to "
                               "cvxpylayers.torch.CvxpyLayer)")
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(needs_grad) for t in (P, q, A)]
            blocks = self._qp(*leaves)
            if self._chain is None:
                sol = solve_qp(*blocks, mode=self.mode, options=self.options)
                z, lam, nu = sol.z, sol.duals["lam"], sol.duals["nu"]
            else:
                reduced, trail = self._chain.reduce(*blocks)
                Qr, qr, *rest = reduced
                qr = qr.expand(q.shape[0], -1) if qr.dim() == 1 else qr
                sol = solve_qp(Qr, qr, *rest, mode=self.mode, options=self.options)
                nu = sol.duals["nu"] if sol.duals["nu"].shape[-1] else None
                z, lam, nu = self._chain.recover(sol.z, sol.duals["lam"], nu, trail, True)
        dual = torch.cat([-nu, lam], -1)
        state = (z, lam.detach(), nu.detach(), blocks, sol.solved.reshape(-1), leaves) if needs_grad else None
        return z.detach(), dual.detach(), state

    # -- backward ----------------------------------------------------------------------------------
    def derivative_torch_batch(self, dprimal, ddual, saved_state):
        z, lam, nu, blocks, solved, leaves = saved_state
        wanted = [t for t in leaves if t is not None]
        outs, cots = [z], [dprimal]
        if ddual is not None and bool((ddual != 0).any()):
            # the multipliers' gradient (``layers.cvxpy_duals``), built only when one is needed
            with torch.enable_grad():
                lam_d, nu_d = differentiable_duals(blocks, z, lam, nu, solved)
            p = nu.shape[-1]
            for y, cot in ((nu_d, -ddual[:, :p]), (lam_d, ddual[:, p:])):
                if y is not None:
                    outs.append(y)
                    cots.append(cot)
        # retain_graph: cvxpylayers may call the backward more than once (retain_graph outside)
        grads = torch.autograd.grad(outs, wanted, cots, allow_unused=True, retain_graph=True)
        it = iter(grads)
        out = []
        for t in leaves:
            if t is None:
                out.append(None)
                continue
            g = next(it)
            out.append(torch.zeros_like(t) if g is None else g)
        return tuple(out)
