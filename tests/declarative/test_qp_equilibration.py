"""Equilibration of badly scaled QPs (``declarative.qp.equilibration``) and the QP layer on them.

A QP with its objective multiplied by ``c`` and its constraint rows by ``r_i``, ``e_j`` has the same
minimiser, multipliers ``cλ/r`` and ``cν/e``, and gradients ``∂L/∂(cQ) = ∂L/∂Q / c`` etc. Without
equilibration the solver's ``1 + scale`` tolerances made an objective of size 1e-6 "converge" 1%
away from its minimiser; these tests hold the layer to the well-scaled problem's cvxpy solution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from declarative import QPOptions, Status, solve_qp
from declarative.qp.equilibration import equilibration
from declarative.reference.qp import qp_reference_batch, random_qp

B, N, M, P = 3, 5, 7, 2


def _badly_scaled(c, row_exp, seed=3):
    """A well-scaled random QP, the same QP with objective × c and constraint rows × 10^U(-row_exp,
    row_exp), and the scales."""
    params = random_qp(B, N, M, P, seed=seed)
    Q, q, G, h, A, b = params
    g = torch.Generator().manual_seed(seed)
    r = 10.0 ** ((2 * torch.rand(B, M, generator=g, dtype=torch.float64) - 1) * row_exp)
    e = 10.0 ** ((2 * torch.rand(B, P, generator=g, dtype=torch.float64) - 1) * row_exp)
    bad = (c * Q, c * q, r.unsqueeze(-1) * G, r * h, e.unsqueeze(-1) * A, e * b)
    return params, bad, (c, r, e)


def test_scaled_problem_has_the_same_minimiser():
    params, bad, (c, r, e) = _badly_scaled(1e-6, 4)
    eq = equilibration(*bad)
    assert eq is not None
    scaled = eq.params(bad)
    # unit sizes: max(max|σQ|, max|σq|) = 1, every constraint row [G_i, h_i] of ∞-norm 1
    one = torch.ones(B, dtype=torch.float64)
    torch.testing.assert_close(torch.maximum(scaled[0].abs().amax((-2, -1)), scaled[1].abs().amax(-1)), one)
    for M_, r_, k in ((scaled[2], scaled[3], M), (scaled[4], scaled[5], P)):
        torch.testing.assert_close(torch.maximum(M_.abs().amax(-1), r_.abs()), torch.ones(B, k, dtype=torch.float64))
    z, lam, nu, st = qp_reference_batch(*params)
    zs, lams, nus, sts = qp_reference_batch(*scaled)
    assert st == sts == ["optimal"] * B
    np.testing.assert_allclose(eq.unscale_z(torch.as_tensor(zs)).numpy(), z, atol=1e-7)
    duals = eq.unscale_duals({"lam": torch.as_tensor(lams), "nu": torch.as_tensor(nus)})
    # multipliers of the badly scaled problem: cλ/r, cν/e
    np.testing.assert_allclose(duals["lam"].numpy(), c * lam / r.numpy(), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(duals["nu"].numpy(), c * nu / e.numpy(), rtol=1e-5, atol=1e-12)
    back = eq.scale_duals(duals)
    np.testing.assert_allclose(back["lam"].numpy(), lams, rtol=1e-12, atol=1e-15)


def test_well_scaled_data_are_left_alone():
    assert equilibration(*random_qp(B, N, M, P, seed=1)) is None
    Q, q, G, h, A, b = random_qp(B, N, M, P, seed=1)
    assert equilibration(Q * 10, q * 10, G, h, A, b) is None          # max|Q| ≤ 4.7 here
    assert equilibration(Q * 1e3, q * 1e3, G, h, A, b) is not None
    assert equilibration(Q, q, G * 1e-3, h * 1e-3, A, b) is not None


def test_shapes_of_unbatched_and_mixed_inputs():
    Q, q, G, h, A, b = random_qp(None, N, M, P, seed=2)
    eq = equilibration(Q * 1e-5, q * 1e-5, G, h, A, b)
    assert eq.cost.shape == () and eq.ineq.shape == (M,) and eq.eq.shape == (P,) and eq.var.shape == (N,)
    qb = torch.randn(4, N, dtype=torch.float64) * 1e-5
    eq = equilibration(Q * 1e-5, qb, G, h, A, b)
    assert eq.cost.shape == () and eq.var.shape == (N,)   # Q unbatched: one scaling for the batch
    assert eq.params((Q, qb, G, h, A, b))[0].shape == (N, N)
    Z = torch.zeros(N, N, dtype=torch.float64)
    eq = equilibration(Z, qb, G, h)                  # an LP: σ from q
    Qs, qs, *_ = eq.params((Z, qb, G, h, None, None))
    assert Qs.shape == (N, N)
    torch.testing.assert_close(qs.abs().amax(), torch.ones((), dtype=torch.float64))
    eq = equilibration(Z.expand(4, N, N), qb, G, h)  # batched Q: one scale per element
    assert eq.cost.shape == (4,) and eq.var.shape == (4, N)
    torch.testing.assert_close(eq.params((Z, qb, G, h, None, None))[1].abs().amax(-1),
                               torch.ones(4, dtype=torch.float64))


def test_non_finite_data_stay_in_their_element():
    Q, q, G, h, A, b = random_qp(B, N, M, P, seed=4)
    G = G.clone() * 1e4
    G[1, 2, 0] = float("nan")
    eq = equilibration(Q, q, G, h, A, b)
    assert torch.isfinite(eq.ineq).all()            # a NaN row's scale from its finite entries ...
    Gs = eq.params((Q, q, G, h, A, b))[2]
    assert torch.isnan(Gs[1]).any()                 # ... and its NaN (the solver flags element 1)
    assert torch.isfinite(Gs[[0, 2]]).all()


@pytest.mark.parametrize("where", ["q", "G"])
def test_a_non_finite_element_leaves_the_shared_scales_to_the_others(where):
    """``Q`` unbatched (one ``σ`` and ``D`` for the batch), the objective × 1e-6 and a NaN in one
    element's ``q`` (or an inf in its ``G``): the scales are formed from the finite entries, so
    the other elements are equilibrated as without that element — before, the NaN size passed
    the in-band test, the batch was solved unscaled and its good elements came back SOLVED
    3.5e-2 away. The non-finite element is NON_FINITE."""
    Q, q, G, h, A, b = random_qp(4, 5, 6, 2, seed=1)
    Q, q = Q[0] * 1e-6, q * 1e-6
    qn, Gn = q.clone(), G.clone()
    if where == "q":
        qn[2, 0] = float("nan")
    else:
        Gn[2, 0, 0] = float("inf")
    good = [0, 1, 3]
    assert equilibration(Q, qn, Gn, h, A, b) is not None
    sol = solve_qp(Q, qn, Gn, h, A, b, check=False)
    ref = solve_qp(Q, q[good], G[good], h[good], A[good], b[good])
    assert sol.status.tolist() == [0, 0, int(Status.NON_FINITE), 0] and (ref.status == Status.SOLVED).all()
    torch.testing.assert_close(sol.z[good], ref.z, atol=1e-7, rtol=1e-7)
    # the minimiser of the objective × 1e6 (the same), from the reference
    z, *_ = qp_reference_batch(Q.expand(3, 5, 5) * 1e6, q[good] * 1e6, G[good], h[good], A[good], b[good])
    torch.testing.assert_close(sol.z[good], torch.as_tensor(z), atol=1e-6, rtol=1e-6)


def test_an_element_of_extreme_size_leaves_the_others_solved():
    """``Q`` unbatched and one element's objective 1e9 times that of the others (one of them with
    ``q = 0``): one cost scale for the batch put the others' objectives at 1e-9 of unit size, and
    the whole batch came back INACCURATE (each element solved alone is SOLVED). The cost scale and the minimiser size are
    then per element: the other elements are SOLVED, equal to their solves alone and to cvxpy,
    and so are their gradients (summed over the batch for the shared ``Q``, ``G``, ``h``)."""
    Q, q, G, h, A, b = random_qp(None, 20, 30, 3, seed=1)
    gen = torch.Generator().manual_seed(0)
    qb = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    qb[0] *= 1e9
    qb[2] *= 1e-3
    qb[3] = 0      # (its objective's size is max|Q|)
    eq = equilibration(Q, qb, G, h, A, b)
    assert eq.cost.shape == (6,) and eq.var.shape == (6, 20)
    good = [1, 2, 3, 4, 5]
    Qr, Gr, hr = (t.clone().requires_grad_() for t in (Q, G, h))
    qr = qb.clone().requires_grad_()
    sol = solve_qp(Qr, qr, Gr, hr, A, b, check=False)
    assert (sol.status[good] == Status.SOLVED).all()
    assert sol.status[0] != Status.SOLVED or sol.z[0].abs().max() > 1e6
    z_ref, *_ = qp_reference_batch(Q.expand(5, 20, 20), qb[good], G.expand(5, 30, 20), h.expand(5, 30),
                                   A.expand(5, 3, 20), b.expand(5, 3))
    torch.testing.assert_close(sol.z[good].detach(), torch.as_tensor(z_ref), atol=1e-6, rtol=1e-6)
    w = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    w[0] = 0
    (sol.z * w).sum().backward()
    grads = [torch.zeros_like(t) for t in (Q, G, h)]
    for i in good:
        Qi, Gi, hi = (t.clone().requires_grad_() for t in (Q, G, h))
        qi = qb[i].clone().requires_grad_()
        alone = solve_qp(Qi, qi, Gi, hi, A, b)
        torch.testing.assert_close(sol.z[i].detach(), alone.z.detach(), atol=1e-10, rtol=1e-10)
        (alone.z * w[i]).sum().backward()
        torch.testing.assert_close(qr.grad[i], qi.grad, atol=1e-9, rtol=1e-9)
        for acc, t in zip(grads, (Qi, Gi, hi)):
            acc += t.grad
    for got, want in zip((Qr.grad, Gr.grad, hr.grad), grads):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    # a batch whose sizes differ by less than BAND² keeps one scaling (Q stays unbatched)
    assert equilibration(Q * 1e-6, qb[1:] * 1e-6, G, h, A, b).cost.shape == ()


def test_in_band_ratio_test_ignores_a_non_finite_element():
    """Batched data whose minimisers are of size 1e-6 (``q``, ``h``, ``b`` small against ``Q``,
    ``G``, ``A``: every block in band, the ratio of the largest right-hand side to the largest
    matrix entry not) need scaling; a NaN in one element's ``h`` does not turn the ratio test
    off for the batch."""
    Q, q, G, h, A, b = random_qp(4, 5, 6, 2, seed=1)
    c = 1e-6
    hn = h.clone() * c
    hn[1, 0] = float("nan")
    assert equilibration(Q, q * c, G, h * c, A, b * c) is not None
    assert equilibration(Q, q * c, G, hn, A, b * c) is not None


# -- the QP layer on badly scaled data ----------------------------------------------------------------
@pytest.mark.parametrize("c, row_exp", [(1e-8, 0), (1e-6, 4), (1e8, 4), (1.0, 6), (1e30, 0)])
def test_solution_and_multipliers_of_badly_scaled_problems(c, row_exp, device):
    params, bad, (c, r, e) = _badly_scaled(c, row_exp)
    sol = solve_qp(*(t.to(device) for t in bad))
    z, lam, nu, st = qp_reference_batch(*params)
    assert st == ["optimal"] * B and (sol.status == Status.SOLVED).all()
    # without equilibration: 1e-2 away at c = 1e-6, MAX_ITERATIONS at c = 1e8, NON_FINITE for rows × 1e6
    np.testing.assert_allclose(sol.z.cpu().numpy(), z, atol=1e-7)
    # the multipliers cλ/r, cν/e, compared in the units of the well-scaled problem (cvxpy's zeros
    # of inactive constraints are ~1e-14, which 1/r would inflate)
    np.testing.assert_allclose(sol.duals["lam"].cpu().numpy() * r.numpy() / c, lam, atol=1e-6)
    np.testing.assert_allclose(sol.duals["nu"].cpu().numpy() * e.numpy() / c, nu, atol=1e-6)


def _grads(params, mode="implicit", beta=None):
    leaves = [t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, mode=mode, beta=beta)
    w = torch.linspace(-1.0, 1.0, sol.z.numel(), dtype=sol.z.dtype).reshape(sol.z.shape)
    return torch.autograd.grad((sol.z * w).sum(), leaves)


@pytest.mark.parametrize("mode, beta", [("implicit", None), ("contrastive", 1e-4), ("symmetric", 1e-4)])
def test_gradients_follow_the_chain_rule(mode, beta):
    """z*(cQ, cq, rG, rh, eA, eb) = z*(Q, q, G, h, A, b): ∂L/∂(cQ) = ∂L/∂Q / c, ∂L/∂(rG) = ∂L/∂G / r,
    ∂L/∂(rh) = ∂L/∂h / r (and so on). The contrastive modes nudge by β relative to the data scale:
    β·c for the scaled problem."""
    import contrastive  # noqa: F401  (registers the contrastive modes)
    params, bad, (c, r, e) = _badly_scaled(1e-6, 3, seed=8)
    ref = _grads(params, mode, beta)
    got = _grads(bad, mode, None if beta is None else beta * c)
    factors = (c, c, r.unsqueeze(-1), r, e.unsqueeze(-1), e)
    for name, gr, gb, f in zip("Q q G h A b".split(), ref, got, factors):
        torch.testing.assert_close(gb * f, gr, atol=1e-7, rtol=1e-6, msg=name)


def test_degenerate_problem_scaled_keeps_the_one_sided_gradient():
    """Weakly active constraints at objective scale 1e-7: the classification runs on the scaled
    problem, so the backward QP sees the same strong/weak sets as at unit scale."""
    from declarative.reference.qp import degenerate_qp
    Q, q, G, h, zs, *_ = degenerate_qp(4, seed=2)
    ref = _grads((Q, q, G, h))
    c = 1e-7
    got = _grads((c * Q, c * q, G, h))
    for gr, gb, f in zip(ref, got, (c, c, 1.0, 1.0)):
        torch.testing.assert_close(gb * f, gr, atol=1e-8, rtol=1e-7)


def _z_and_grad_q(params):
    q = params[1].detach().clone().requires_grad_()
    sol = solve_qp(params[0], q, *params[2:])
    w = torch.linspace(-1.0, 1.0, sol.z.shape[-1], dtype=sol.z.dtype)
    return sol, torch.autograd.grad((sol.z * w).sum(), q)[0]


@pytest.mark.parametrize("kind", ["vacuous row 1e-8", "vacuous row 1e-12", "big-M bounds 1e8"])
def test_harmless_rows_change_nothing(kind):
    """A nearly vacuous row (``1e-8 gᵀz ≤ 1``) or never-active big-M bounds (``z ≤ 1e8``) must give
    the solution and gradient of the problem without them. Scaling rows by ‖G_i‖∞ alone had turned
    the vacuous row into ``gᵀz ≤ 1e8`` — loosening every tolerance of its element by 1e8 (z 0.13
    off, 5–9 constraints misclassified as weakly active); the big-M bounds did the same before any
    equilibration."""
    Q, q, G, h, _, _ = random_qp(8, 6, 10, 0, seed=5)
    g = torch.Generator().manual_seed(0)
    if kind.startswith("vacuous"):
        size = float(kind.split()[-1])
        extra = size * torch.randn(8, 1, 6, generator=g, dtype=torch.float64)
        extra_h = torch.ones(8, 1, dtype=torch.float64)
    else:
        extra = torch.eye(6, dtype=torch.float64).expand(8, 6, 6)
        extra_h = 1e8 * torch.ones(8, 6, dtype=torch.float64)
    sol0, g0 = _z_and_grad_q((Q, q, G, h))
    sol, g1 = _z_and_grad_q((Q, q, torch.cat([G, extra], 1), torch.cat([h, extra_h], 1)))
    assert (sol.status == Status.SOLVED).all()
    torch.testing.assert_close(sol.z, sol0.z, atol=1e-9, rtol=0)
    torch.testing.assert_close(g1, g0, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("dtype, tiny", [(torch.float32, 1e-39), (torch.float64, 1e-309)])
def test_subnormal_rows_and_objectives_stay_finite(dtype, tiny):
    """Scales are clipped to [√tiny, 1/√tiny]: 1/‖row‖ of a subnormal row would overflow."""
    Q, q, G, h, _, _ = random_qp(2, 4, 5, 0, seed=1, dtype=dtype)
    G = G.clone()
    G[0, 0] = tiny
    assert (solve_qp(Q, q, G, h, check=False).status == Status.SOLVED).all()
    assert (solve_qp(Q * tiny, q * tiny, G[:, 1:], h[:, 1:], check=False).status == Status.SOLVED).all()


def test_near_lp_in_float32():
    """σ = 1/max(max|Q|, max|q|): from Q alone (1e33 here) σq would overflow float32."""
    n = 3
    G = torch.cat([torch.eye(n), -torch.eye(n)])
    sol = solve_qp(1e-33 * torch.eye(n), torch.tensor([1e6, -2e6, 5e5]), G, torch.ones(2 * n))
    torch.testing.assert_close(sol.z, torch.tensor([-1.0, 1.0, -1.0]), atol=1e-4, rtol=0)


def test_gradcheck_through_equilibration():
    """Finite differences of the layer itself on a problem that is equilibrated (objective × 1e4,
    constraint rows × 1e-3)."""
    params, bad, _ = _badly_scaled(1e4, 0, seed=12)
    Q, q, G, h, A, b = (t[:1] for t in bad)
    G, h, A, b = G * 1e-3, h * 1e-3, A * 1e-3, b * 1e-3
    assert equilibration(Q, q, G, h, A, b) is not None
    inputs = tuple(t.detach().clone().requires_grad_() for t in (Q, q, G, h, A, b))

    def f(Q, q, G, h, A, b):
        return solve_qp(0.5 * (Q + Q.mT), q, G, h, A, b).z
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype, c", [(torch.float64, 1e-8), (torch.float32, 1e-4), (torch.float64, 1e8)])
@pytest.mark.parametrize("active_set", [True, False])
def test_solution_far_from_unit_size(dtype, c, active_set):
    """z* = (c, 2c) for min ½‖z‖² − 2c(z₁ + z₂) s.t. z₁ ≤ c: the minimiser's size is c, the data's 1.
    Without the variable scale t the weak-activity thresholds τ(1 + ‖λ‖), τ(1 + ‖h‖) classified
    the active row as weakly active at c = 1e-8 (float64) and 1e-4 (float32): dq = (−1, −1),
    dh = 0 instead of (0, −1) and 1."""
    Q = torch.eye(2, dtype=dtype)
    q = torch.tensor([-2 * c, -2 * c], dtype=dtype, requires_grad=True)
    G = torch.tensor([[1.0, 0.0]], dtype=dtype)
    h = torch.tensor([c], dtype=dtype, requires_grad=True)
    sol = solve_qp(Q, q, G, h, options=QPOptions(active_set=active_set))
    torch.testing.assert_close(sol.z / c, torch.tensor([1.0, 2.0], dtype=dtype), atol=1e-5, rtol=0)
    torch.testing.assert_close(sol.duals["lam"] / c, torch.tensor([1.0], dtype=dtype), atol=1e-5, rtol=0)
    dq, dh = torch.autograd.grad(sol.z.sum(), [q, h])
    torch.testing.assert_close(dq, torch.tensor([0.0, -1.0], dtype=dtype), atol=1e-5, rtol=0)
    torch.testing.assert_close(dh, torch.tensor([1.0], dtype=dtype), atol=1e-5, rtol=0)


def test_small_solutions_match_the_scaled_problem():
    """q, h and b × 1e-7 (z* × 1e-7): solution, multipliers and gradients are those of the unit
    problem scaled back — ∂L/∂q and ∂L/∂h are unchanged, ∂L/∂Q and ∂L/∂G scale by 1e-7."""
    c = 1e-7
    params = random_qp(3, 5, 8, 1, seed=13)
    Q, q, G, h, A, b = params
    small = (Q, q * c, G, h * c, A, b * c)
    ref, got = _grads(params), _grads(small)
    factors = (c, 1.0, c, 1.0, c, 1.0)
    for name, gr, gs, f in zip("Q q G h A b".split(), ref, got, factors):
        torch.testing.assert_close(gs, gr * f, atol=1e-8 * f, rtol=1e-6, msg=name)
    z = solve_qp(*small).z
    torch.testing.assert_close(z / c, solve_qp(*params).z, atol=1e-8, rtol=0)


def test_host_in_band_test_agrees_with_the_tensor_test(monkeypatch):
    """One small problem decides "nothing to scale" on the host (``_in_band_on_host``, and the
    active-set method on its own host values, ``in_band_only``); it must decide as the batched
    tensor test does, over random block scales (1e-4…1e4), zero rows and zero blocks, unbatched
    and batch-size-1 inputs, with and without each constraint block."""
    from declarative.qp import equilibration as eqm
    from declarative.qp.active_set import OUT_OF_BAND, solve_qp_active_set
    g = torch.Generator().manual_seed(0)
    scales = [0.0, 1e-4, 0.009, 0.011, 1.0, 99.0, 101.0, 1e4]
    checked = {True: 0, False: 0}
    for trial in range(400):
        m, p = (int(v) for v in torch.randint(0, 4, (2,), generator=g))
        Q, q, G, h, A, b = random_qp(1, 4, m, p, seed=trial)
        def pick():
            if float(torch.rand(1, generator=g)) < 0.75:
                return 1.0
            return scales[int(torch.randint(0, len(scales), (1,), generator=g))]
        Q, q = Q * pick(), q * pick()
        if m:
            G, h = G * pick(), h * pick()
            G[:, 0] *= pick()                              # one row of its own size
        if p:
            A, b = A * pick(), b * pick()
        data = [Q, q, G if m else None, h if m else None, A if p else None, b if p else None]
        if trial % 2:
            data = [None if t is None else t[0] for t in data]   # unbatched
        assert eqm._one_small_problem(*data)
        host = eqm._in_band_on_host(*data)
        assert (solve_qp_active_set(*data, in_band_only=True) is not OUT_OF_BAND) == host, f"trial {trial}"
        monkeypatch.setattr(eqm, "_one_small_problem", lambda *a: False)
        tensor = equilibration(*data) is None
        monkeypatch.undo()
        assert host == tensor, f"trial {trial}"
        checked[host] += 1
    assert min(checked.values()) > 40                     # both outcomes exercised
    # non-finite data: the tensor test decides (the active set's answer: out of band)
    Q, q, G, h, A, b = random_qp(1, 4, 3, 1, seed=2)
    for data in ((Q, q.clone().fill_(float("nan")), G, h, A, b), (Q, q, G, h.clone().fill_(float("inf")), A, b),
                 (Q * float("inf"), q, G, h, A, b)):
        assert not eqm._in_band_on_host(*data)
        assert solve_qp_active_set(*data, in_band_only=True) is OUT_OF_BAND
    # batches and large problems take the tensor test
    assert not eqm._one_small_problem(*random_qp(2, 4, 3, 0, seed=1))
    assert not eqm._one_small_problem(*random_qp(1, 60, 60, 0, seed=1))


def test_multipliers_kept_small_by_equilibration_stay_strongly_active():
    """An ill-conditioned Q (eigenvalues down to ~5e-9) whose minimiser lies along its near-null
    direction, against rows ~1e8 away: equilibration's objective scale (from t² max|Q|) leaves the
    scaled gradient — and the active row's multiplier — at ~1e-8, and the weak-activity threshold
    τ(1 + ‖λ‖∞) called the row weakly active: ∇q off by 4e4 relative. For
    polished solutions the floor 1 is min(1, λ̄), λ̄ the multipliers' own scale. Reference: the
    KKT system on the active row, solved directly."""
    f64 = torch.float64
    Q = torch.tensor([[0.29204798020649125, 0.12509672839823938, 0.43715398087617796],
                      [0.12509672839823938, 0.053627271497825764, 0.18721294310794873],
                      [0.43715398087617796, 0.18721294310794873, 0.6543921886137131]], dtype=f64)
    q = torch.tensor([0.72247635929237, -1.307880261788649, 0.14405851188829263], dtype=f64)
    G = torch.tensor([[0.7929374490305129, -0.5615437472775419, -0.6727865575517371],
                      [0.3363881376339575, -0.3375714108750242, -1.0397343142174817],
                      [0.3456291209687137, 0.9619705764361135, -0.6064698623075115],
                      [1.8400550267309173, 0.8553825504268673, 0.47305831057741554],
                      [1.0468970252373533, 0.032227620854141034, 1.1075790952169364],
                      [-1.4697490412918202, 1.300989067029531, 0.6976432774060118]], dtype=f64)
    h = torch.tensor([82780506.7674191, 138862853.57730436, 21255773.014948554, 140700906.68022802,
                      275232591.5876952, 155101003.8760245], dtype=f64)
    w = torch.tensor([-1.907253985078493, -0.21736564405383157, -0.48544926116259557], dtype=f64)
    assert equilibration(Q, q, G, h) is not None
    for batch in (1, 2):               # the active-set path and the interior-point path
        leaves = [t.expand(batch, *t.shape).clone().requires_grad_() for t in (Q, q, G, h)]
        sol = solve_qp(*leaves)
        active = (sol.duals["lam"][0] > 0).nonzero().reshape(-1)
        assert active.tolist() == [5]
        dq, = torch.autograd.grad((sol.z * w).sum(), leaves[1])
        g5 = G[5:6]
        K = torch.cat([torch.cat([Q, g5.T], 1), torch.cat([g5, torch.zeros(1, 1, dtype=f64)], 1)], 0)
        ref = torch.linalg.solve(K, torch.cat([-w, torch.zeros(1, dtype=f64)]))[:3]
        torch.testing.assert_close(dq, ref.expand(batch, 3), rtol=1e-6, atol=0)


# -- per-variable scales ------------------------------------------------------------------------------
def _variable_scaled(params, var_exp, row_exp, obj_exp, seed):
    r"""``params`` in the variables ``x = z / d`` (``z = d ⊙ x``), ``d_j = 10^U(-var_exp, var_exp)``
    per element, with the objective × ``o`` and the rows × ``r_i``, ``e_j`` (log-uniform):

    .. math::

        Q' = o\,DQD,\; q' = o\,Dq,\; G' = R\,G D,\; h' = R h,\; A' = E\,A D,\; b' = E b,

    so ``x* = z*/d``, ``λ' = oλ/r``, ``ν' = oν/e``. Differentiable in ``params``; returns the
    scaled data and ``(d, o, r, e)``."""
    Q, q, G, h, A, b = params
    g = torch.Generator().manual_seed(seed)

    def scale(*shape, e):
        return 10.0 ** ((2 * torch.rand(*shape, generator=g, dtype=torch.float64) - 1) * e)
    d, o = scale(Q.shape[0], Q.shape[-1], e=var_exp), scale(Q.shape[0], 1, e=obj_exp)
    r, e = scale(*h.shape, e=row_exp), scale(*b.shape, e=row_exp)
    bad = (o.unsqueeze(-1) * d.unsqueeze(-1) * Q * d.unsqueeze(-2), o * d * q,
           r.unsqueeze(-1) * G * d.unsqueeze(-2), r * h, e.unsqueeze(-1) * A * d.unsqueeze(-2), e * b)
    return bad, (d, o, r, e)


def test_ruiz_scales_equilibrate_the_columns():
    """Variables scaled by 1e±4: the scaled data's columns ``max(‖(σDQD)_{:,j}‖∞, ‖(D_G G D)_{:,j}‖∞,
    ‖(D_A A D)_{:,j}‖∞)`` lie within a factor 10 of each other (one scalar variable scale left them
    spread over 1e8), and the scaled problem's minimiser is ``D⁻¹z*``."""
    params = random_qp(B, N, M, P, seed=21)
    bad, (d, o, r, e) = _variable_scaled(params, 4, 0, 0, seed=21)
    eq = equilibration(*bad)
    assert eq.var.shape == (B, N)
    Qs, qs, Gs, hs, As, bs = eq.params(bad)
    col = torch.maximum(torch.maximum(Qs.abs().amax(-2), Gs.abs().amax(-2)), As.abs().amax(-2))
    assert (col.amax(-1) / col.amin(-1) <= 10).all(), col
    z, *_ = qp_reference_batch(*params)
    zs, *_ = qp_reference_batch(*(t.detach() for t in (Qs, qs, Gs, hs, As, bs)))
    np.testing.assert_allclose(eq.unscale_z(torch.as_tensor(zs)).numpy() * d.numpy(), z, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("var_exp, row_exp, obj_exp", [(4, 0, 0), (2, 6, 4), (4, 3, 3)])
def test_per_variable_scaling_solution_multipliers_and_gradients(var_exp, row_exp, obj_exp):
    """float64 QPs with variables scaled by up to 1e±4 (rows, objective as given): SOLVED, with
    ``x* = z*/d``, ``λ' = oλ/r``, ``ν' = oν/e`` of the unit problem, and
    the gradient of ``L = wᵀ(d ⊙ x*)`` with respect to the unit data (through the scaling, by the
    chain rule) equal to that of ``wᵀz*`` from the unit problem solved directly. With one scalar
    variable scale, 1e±4 gave DUAL_INFEASIBLE, NON_FINITE and MAX_ITERATIONS elements."""
    params = random_qp(4, 6, 8, 2, seed=31)
    leaves = [t.detach().clone().requires_grad_() for t in params]
    bad, (d, o, r, e) = _variable_scaled(leaves, var_exp, row_exp, obj_exp, seed=32 + var_exp)
    sol = solve_qp(*bad)
    assert (sol.status == Status.SOLVED).all(), sol.status
    z, lam, nu, st = qp_reference_batch(*(t.detach() for t in params))
    assert st == ["optimal"] * 4
    np.testing.assert_allclose((sol.z * d).detach().numpy(), z, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose((sol.duals["lam"] * r / o).detach().numpy(), lam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((sol.duals["nu"] * e / o).detach().numpy(), nu, rtol=1e-5, atol=1e-6)
    w = torch.linspace(-1.0, 1.0, 24, dtype=torch.float64).reshape(4, 6)
    got = torch.autograd.grad((sol.z * d * w).sum(), leaves)
    ref = _grads(params)
    for name, gg, gr in zip("Q q G h A b".split(), got, ref):
        torch.testing.assert_close(gg, gr, atol=1e-6, rtol=1e-5, msg=name)


def test_variable_scaled_problems_get_no_infeasibility_verdict():
    """Feasible, bounded QPs with variables scaled by 1e±4: no PRIMAL_/DUAL_INFEASIBLE (the
    scalar variable scale left the interior-point iterates along near-null directions of the
    scaled ``Q``, and DUAL_INFEASIBLE was returned for 21 of 393 such elements), every element
    SOLVED within 1e-6 of ``‖z*‖∞``."""
    for seed in range(6):
        params = random_qp(4, 6, 7, 2, seed=100 + seed)
        bad, (d, *_) = _variable_scaled(params, 4, 0, 0, seed=200 + seed)
        sol = solve_qp(*bad, check=False)
        z, *_ = qp_reference_batch(*params)
        assert (sol.status == Status.SOLVED).all(), (seed, sol.status)
        err = np.abs((sol.z * d).numpy() - z).max(-1) / np.abs(z).max(-1)
        assert (err <= 1e-6).all(), (seed, err)


def test_gradcheck_with_per_variable_scales():
    """Finite differences of the layer on one problem whose variables are scaled by 1e±2 (rows by
    1e±2, objective by 1e±2): equilibrated per variable."""
    params = random_qp(1, 4, 5, 1, seed=41)
    bad, _ = _variable_scaled(params, 2, 2, 2, seed=42)
    assert equilibration(*bad) is not None
    inputs = tuple(t.detach().clone().requires_grad_() for t in bad)

    def f(Q, q, G, h, A, b):
        return solve_qp(0.5 * (Q + Q.mT), q, G, h, A, b).z
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


def test_scales_are_constants_under_create_graph():
    """The per-variable (Ruiz) scales are formed without autograd: a nudged mode's backward with
    ``create_graph=True`` (which solves again with parameters that require grad) works on data
    whose columns differ by 1e8, and equals the backward without it."""
    g = torch.Generator().manual_seed(0)
    B, n, m = 5, 4, 3
    f64 = torch.float64
    s = torch.tensor([1e-4, 1.0, 1.0, 1e4], dtype=f64)
    Q = torch.randn(B, n, n, generator=g, dtype=f64)
    Q = (Q @ Q.mT + torch.eye(n, dtype=f64)) * s.sqrt()[:, None] * s.sqrt()
    q = torch.randn(B, n, generator=g, dtype=f64)
    G = torch.randn(B, m, n, generator=g, dtype=f64) * s
    h = torch.rand(B, m, generator=g, dtype=f64)
    grads = []
    for create_graph in (False, True):
        Qg, qg = Q.clone().requires_grad_(), q.clone().requires_grad_()
        z = solve_qp(Qg, qg, G, h, mode="symmetric", beta=1e-4).z
        gq, = torch.autograd.grad(z.sum(), qg, create_graph=create_graph)
        grads.append(gq.detach())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=0)
