"""The polish (``declarative.qp.polish``) and its clean-up of the multipliers
(``declarative.qp.least_norm``): at a degenerate vertex the optimal multipliers form a ray, and a
point far along it (terms of 1e7 that cancel) is replaced by the least-norm non-negative one;
elements without cancellation, and those not polished, are left as they are. Its rounds: when a
guess stops (unchanged, cycling, far off) and how loose the iterate it starts from is."""

from __future__ import annotations

import pytest
import torch

from declarative import QPOptions, Status, solve_qp
from declarative.qp import ipm
from declarative.qp.least_norm import _least_norm_multipliers
from declarative.qp.polish import _PENALTY_RISES, _PENALTY_ROUNDS_ALL, _next_round


def _degenerate_vertex():
    """``z* = 0`` of ``min ½‖z‖² + qᵀz`` with ``z₁ + z₂ = 0`` and ``z₁ ≥ 0``, ``z₂ ≥ 0``,
    ``z₁ + z₂ ≥ 0`` (all active, dependent rows), one inactive row ``z₃ ≤ 1``; stationarity
    ``ν − λ₁ − λ₃ = −1``, ``ν − λ₂ − λ₃ = −2``: the multipliers ``(ν, λ₁, λ₂, λ₃) = (t, t + 1, t + 2, 0)``
    are optimal for every ``t ≥ 0``, and so are those with ``λ₃ > 0``."""
    n = 4
    Q = torch.eye(n, dtype=torch.float64).unsqueeze(0)
    q = torch.tensor([[1.0, 2.0, 0.5, -0.25]], dtype=torch.float64)
    G = torch.tensor([[[-1.0, 0, 0, 0], [0, -1.0, 0, 0], [-1.0, -1.0, 0, 0], [0, 0, 1.0, 0]]],
                     dtype=torch.float64)
    A = torch.tensor([[[1.0, 1.0, 0, 0]]], dtype=torch.float64)
    z = torch.tensor([[0.0, 0.0, -0.5, 0.25]], dtype=torch.float64)
    return Q, q, G, A, z


def test_cancelling_multipliers_become_least_norm():
    Q, q, G, A, z = _degenerate_vertex()
    t = torch.tensor([1e7, 0.0, 1e7], dtype=torch.float64)      # far along the ray, at its start
    lam = torch.stack([t + 1, t + 2, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)], -1)
    nu = t.unsqueeze(-1).clone()
    polished = torch.tensor([True, True, False])
    z3 = z.expand(3, 4)
    lam2, nu2 = _least_norm_multipliers(Q, q, G, A, z3, lam, nu, polished)
    stat = lambda l_, n_: (z3 @ Q[0].T + q + l_ @ G[0] + n_ @ A[0]).abs().amax(-1)   # noqa: E731
    # element 0: cancelling multipliers of 1e7 -> the least-norm ones on the rows with λ > 0
    # (λ₁, λ₂; λ₃ = 0 stays out): min ν² + λ₁² + λ₂² s.t. ν − λ₁ = −1, ν − λ₂ = −2, λ ≥ 0 is
    # ν = −1, λ = (0, 1) (the least-norm QP's answer, polished: exact to rounding)
    assert (lam2[0] >= 0).all()
    torch.testing.assert_close(lam2[0], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(nu2[0], torch.tensor([-1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert stat(lam2[:1], nu2[:1])[0].item() < 1e-12
    # element 1: no cancellation (the least-norm multipliers already); element 2: not polished
    assert torch.equal(lam2[1:], lam[1:]) and torch.equal(nu2[1:], nu[1:])


def test_full_step_lands_on_the_least_norm_multipliers():
    """A full step to the least-norm multipliers takes them exactly: ``y + (ymn − y)`` would keep a
    rounding error of ``u·‖y‖`` (2e-9 at multipliers of 1e7) from the cancelling ones. Random data
    (off any common grid): rows ``a·z ≤ 0`` and ``a·z = 0`` at a point where they are active, with
    small true multipliers and 1e7·π added along the ray ``(λ₀, ν₀) = (t, −t)``."""
    g = torch.Generator().manual_seed(0)
    B, n = 6, 5
    f64 = torch.float64
    Q = torch.randn(B, n, n, generator=g, dtype=f64)
    Q = Q @ Q.mT / n + 0.1 * torch.eye(n, dtype=f64)
    a = torch.randn(B, 1, n, generator=g, dtype=f64)
    G = torch.cat([a, torch.randn(B, 2, n, generator=g, dtype=f64)], 1)
    A = a.clone()
    z = torch.randn(B, n, generator=g, dtype=f64)
    z = z - (z * a[:, 0]).sum(-1, keepdim=True) / (a[:, 0] ** 2).sum(-1, keepdim=True) * a[:, 0]   # a·z = 0
    lam_true = torch.cat([torch.rand(B, 1, generator=g, dtype=f64), torch.zeros(B, 2, dtype=f64)], 1)
    nu_true = torch.zeros(B, 1, dtype=f64)
    q = -(torch.einsum("bij,bj->bi", Q, z) + torch.einsum("bm,bmn->bn", lam_true, G)
          + torch.einsum("bp,bpn->bn", nu_true, A))
    t = 1e7 * torch.pi
    lam = lam_true.clone()
    lam[:, 0] += t
    nu = nu_true - t
    lam2, nu2 = _least_norm_multipliers(Q, q, G, A, z, lam, nu, torch.ones(B, dtype=torch.bool))
    stat = (torch.einsum("bij,bj->bi", Q, z) + q + torch.einsum("bm,bmn->bn", lam2, G)
            + torch.einsum("bp,bpn->bn", nu2, A)).abs().amax(-1)
    assert (lam2 >= 0).all() and lam2.abs().amax() < 10
    assert stat.amax().item() < 1e-12, stat


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_least_norm_step_with_an_equality_block_of_zero_rows(dtype):
    """An equilibrated batch (objective of 1e7) with ``A`` of zero rows: the least-norm step sees
    the original data, whose ``A`` keeps its zero rows (the solver's own has none); it raised an
    IndexError there. Solved, with the exact multipliers."""
    Q = torch.eye(3, dtype=dtype).expand(2, 3, 3)
    q = -1e7 * torch.tensor([[1.0], [2.0]], dtype=dtype).expand(2, 3)
    G, h = torch.eye(3, dtype=dtype), torch.zeros(3, dtype=dtype)
    sol = solve_qp(Q, q, G, h, torch.zeros(0, 3, dtype=dtype), torch.zeros(0, dtype=dtype), check=False)
    assert sol.status.tolist() == [Status.SOLVED, Status.SOLVED]
    torch.testing.assert_close(sol.duals["lam"], -q, rtol=1e-6, atol=0)
    assert sol.duals["nu"].shape == (2, 0)


def test_next_round_stops_unchanged_and_cycling_guesses():
    """``_next_round``: an element goes on while not accepted and its guess changes (after the first
    ``_PENALTY_ROUNDS_ALL`` rounds only if its refinement converged), and until the number of
    corrected rows has risen ``_PENALTY_RISES + 1`` times (counted from round
    ``_PENALTY_ROUNDS_ALL`` on)."""
    act = torch.tensor([[True, False, False], [True, False, False], [True, True, False]])
    new = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    ok = torch.tensor([False, False, True])
    zero = torch.zeros(3, dtype=torch.int64)
    conv = torch.ones(3, dtype=torch.bool)
    fixes, rises, go = _next_round(act, new, ok, conv, 0, zero, zero)
    assert fixes.tolist() == [1, 0, 0] and rises.tolist() == [0, 0, 0]
    assert go.tolist() == [True, False, False]     # changed / unchanged (would repeat) / accepted
    # a refinement that diverged: a further round within the first ones, none after them
    assert _next_round(act, new, ok, ~conv, 0, zero, zero)[2].tolist() == [True, False, False]
    late_ = _PENALTY_ROUNDS_ALL - 1
    assert _next_round(act, new, ok, ~conv, late_, zero, zero)[2].tolist() == [False, False, False]
    # in the first rounds a rise is not counted; later each rise is, and the last allowed one passes
    early = _PENALTY_ROUNDS_ALL - 2
    assert _next_round(act, new, ok, conv, early, zero, zero)[1].tolist() == [0, 0, 0]
    late = _PENALTY_ROUNDS_ALL - 1
    at_limit = torch.full((3,), _PENALTY_RISES - 1, dtype=torch.int64)
    _, rises, go = _next_round(act, new, ok, conv, late, zero, at_limit)
    assert rises[0] == _PENALTY_RISES and go[0]
    _, rises, go = _next_round(act, new, ok, conv, late, zero, rises)
    assert rises[0] == _PENALTY_RISES + 1 and not go[0]
    # no rise (the same number of corrected rows): goes on
    _, rises, go = _next_round(act, new, ok, conv, late, torch.ones(3, dtype=torch.int64), at_limit + 1)
    assert rises[0] == _PENALTY_RISES and go[0]


def _condensed_mpc(B, T=10, nx=4, nu=2, seed=3):
    """``min Σ‖x_t‖² + ‖u_t‖²`` over the inputs of ``x_{t+1} = A x_t + B u_t`` from ``x_0``
    (batched), ``−1 ≤ u ≤ 1``: the states eliminated, ``x = Φ x_0 + Γ u``."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    A = torch.eye(nx, **f64) + 0.1 * torch.randn(nx, nx, generator=g, **f64)
    Bu = torch.randn(nx, nu, generator=g, **f64)
    x0 = 3 * torch.randn(B, nx, generator=g, **f64)
    powers = [torch.linalg.matrix_power(A, t) for t in range(T + 1)]
    Phi = torch.cat(powers[1:])                                               # (T·nx, nx)
    Gam = torch.zeros(T, nx, T, nu, **f64)
    for t in range(1, T + 1):
        for k in range(t):
            Gam[t - 1, :, k] = powers[t - 1 - k] @ Bu
    Gam = Gam.reshape(T * nx, T * nu)
    n = T * nu
    Q = 2 * (Gam.T @ Gam + torch.eye(n, **f64))
    q = 2 * (x0 @ Phi.T) @ Gam
    G = torch.cat([torch.eye(n, **f64), -torch.eye(n, **f64)])
    return Q, q, G, torch.ones(2 * n, **f64)


def test_penalty_polish_follows_an_mpc_chain_of_active_bounds(monkeypatch):
    """An input bound that becomes active moves the others along the horizon: the guesses are
    corrected a link or two a round. The first penalty polish accepts nearly every element (with 4
    rounds: 55 of 64), and every element is SOLVED as a cvxpy-free check of the answer: the KKT
    conditions hold."""
    Q, q, G, h = _condensed_mpc(64)
    calls = []
    penalty = ipm._polish_penalty

    def recording(*args, **kwargs):
        out = penalty(*args, **kwargs)
        calls.append((int(args[10].sum()), int(out[4].sum())))
        return out
    monkeypatch.setattr(ipm, "_polish_penalty", recording)
    sol = solve_qp(Q, q, G, h)
    assert (sol.status == Status.SOLVED).all()
    assert calls[0][0] == 64 and calls[0][1] >= 62
    lam = sol.duals["lam"]
    stat = sol.z @ Q + q + lam @ G
    assert stat.abs().max() < 1e-9 * (1 + q.abs().max())
    assert (sol.z.abs() <= 1 + 1e-12).all() and (lam >= 0).all()
    assert (lam * (h - sol.z @ G.T)).abs().max() < 1e-9


def test_far_guesses_iterate_on_instead_of_the_schur_complement_polish(monkeypatch):
    """Random QPs with twice as many rows as variables, stopped at the loose ``polish_tol=1e-1``:
    several elements' first penalty round corrects more than ``max(8, n/4)`` rows. They stop
    polishing there (reported far), skip the first phase's Schur-complement polish and are
    polished after the next rung's iterations; every element ends SOLVED and polished, at
    cvxpy's (Clarabel's) solution."""
    from declarative.qp.polish import _give_up_threshold
    from declarative.reference.qp import qp_reference_batch, random_qp
    params = random_qp(8, 32, 64, 0, seed=0)
    penalty, schur = ipm._polish_penalty, ipm._polish
    far_first, schur_todo = [], []

    def recording_penalty(*args, **kwargs):
        out = penalty(*args, **kwargs)
        if kwargs.get("give_up") and not far_first:
            far_first.append(out[-1].clone())
        assert not kwargs.get("give_up") or not bool((out[-1] & out[4]).any())   # far: not accepted
        return out

    def recording_schur(*args, **kwargs):
        schur_todo.append(args[10].clone())
        return schur(*args, **kwargs)
    monkeypatch.setattr(ipm, "_polish_penalty", recording_penalty)
    monkeypatch.setattr(ipm, "_polish", recording_schur)
    sol = solve_qp(*params, options=QPOptions(polish_tol=1e-1), check=False)
    assert _give_up_threshold(32) == 8
    far = far_first[0]
    assert int(far.sum()) >= 2, far
    if schur_todo:   # the first phase's Schur-complement polish, if any, leaves the far elements out
        assert not bool((schur_todo[0] & far).any())
    assert (sol.status == Status.SOLVED).all() and bool(sol.cache["polished"].all())
    z_ref, *_ = qp_reference_batch(*params)
    assert (sol.z - torch.from_numpy(z_ref)).abs().max() < 1e-6


def test_first_phase_tolerance_by_the_rows_that_can_be_active_together():
    """``polish_tol=None``: 1e-3 where at least 2n rows can be active together, counting a
    variable's lower and upper bound rows once (box constraints alone: 1e-1, or 1e-2 with float32
    first-phase iterations); over a batch, its largest count."""
    from declarative.qp.ipm import _default_polish_tol, _rows_active_together
    g = torch.Generator().manual_seed(0)
    n = 6
    eye = torch.eye(n, dtype=torch.float64)
    box = torch.cat([eye, -eye])                                  # 2n rows, n can be active
    general = torch.randn(2 * n, n, generator=g, dtype=torch.float64)
    assert _rows_active_together(box) == n
    assert _rows_active_together(general) == 2 * n
    assert _rows_active_together(torch.cat([box, general[:3]])) == n + 3
    zero = torch.zeros(2 * n, n, dtype=torch.float64)
    assert _rows_active_together(torch.cat([general[:3], zero])) == 3   # zero rows (padding)
    assert _default_polish_tol(torch.cat([general[:3], zero]), n, mixed=False) == 1e-1
    assert _default_polish_tol(box, n, mixed=False) == 1e-1
    assert _default_polish_tol(box, n, mixed=True) == 1e-2
    assert _default_polish_tol(general, n, mixed=False) == 1e-3
    assert _default_polish_tol(general[:2 * n - 1], n, mixed=False) == 1e-1
    assert _default_polish_tol(None, n, mixed=False) == 1e-1
    batch = torch.stack([torch.cat([box, box[:n]]), torch.cat([general[:n], box])])   # n and 2n
    assert _rows_active_together(batch) == 2 * n                  # the second element's count
    assert _default_polish_tol(batch, n, mixed=False) == 1e-3


def _penalty_round_data(B, n, m, frac, seed):
    """``Q`` (positive definite), ``G``, random active masks (a fraction ``frac`` of the rows), their
    weights ``1e3`` and a regularisation ``1e-10``: the inputs of a penalty round's factorisation."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    G = torch.randn(B, m, n, generator=g, dtype=torch.float64)
    act = torch.rand(B, m, generator=g) < frac
    return R @ R.mT / n, G, act, 1e3 * act.to(torch.float64), torch.full((B, 1), 1e-10, dtype=torch.float64)


def test_penalty_factor_on_the_gathered_active_rows():
    """``_penalty_factor`` on the gathered rows of the active masks (padded to the largest count)
    factorises the same matrix ``Q + Gᵀ diag(w) G + δI`` as on all rows (zero weights off the
    masks), also into the memory of a ``_Scratch``; a released factor is not overwritten by the
    next one (``n = 130``: the factorisation runs in place, in the scratch memory)."""
    from declarative.qp.linalg import _Scratch
    from declarative.qp.polish import _penalty_factor
    B, n, m = 4, 130, 200
    Q, G, act, wk, reg = _penalty_round_data(B, n, m, 0.3, seed=3)
    opts = QPOptions()
    k = int(act.sum(-1).max())
    full = _penalty_factor(Q, G, None, wk, act, reg, None, opts, None, None)
    scratch = _Scratch("cpu")
    gathered = _penalty_factor(Q, G, None, wk, act, reg, None, opts, k, scratch)
    H = Q + G.mT @ (wk.unsqueeze(-1) * G) + 1e-10 * torch.eye(n, dtype=torch.float64)
    for fac in (full, gathered):
        assert ((fac.L.mT @ fac.L - H).abs().max() / H.abs().max()) < 1e-13
    kept = gathered.L.clone()
    again = _penalty_factor(Q, G, None, 2 * wk, act, reg, None, opts, k, scratch)
    assert again.L.data_ptr() == gathered.L.data_ptr()           # the same memory, reused
    scratch.release("H")
    other = _penalty_factor(Q, G, None, wk, act, reg, None, opts, k, scratch)
    assert other.L.data_ptr() != again.L.data_ptr()
    assert not torch.equal(again.L, kept) and torch.equal(other.L, kept)


def test_gathered_penalty_rounds_give_the_same_answers_and_gradients(monkeypatch):
    """The penalty polish with gathered rows and reused memory (``gather=True``, the default of
    large problems) over several rounds — the loose ``polish_tol=1e-1`` leaves most first guesses
    a few rows off — gives the answers, statuses, implicit gradients and kept factors of the plain
    one (the backward reuses the factors the rounds kept; at ``B·n² ≥ 2¹⁶`` they are factorised in
    place, in the reused memory, which a later round must not overwrite)."""
    from declarative.qp import polish
    from declarative.reference.qp import random_qp
    penalty, next_round = ipm._polish_penalty, polish._next_round
    results, rounds = [], []

    def recording(act, new_act, ok, *args):
        rounds.append((ok.shape[0], int(ok.sum())))
        return next_round(act, new_act, ok, *args)
    monkeypatch.setattr(polish, "_next_round", recording)

    def solve(gather):
        monkeypatch.setattr(ipm, "_polish_penalty", lambda *args, **kwargs: penalty(*args, **kwargs, gather=gather))
        params = [t.clone().requires_grad_(True) for t in random_qp(16, 70, 70, 0, seed=2) if t is not None]
        sol = solve_qp(*params, options=QPOptions(polish_tol=1e-1), check=False)
        grads = torch.autograd.grad((sol.z * torch.linspace(-1, 1, 70, dtype=torch.float64)).sum(), params)
        results.append((sol, grads))
    solve(False)
    solve(True)
    (s0, g0), (s1, g1) = results
    # the first round on the whole batch accepts some elements (their factors are kept) and the
    # next round, on the others, factorises again
    assert 0 < rounds[0][1] < rounds[0][0] == 16 and rounds[1][0] == 16 - rounds[0][1]
    assert torch.equal(s0.status, s1.status) and (s1.status == Status.SOLVED).all()
    assert torch.equal(s0.cache["polished"], s1.cache["polished"])
    assert (s0.z - s1.z).abs().max() < 1e-12
    for a, b in zip(g0, g1):
        assert (a - b).abs().max() <= 1e-9 * (1 + a.abs().max())
    # the kept factors themselves (the backward's refinement would fall back to a fresh
    # factorisation where one were overwritten: only slower, so compared here)
    ok = s1.cache["pre_ok"]
    assert torch.equal(ok, s0.cache["pre_ok"]) and bool(ok.any())
    U0, U1 = s0.cache["pre_U"][ok], s1.cache["pre_U"][ok]
    assert (U0 - U1).abs().max() <= 1e-10 * U0.abs().max()


def test_proximal_refinement_goes_on_while_its_residuals_fall():
    """``_refine_active`` with a proximal weight on its factor (``H = Q + c G_KᵀG_K + δI``, δ = 0.2
    against unit curvature: each step contracts the error by about δ/(1 + δ) = 1/6): the plain
    loop stops at its fourth step, as no element converged in that step, with the dual residual
    still at 4e-3; ``patient`` (the proximal retry of the penalty polish) refines on while the
    residuals fall and converges within its 20 steps."""
    from declarative.qp.linalg import _Factor
    from declarative.qp.polish import _refine_active
    f64 = dict(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n, m = 6, 3
    Q = torch.eye(n, **f64).unsqueeze(0)
    G = torch.randn(1, m, n, generator=g, **f64)
    q, h = torch.randn(1, n, generator=g, **f64), torch.randn(1, m, generator=g, **f64)
    a = torch.tensor([[1.0, 1.0, 0.0]], **f64)
    wk = 1e7 * a
    fac = _Factor(Q, G, None, None, wk, torch.full((1, 1), 0.2, **f64), None, 0.0)
    for patient in (False, True):
        z, y, _, conv, _ = _refine_active(fac, wk, a, Q, G, None, q, h, None, torch.zeros(1, n, **f64),
                                          torch.zeros(1, m, **f64), None, 1.0, 1e-13, 20, patient=patient)
        dual = (z @ Q[0] + q + y @ G[0]).abs().max()
        assert bool(conv.all()) == patient and (dual < 1e-12) == patient, (patient, dual)
        assert ((z @ G[0].T - h) * a).abs().max() < 1e-12


def test_proximal_retry_only_where_the_first_refinement_did_not_converge(monkeypatch):
    """The proximal round of the penalty polish starts from the first round's guess: it takes the
    elements whose polish failed and whose first round's refinement did not converge, not those
    rejected for a wrong guess after a converged refinement (it would solve the same system
    again). On random (128, 50, 100, 10) QPs both kinds occur."""
    from declarative.reference.qp import random_qp
    penalty = ipm._polish_penalty
    calls = []

    def recording(*args, **kwargs):
        out = penalty(*args, **kwargs)
        calls.append((kwargs.get("prox", 1.0), args[10].clone(), out[4].clone(), out[7].clone()))
        return out
    monkeypatch.setattr(ipm, "_polish_penalty", recording)
    sol = solve_qp(*random_qp(128, 50, 100, 10, seed=0))
    assert (sol.status == Status.SOLVED).all()
    pairs = [(a, b) for a, b in zip(calls, calls[1:]) if a[0] == 1.0 and b[0] > 1.0]
    assert pairs
    skipped = 0
    for (_, todo, fast, first_conv), (_, prox_todo, _, _) in pairs:
        assert torch.equal(prox_todo, todo & ~fast & ~first_conv)
        skipped += int((todo & ~fast & first_conv).sum())
    assert skipped > 0


@pytest.mark.slow
def test_rows_the_guess_holds_are_judged_by_the_refinement(monkeypatch):
    """A round of the penalty polish whose refinement converged, with no negative multiplier and
    no violated row outside its guess, is accepted: the rows the guess holds are judged by the
    refinement's own test (``10·u`` relative to ``max_i ‖g_i‖₁ ‖z‖∞``). Judged against the
    right-hand sides' scale ``1e3·u·(1 + ‖h‖∞)`` as well, dense rows of 500 entries had residuals
    within the first but above the second: on random (128, 500, 500) QPs 18 elements were rejected
    with nothing left to correct, and went to the Schur-complement polish."""
    from declarative.qp import polish
    from declarative.reference.qp import random_qp
    next_round = polish._next_round
    stuck = []

    def recording(act, new_act, ok, conv, *args):
        stuck.append(int((~ok & conv & (act == new_act).all(-1)).sum()))
        return next_round(act, new_act, ok, conv, *args)
    monkeypatch.setattr(polish, "_next_round", recording)
    sol = solve_qp(*random_qp(128, 500, 500, 0, seed=0))
    assert stuck and sum(stuck) == 0, stuck
    assert (sol.status == Status.SOLVED).all() and bool(sol.cache["polished"].all())


def test_penalty_factor_of_a_sub_batch_in_the_rows_memory():
    """``_penalty_factor(keep=False)`` (a sub-batch's round, whose factors are copied out) factorises
    into the unused part of the gathered rows' memory where it has room, and into ``"H"`` where it
    has not; the factor is the same."""
    from declarative.qp.linalg import _Scratch
    from declarative.qp.polish import _penalty_factor
    B, n, m = 4, 130, 400   # (B·n² ≥ 2¹⁶: factorised in place)
    Q, G, act, wk, reg = _penalty_round_data(B, n, m, 0.2, seed=4)
    opts, k = QPOptions(), int(act.sum(-1).max())
    scratch = _Scratch("cpu")
    rows = scratch.view("sG", (2 * B, m, n), torch.float64)   # the memory of a larger batch's rows
    kept = _penalty_factor(Q, G, None, wk, act, reg, None, opts, k, scratch)
    sub = _penalty_factor(Q, G, None, wk, act, reg, None, opts, k, scratch, keep=False)
    start, end = rows.data_ptr(), rows.data_ptr() + rows.numel() * 8
    assert start <= sub.L.data_ptr() < end and not start <= kept.L.data_ptr() < end
    assert (sub.L - kept.L).abs().max() <= 1e-13 * kept.L.abs().max()
    small = _Scratch("cpu")
    small.view("sG", (B, k, n), torch.float64)   # no room for the factor
    again = _penalty_factor(Q, G, None, wk, act, reg, None, opts, k, small, keep=False)
    assert again.L.data_ptr() == small.view("H", (B, n, n), torch.float64).data_ptr()
    assert torch.equal(again.L, sub.L)
