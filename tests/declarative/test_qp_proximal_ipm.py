"""The proximal interior-point method (``declarative.qp.proximal_ipm``), the QP solver's second
solver: against Clarabel (through cvxpy) on random problems of several kinds, per-element
independence in a batch, and its option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from declarative.qp import QPOptions
from declarative.qp.proximal_ipm import solve_qp_proximal
from declarative.qp.residuals import meets_tolerances, qp_residuals
from declarative.reference.qp import degenerate_qp, qp_reference_batch, random_qp

pytest.importorskip("cvxpy")

EPS_ABS = 1e-9
UNIT = float(torch.finfo(torch.float64).eps) / 2


def _contract(data):
    """The accept test of ``solve_qp_ipm``'s second solver, on the data themselves."""
    def accept(z, lam, nu):
        return meets_tolerances(qp_residuals(*data, z, lam, nu), EPS_ABS, 0.0, UNIT)
    return accept


def _redundant_equalities(B, seed):
    """Random QPs whose equality rows repeat (rank p/2) and include a zero row with b = 0."""
    Q, q, G, h, A, b = random_qp(B, 8, 10, 3, seed=seed)
    A = torch.cat([A, A, torch.zeros(B, 1, 8, dtype=A.dtype)], -2)
    b = torch.cat([b, b, torch.zeros(B, 1, dtype=b.dtype)], -1)
    return Q, q, G, h, A, b


def _lp_like(B, seed):
    """Q of rank 2 in 8 variables (an LP along six directions), bounded by box rows."""
    Q, q, G, h, A, b = random_qp(B, 8, 6, 2, psd_rank=2, seed=seed)
    eye = torch.eye(8, dtype=torch.float64).expand(B, 8, 8)
    return Q, q, torch.cat([G, eye, -eye], -2), torch.cat([h, torch.full((B, 16), 3.0, dtype=h.dtype)], -1), A, b


FAMILIES = {
    "random": lambda B, seed: random_qp(B, 10, 15, 3, seed=seed),
    "inequalities-only": lambda B, seed: random_qp(B, 6, 12, 0, seed=seed),
    "redundant-equalities": _redundant_equalities,
    "lp-like": _lp_like,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_solutions_match_clarabel(family):
    """Every element is accepted by the contract (absolute 1e-9 with the rounding term) within
    150 iterations, and its solution is Clarabel's (cvxpy, tight tolerances) to 1e-6."""
    data = FAMILIES[family](4, 0)
    st, its, accepted = solve_qp_proximal(data, accept=_contract(data), max_iter=150)
    assert accepted.all(), its
    assert (its < 150).all()
    z_ref, _, _, statuses = qp_reference_batch(*data)
    assert all(s == "optimal" for s in statuses), statuses
    np.testing.assert_allclose(st.z.numpy(), z_ref, atol=1e-6 * max(1.0, np.abs(z_ref).max()))
    assert (st.s >= 0).all() and (st.lam >= 0).all()


def test_weakly_active_constraints_at_the_square_root_of_the_gap():
    """Q = I with two weakly active rows (known z*): accepted with residuals below 1e-9, and z
    within 1e-4 of z*. An interior iterate approaches a weakly active constraint at the rate of the
    square root of the gap (f(z) − f* ≤ gap and strong convexity: ‖z − z*‖ ≤ √(2·gap) ≈ 4.5e-5);
    this method has no active-set polish (Clarabel's answer is 2.4e-6 away)."""
    Q, q, G, h, z_star, _, _, _ = degenerate_qp(4, seed=0)
    data = (Q, q, G, h, None, None)
    st, its, accepted = solve_qp_proximal(data, accept=_contract(data), max_iter=150)
    assert accepted.all(), its
    res = qp_residuals(*data, st.z, st.lam, st.nu)
    assert max(res.primal.max(), res.dual.max(), res.gap.max()) < 1e-9
    assert (st.z - z_star).abs().max() < 1e-4


def test_each_element_iterates_on_its_own():
    """An element's iterations and answer do not depend on the other elements of its batch: the
    batch's results equal each element's run alone (to rounding)."""
    data = random_qp(5, 10, 15, 3, seed=3)
    st, its, accepted = solve_qp_proximal(data, accept=_contract(data), max_iter=150)
    for i in range(5):
        one = tuple(t[i:i + 1] for t in data)
        st1, its1, acc1 = solve_qp_proximal(one, accept=_contract(one), max_iter=150)
        assert int(its1) == int(its[i]) and bool(acc1) == bool(accepted[i])
        torch.testing.assert_close(st1.z[0], st.z[i], rtol=1e-7, atol=1e-9)


def _scaled_variables(B, seed):
    """Random QPs whose variables are scaled by 10^U(−2, 2) (equilibration then scales them back)."""
    Q, q, G, h, A, b = random_qp(B, 8, 16, 2, seed=seed)
    D = 10.0 ** (4 * torch.rand(B, 8, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64) - 2)
    return D.unsqueeze(-1) * Q * D.unsqueeze(-2), D * q, G * D.unsqueeze(-2), h, A * D.unsqueeze(-2), b


def test_retry_on_the_original_data_takes_the_elements_left_over(monkeypatch):
    """``ipm._second_solver`` on equilibrated data, with a budget (8 iterations) that the run on the
    equilibrated problem meets for one element of six: the other five are run again on the
    original data (where these problems converge sooner) and accepted there. Each element's
    outcome, iterations and answer are those of its run alone (with its scales from the batch),
    and every accepted answer meets the contract on the original problem."""
    from declarative.qp import ipm
    from declarative.qp.equilibration import equilibration
    f64 = torch.float64
    runs = []
    proximal = ipm.solve_qp_proximal

    def recording(data, **kwargs):
        out = proximal(data, **kwargs)
        runs.append((out[2].shape[0], int(out[2].sum())))
        return out
    monkeypatch.setattr(ipm, "solve_qp_proximal", recording)
    opts = QPOptions(proximal_max_iter=8).resolved(f64)

    def second(orig, scales):
        B = orig[0].shape[0]
        state = (torch.zeros(B, 8, dtype=f64), torch.ones(B, 16, dtype=f64), torch.ones(B, 16, dtype=f64),
                 torch.zeros(B, 2, dtype=f64))
        return ipm._second_solver(scales.params(orig), state, torch.zeros(B, dtype=torch.int64),
                                  torch.ones(B, dtype=torch.bool), opts, orig, scales, None)
    orig = _scaled_variables(6, 0)
    scales = equilibration(*orig)
    z, s, lam, nu, won, its = second(orig, scales)
    assert runs == [(6, 1), (5, 5)] and bool(won.all())
    zu = scales.unscale_z(z)
    d = scales.unscale_duals({"lam": lam, "nu": nu})
    assert bool(meets_tolerances(qp_residuals(*orig, zu, d["lam"], d["nu"]), opts.eps_abs, opts.eps_rel, UNIT).all())
    for i in range(6):
        one, scales1 = tuple(t[i:i + 1] for t in orig), scales.select(torch.tensor([i]))
        z1, _, _, _, won1, its1 = second(one, scales1)
        assert bool(won1.all()) and int(its1) == int(its[i])
        torch.testing.assert_close(scales1.unscale_z(z1)[0], zu[i], rtol=1e-7, atol=1e-9)


def test_iteration_limit_and_refusal():
    """An accept test that never holds: every element runs exactly ``max_iter`` iterations and is
    not accepted; with ``max_iter = 0`` none runs."""
    data = random_qp(3, 6, 8, 2, seed=1)
    never = lambda z, lam, nu: torch.zeros(z.shape[0], dtype=torch.bool)  # noqa: E731
    _, its, accepted = solve_qp_proximal(data, accept=never, max_iter=7)
    assert its.tolist() == [7, 7, 7] and not accepted.any()
    _, its, _ = solve_qp_proximal(data, accept=never, max_iter=0)
    assert its.tolist() == [0, 0, 0]


def test_patience_iterates_on_to_a_good_iterate_and_keeps_the_best_acceptable_one():
    """``patience``: per element, an acceptable iterate that is not good (score above 1) iterates
    on for at most ``patience`` iterations; a good one stops it; the answer is the acceptable
    iterate of the lowest score (iterates after it that are worse, or not acceptable, do not
    replace it). Scripted by iteration count: element 0 is acceptable from iteration 2 (scores 3,
    2) and good at 4; element 1 acceptable at 2 and 3 only (scores 5, then 10), never good; element
    2 never acceptable."""
    data = random_qp(3, 6, 8, 2, seed=1)
    count = {"k": 0}
    seen = []
    scores = {2: [3.0, 5.0, 9.0], 3: [2.0, 10.0, 9.0], 4: [0.5, 9.0, 9.0]}

    def accept(z, lam, nu):
        k = count["k"]
        count["k"] += 1
        seen.append(z.clone())
        ok = torch.tensor([k >= 2, k in (2, 3), False])
        return ok, torch.tensor(scores.get(k, [9.0, 9.0, 9.0]), dtype=torch.float64)
    st, its, accepted = solve_qp_proximal(data, accept=accept, max_iter=20, patience=3)
    assert accepted.tolist() == [True, True, False]
    assert its.tolist() == [4, 5, 20]       # 0: good at its 4th iterate; 1: 3 more after the 2nd
    assert torch.equal(st.z[0], seen[4][0])
    assert torch.equal(st.z[1], seen[2][1])   # the lower score of its two acceptable iterates
    assert not torch.equal(seen[3][1], seen[2][1])
    with pytest.raises(TypeError, match="acceptable, score"):
        solve_qp_proximal(data, accept=lambda z, lam, nu: torch.ones(3, dtype=torch.bool), max_iter=5, patience=2)


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_option_is_validated(bad):
    with pytest.raises(ValueError, match="proximal_max_iter"):
        QPOptions(proximal_max_iter=bad)


def test_same_answer_on_every_device(device):
    """On the device the iterations and answers are the CPU's (to rounding)."""
    data = _redundant_equalities(3, 2)
    st, its, accepted = solve_qp_proximal(data, accept=_contract(data), max_iter=150)
    on = tuple(t.to(device) for t in data)
    st_d, its_d, accepted_d = solve_qp_proximal(on, accept=_contract(on), max_iter=150)
    assert accepted.all() and accepted_d.cpu().tolist() == accepted.tolist()
    assert its_d.cpu().tolist() == its.tolist()
    torch.testing.assert_close(st_d.z.cpu(), st.z, rtol=1e-7, atol=1e-9)
