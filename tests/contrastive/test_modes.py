"""Contrastive and symmetric modes on batches with unsolved elements (``check=False``).

Elements the forward did not solve get a zero gradient, as in ``Implicit``, and contribute nothing
to the gradient of shared (unbatched) parameters; an element the forward solved but the nudged
re-solve did not is an error that names it. Before, any unsolved element made the backward raise.
"""

from __future__ import annotations

import pytest
import torch

import contrastive  # noqa: F401  (registers the modes)
from declarative import SolverError, Status, solve_qp
from declarative.qp.problem import QPProblem
from declarative.reference.qp import random_qp


def _batch_with_unsolved():
    """Four elements sharing Q: 0 and 3 solvable, 1 non-finite (NaN in q), 2 primal infeasible."""
    Q, q, G, h, _, _ = random_qp(4, 3, 4, 0, seed=5)
    Q, q, G, h = Q[0], q.clone(), G.clone(), h.clone()
    q[1, 0] = float("nan")
    G[2, 0], h[2, 0] = -G[2, 1], -h[2, 1] - 1.0
    return Q, q, G, h


def _grads(params, mode, beta, keep=None):
    leaves = [t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, mode=mode, beta=beta, check=False)
    w = torch.linspace(-1.0, 1.0, sol.z.numel(), dtype=sol.z.dtype).reshape(sol.z.shape)
    if keep is not None:
        w = w[keep]
        z = sol.z[keep]
    else:
        z = torch.nan_to_num(sol.z)
    return sol, torch.autograd.grad((z * w).sum(), leaves)


@pytest.mark.parametrize("mode", ["contrastive", "symmetric"])
def test_unsolved_elements_get_zero_gradient(mode):
    params = _batch_with_unsolved()
    sol, grads = _grads(params, mode, 1e-6)
    assert sol.status.tolist() == [0, int(Status.NON_FINITE), int(Status.PRIMAL_INFEASIBLE), 0]
    gQ, gq, gG, gh = grads
    for g in (gq, gG, gh):
        assert torch.isfinite(g).all()
        assert (g[[1, 2]] == 0).all()
    # the solved elements alone (same weights): the same gradients, also for the shared Q
    ok = [0, 3]
    w = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3)
    leaves = [t.detach().clone().requires_grad_() for t in (params[0], params[1][ok], params[2][ok], params[3][ok])]
    sub = solve_qp(*leaves, mode=mode, beta=1e-6)
    ref = torch.autograd.grad((sub.z * w[ok]).sum(), leaves)
    torch.testing.assert_close(gQ, ref[0], atol=1e-9, rtol=1e-9)
    for g, r in zip((gq, gG, gh), ref[1:]):
        torch.testing.assert_close(g[ok], r, atol=1e-9, rtol=1e-9)
    # and, at β = 1e-6 on this smooth problem, the implicit gradient to O(β)
    _, imp = _grads(params, "implicit", None)
    for g, r in zip(grads, imp):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["contrastive", "symmetric"])
def test_nudged_failure_of_a_solved_element_is_named(mode, monkeypatch):
    params = _batch_with_unsolved()
    solve_nudged = QPProblem.solve_nudged

    def failing(self, params, g, beta, warm_start=None):
        sol = solve_nudged(self, params, g, beta, warm_start)
        sol.status = sol.status.clone()
        sol.status[3] = int(Status.MAX_ITERATIONS)
        return sol
    monkeypatch.setattr(QPProblem, "solve_nudged", failing)
    with pytest.raises(SolverError, match=r"nudged re-solve .*batch indices \[3\]: MAX_ITERATIONS") as err:
        _grads(params, mode, 1e-3)
    assert err.value.indices == [3]
