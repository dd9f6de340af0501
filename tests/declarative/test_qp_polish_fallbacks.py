"""The QP solver's fallback paths, forced: the penalty polish (float64) rejecting elements that the
Schur-complement polish then takes, both polishes rejecting in the first phase (the elements iterate
on to the full tolerance and are polished in phase 2), and polishes that never succeed (unpolished
interior-point solutions); and float32 answers whose first polish fails, which are polished at a
later rung instead of being accepted unpolished. In the forced cases the solution and the implicit
gradients of all six parameters must equal those of the normal run — the factorisations cached
for the backward come from different polishes for different elements, which is what could go
wrong.

The reference for the normal run itself is cvxpy (``test_qp_solver``/``test_qp_gradients``); here
the normal run is the reference for the forced ones, plus cvxpy for the solution.
"""

from __future__ import annotations

import pytest
import torch

from declarative import QPOptions, Status, solve_qp
from declarative.qp import ipm
from declarative.reference.qp import degenerate_qp, qp_reference_batch, random_qp

B = 6
REJECT = torch.arange(B) % 2 == 1          # odd batch elements are rejected by the forced polish


def _problems(kind):
    """The parameters and the exact solution: cvxpy's for random problems, the constructed ``z*``
    for the degenerate ones (cvxpy is only accurate to ~√tol at weakly active constraints)."""
    if kind == "random":
        params = random_qp(B, 5, 6, 2, seed=11)
        return params, torch.as_tensor(qp_reference_batch(*params)[0])
    Q, q, G, h, zs, *_ = degenerate_qp(B, seed=5)   # weakly active constraints: the backward QP
    return (Q, q, G, h, None, None), zs


def _solve_and_grads(params, w):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, check=False)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad((sol.z * w).sum(), present)
    return sol, grads


def _rejecting(fn, phases):
    """``fn`` (``_polish_penalty`` or ``_polish``) that rejects the odd elements on its first
    ``phases`` calls: their iterates are returned unchanged, their accepted flag (and the penalty
    polish's far flag) False."""
    calls = [0]

    def wrapped(Q, q, G, h, A, b, z, s, lam, nu, todo, *args, **kwargs):
        out = fn(Q, q, G, h, A, b, z, s, lam, nu, todo, *args, **kwargs)
        if z.shape[0] != REJECT.shape[0]:
            return out      # a sub-batch (the backward QP of the elements with weakly active rows)
        calls[0] += 1
        if calls[0] > phases:
            return out
        # (``_polish_penalty`` adds two masks: its first round converged, far)
        zo, so, lo, no, ok, act, factors, *far = out
        rej = REJECT.to(z.device)
        r_ = rej.unsqueeze(-1)
        return (torch.where(r_, z, zo), torch.where(r_, s, so), torch.where(r_, lam, lo),
                torch.where(r_, nu, no) if nu is not None and no is not None else no, ok & ~rej, act, factors,
                *(f_ & ~rej for f_ in far))

    return wrapped, calls


@pytest.mark.parametrize("kind", ["random", "degenerate"])
@pytest.mark.parametrize("forced", ["penalty", "both-phase-1", "never"])
def test_forced_polish_fallbacks_give_the_same_solution_and_gradients(kind, forced, monkeypatch):
    params, z_ref = _problems(kind)
    w = torch.randn(B, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sol0, grads0 = _solve_and_grads(params, w)
    assert (sol0.status == Status.SOLVED).all()

    if forced == "penalty":
        pen, pen_calls = _rejecting(ipm._polish_penalty, phases=10 ** 6)
        monkeypatch.setattr(ipm, "_polish_penalty", pen)
    elif forced == "both-phase-1":
        pen, pen_calls = _rejecting(ipm._polish_penalty, phases=1)
        sch, sch_calls = _rejecting(ipm._polish, phases=1)
        monkeypatch.setattr(ipm, "_polish_penalty", pen)
        monkeypatch.setattr(ipm, "_polish", sch)
    else:
        pen, pen_calls = _rejecting(ipm._polish_penalty, phases=10 ** 6)
        sch, sch_calls = _rejecting(ipm._polish, phases=10 ** 6)
        monkeypatch.setattr(ipm, "_polish_penalty", pen)
        monkeypatch.setattr(ipm, "_polish", sch)
    sol, grads = _solve_and_grads(params, w)
    assert pen_calls[0] >= 1, "the forced polish was not called: the test no longer reaches the path"
    if forced == "never" and kind == "degenerate":
        # unpolished interior-point iterates at weakly active constraints may miss the SOLVED
        # contract on the original problem (absolute 1e-8); they must then say so
        assert ((sol.status == Status.SOLVED) | (REJECT & (sol.status == Status.INACCURATE))).all()
    else:
        assert (sol.status == Status.SOLVED).all()

    if forced == "never":
        # the odd elements stay unpolished interior-point solutions: accurate to the solver
        # tolerance, not to rounding (O(√μ) at weakly active constraints); their gradients are
        # those of the guessed active set λ > s. The polished elements must be exact, and no
        # gradient may be NaN (a mixed batch once fell back to the barrier form for every element,
        # whose weights are infinite at the polished elements' exactly active constraints).
        keep = ~REJECT
        # (IPM at tol 1e-8: z to ~1e-8·cond where strictly complementary, ~√1e-8 = 1e-4 times
        # a constant at weakly active constraints)
        torch.testing.assert_close(sol.z.detach(), z_ref, rtol=0, atol=1e-6 if kind == "random" else 1e-3)
        torch.testing.assert_close(sol.z[keep], sol0.z[keep], rtol=0, atol=1e-12)
        for g, g0 in zip(grads, grads0):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g[keep], g0[keep], rtol=1e-8, atol=1e-9)
            if kind == "random":   # strictly complementary: the guess is right, IPM accuracy
                torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-5)
        return
    torch.testing.assert_close(sol.z.detach(), z_ref, rtol=0, atol=1e-7)
    torch.testing.assert_close(sol.z, sol0.z, rtol=0, atol=1e-11)
    torch.testing.assert_close(sol.duals["lam"], sol0.duals["lam"], rtol=0, atol=1e-9)
    for g, g0 in zip(grads, grads0):
        torch.testing.assert_close(g, g0, rtol=1e-8, atol=1e-9)


def test_mixed_batch_from_real_inputs_has_finite_gradients():
    # (128, 30, 200): the polish fails at every rung for one element, which converges by the
    # interior-point iterations alone; before the fix the whole batch's backward fell back to the
    # barrier form and the polished elements' gradients were NaN
    params = random_qp(128, 30, 200, 0, seed=3)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, check=False)
    assert (sol.status == Status.SOLVED).all()
    # this element used to stay unpolished; the SOLVED contract on the original problem now sends
    # it up the tolerance ladder until a polish succeeds (no seed of 4–29 leaves one unpolished
    # either). The mixed polished/unpolished batch is forced in
    # ``test_forced_polish_fallbacks_give_the_same_solution_and_gradients[never-*]``; here any
    # unpolished element is still checked against its own solve.
    unpolished = torch.nonzero(~sol.cache["polished"]).reshape(-1)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(sol.z.sum(), present)
    assert all(torch.isfinite(g).all() for g in grads)
    # the unpolished element against the same problem solved on its own
    for i in unpolished.tolist():
        one = [None if t is None else t[i:i + 1].detach().clone().requires_grad_() for t in params]
        sol1 = solve_qp(*one)
        g1 = torch.autograd.grad(sol1.z.sum(), [t for t in one if t is not None])
        for g, gi in zip(grads, g1):
            torch.testing.assert_close(g[i:i + 1], gi, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size, seed", [((128, 30, 90, 0), 1), ((128, 30, 90, 0), 2), ((8, 40, 120, 10), 0)])
def test_float32_answers_whose_first_polish_fails_are_polished_later(size, seed):
    """float32 data: the SOLVED contract's float32 tolerances are met by loose interior-point
    iterates. An element whose polish failed in the first phase used to be accepted there,
    unpolished, and its gradients (the unpolished form) were up to 50 off: random_qp(128, 30, 90)
    seeds 1 and 2, one element each. Such elements now iterate on and are polished at a later
    rung; every element is polished and the float32 gradients equal float64's to float32
    accuracy. (8, 40, 120, 10): an element whose penalty round corrects many rows (far) on the
    rung that already runs to the final tolerances must not skip the Schur-complement polish
    there (it ended SOLVED unpolished, its q-gradient 100 % off)."""
    w = torch.randn(size[0], size[1], dtype=torch.float64, generator=torch.Generator().manual_seed(99))
    params = random_qp(*size, seed=seed)
    sol64, grads64 = _solve_and_grads(params, w)
    sol32, grads32 = _solve_and_grads(tuple(None if t is None else t.float() for t in params), w.float())
    assert (sol32.status == Status.SOLVED).all() and bool(sol32.cache["polished"].all())
    for g, g0 in zip(grads32, grads64):
        torch.testing.assert_close(g.double(), g0, rtol=0, atol=1e-3 * (1 + g0.abs().max().item()))


def test_far_elements_out_of_iterations_keep_the_schur_complement_polish(monkeypatch):
    """An element whose penalty round corrects many rows (far) skips the Schur-complement polish
    only where it iterates on; one that ran out of iterations (``max_iter``) is not retried, so
    it must still take that polish: the statuses equal those of a run that never reports far
    elements (before, 24 of 64 SOLVED against 38)."""
    params = random_qp(64, 30, 90, 0, seed=0)
    opts = QPOptions(polish_tol=1e-1, max_iter=5)
    sol = solve_qp(*params, options=opts, check=False)
    penalty = ipm._polish_penalty

    def never_far(*args, **kwargs):
        out = penalty(*args, **kwargs)
        return (*out[:-1], torch.zeros_like(out[-1]))
    monkeypatch.setattr(ipm, "_polish_penalty", never_far)
    ref = solve_qp(*params, options=opts, check=False)
    assert int((ref.status == Status.SOLVED).sum()) > int((ref.status == Status.MAX_ITERATIONS).sum()) > 0
    assert torch.equal(sol.status, ref.status)
    assert torch.equal(sol.cache["polished"], ref.cache["polished"])


def test_a_kept_point_that_met_the_contract_is_not_replaced_by_a_worse_one(monkeypatch):
    """Polishes that never succeed on the odd elements of the degenerate problems, without the
    second solver: element 3's unpolished iterate meets the contract at one rung and is kept while
    it iterates on; the next rung's point meets the iterations' tolerances but not the contract
    (kept too, as a fallback) and the last rung ends at the iteration limit. The point that met
    the contract is the answer (SOLVED); when the later point replaced it, element 3 was
    INACCURATE. Element 5 meets the contract at no rung and is INACCURATE, as before."""
    params, zs = _problems("degenerate")
    pen, pen_calls = _rejecting(ipm._polish_penalty, phases=10 ** 6)
    sch, _ = _rejecting(ipm._polish, phases=10 ** 6)
    monkeypatch.setattr(ipm, "_polish_penalty", pen)
    monkeypatch.setattr(ipm, "_polish", sch)
    sol = solve_qp(*params, options=QPOptions(proximal_max_iter=0), check=False)
    assert pen_calls[0] >= 3
    assert sol.status.tolist() == [Status.SOLVED] * 5 + [Status.INACCURATE]
    assert not bool(sol.cache["polished"][REJECT].any())
    assert (sol.z[:5] - zs[:5]).abs().max() < 1e-4
