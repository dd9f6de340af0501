"""Activations as argmin problems (``docs/guide/problems.md``) in the three gradient modes.

References: cvxpy + Clarabel solutions of the free and nudged problems
(``declarative.reference.activations``), the backward QP on the simplex solved by cvxpy,
``torch.autograd.gradcheck`` in float64, and the closed-form formulas of §3.3.
"""

import functools

import numpy as np
import pytest
import torch

from contrastive import Contrastive, Symmetric
from declarative import BoxProblem, Implicit, ReLUProblem, SoftmaxProblem, SparsemaxProblem
from declarative.reference.activations import (ATOL, ATOL_DEGENERATE, activation_reference,
                                               nudged_difference_quotient, simplex_backward_qp_reference)

LO, HI = -0.5, 1.0  # a box that is neither hard-tanh nor hard-sigmoid
PROBLEMS = {
    "relu": lambda: ReLUProblem(),
    "box": lambda: BoxProblem(LO, HI),
    "sparsemax": lambda: SparsemaxProblem(),
    "softmax": lambda: SoftmaxProblem(),
}
PIECEWISE_LINEAR = ("relu", "box", "sparsemax")
REF_KW = {"box": {"lo": LO, "hi": HI}}


def _ref(name, a, g=None, beta=0.0):
    return activation_reference(name, a, g, beta, **REF_KW.get(name, {}))


# -- inputs ---------------------------------------------------------------------------------------
def _sparsemax_tie_rows():
    """Rows with coordinates exactly at the threshold τ (weakly active), all dyadic so exact in float32.

    ``(0.625, 0.375, 0.375, 0.125, −1)``: τ = 0.125, z = (0.5, 0.25, 0.25, 0, 0), coordinate 3 tied;
    ``(1, 0, −1, −2, 0)``: τ = 0, z = e_0, coordinates 1 and 4 tied (the brief's (1, 0, −1));
    ``(0.5, 0.5, 0, 0, −3)``: τ = 0, z = (0.5, 0.5, 0, 0, 0), coordinates 2 and 3 tied;
    ``(0.25, −0.25, 0.25, −0.25, −2)``: τ = −0.25, z = (0.5, 0, 0.5, 0, 0), coordinates 1 and 3 tied.
    ``test_sparsemax_tie_rows_are_ties`` checks these claims.
    """
    return [
        [0.625, 0.375, 0.375, 0.125, -1.0],
        [1.0, 0.0, -1.0, -2.0, 0.0],
        [0.5, 0.5, 0.0, 0.0, -3.0],
        [0.25, -0.25, 0.25, -0.25, -2.0],
    ]


def kink_inputs(name, dtype, generator_seed=0):
    """A (6, 5) batch: random entries at least 0.1 away from every kink, plus exact kinks.

    Returns ``(a, g)`` with ``g`` of both signs at the kinks.
    """
    gen = torch.Generator().manual_seed(generator_seed)
    a = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    if name == "relu":
        a = torch.where(a.abs() < 0.1, a.sign() * 0.1 + a, a)
        a[::2, ::2] = 0.0
    elif name == "box":
        a = a * 1.5
        for b in (LO, HI):
            a = torch.where((a - b).abs() < 0.1, a + 0.2 * torch.sign(a - b), a)
        a[0:3, 0] = LO
        a[3:6, 1] = HI
        a[1, 4], a[4, 3] = LO, HI
    elif name == "sparsemax":
        a = torch.tensor(_sparsemax_tie_rows() + [[2.0, -1.0, 0.0, 0.5, 0.5], [0.5, 0.1, -0.7, 1.2, 0.0]],
                         dtype=torch.float64)
    # alternate the sign of g along the batch so that both branches of every one-sided rule occur
    sign = torch.where(torch.arange(30).reshape(6, 5) % 2 == 0, 1.0, -1.0).to(torch.float64)
    g = g.abs().clamp(0.2, 1.0) * sign  # |g| ≤ 1: nudges up to β = 0.02 stay 0.04 from other kinks
    return a.to(dtype), g.to(dtype)


def smooth_inputs(name, dtype, seed=1, margin=0.1):
    """A (4, 5) batch with every coordinate at least ``margin`` away from a kink (the solution
    map is differentiable in a ``margin``-ball); for sparsemax away from the threshold."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    if name == "relu":
        a = torch.where(a.abs() < margin, a + 2 * margin * a.sign(), a)
    elif name == "box":
        a = 1.5 * a
        for b in (LO, HI):
            a = torch.where((a - b).abs() < margin, a + 2 * margin * torch.sign(a - b), a)
    elif name == "sparsemax":
        a = 1.5 * a
        z = SparsemaxProblem().activation(a)
        tau_row = ((a - z) * (z > 0)).sum(-1, keepdim=True) / (z > 0).sum(-1, keepdim=True)
        a = torch.where((a - tau_row).abs() < margin, a + 2 * margin * torch.sign(a - tau_row), a)
        z2 = SparsemaxProblem().activation(a)
        tau2 = ((a - z2) * (z2 > 0)).sum(-1, keepdim=True) / (z2 > 0).sum(-1, keepdim=True)
        assert bool(((a - tau2).abs() >= margin / 2).all()), "input construction lost its margin"
    return a.to(dtype), g.to(dtype)


def distance_to_kink(name, a):
    """Smallest distance of a coordinate to a kink of the solution map (float64)."""
    a = a.double()
    if name == "relu":
        return a.abs().min().item()
    if name == "box":
        return torch.minimum((a - LO).abs(), (a - HI).abs()).min().item()
    if name == "sparsemax":
        z = SparsemaxProblem().activation(a)
        tau = ((a - z) * (z > 0)).sum(-1, keepdim=True) / (z > 0).sum(-1, keepdim=True)
        return (a - tau).abs().min().item()
    return float("inf")


# -- helpers --------------------------------------------------------------------------------------
def grad_input(problem, mode, a, g):
    """``∇_a ⟨g, z*(a)⟩`` through the shared ArgminFunction with the given gradient mode."""
    a = a.detach().clone().requires_grad_(True)
    z = mode.apply(problem, (a,)).z
    (grad,) = torch.autograd.grad(z, a, g)
    return grad


TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-10)}


@functools.lru_cache(maxsize=None)
def _cached_forward_reference(name, kinks):
    a, _ = (kink_inputs if kinks else smooth_inputs)(name, torch.float64)
    if name == "softmax":
        a = 2 * a
    return a, _ref(name, a.numpy())


@functools.lru_cache(maxsize=None)
def _cached_quotient_reference(name, beta, base_beta):
    a, g = kink_inputs(name, torch.float64)
    return nudged_difference_quotient(name, a.numpy(), g.numpy(), beta, base_beta=base_beta,
                                      **REF_KW.get(name, {}))


# -- forward ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kinks", [True, False], ids=["kinks", "smooth"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_forward_equals_cvxpy(name, kinks, dtype, device):
    a64, z_ref = _cached_forward_reference(name, kinks)
    a = a64.to(dtype=dtype, device=device)
    z = Implicit().apply(PROBLEMS[name](), (a,)).z
    assert z.dtype == dtype and z.device.type == device.type and z.shape == a.shape
    # at kinks the QP reference itself is only accurate to ATOL_DEGENERATE (interior point at a
    # weakly active constraint, see declarative.reference.activations); float32: ~10 eps.
    tol = ATOL_DEGENERATE if kinks and name in PIECEWISE_LINEAR else ATOL[name]
    if dtype == torch.float32:
        tol = max(tol, 2e-6)
    np.testing.assert_allclose(z.double().cpu().numpy(), z_ref, atol=tol, rtol=0)
    if name in ("sparsemax", "softmax"):
        torch.testing.assert_close(z.sum(-1), torch.ones(a.shape[0], dtype=dtype, device=device))


def test_sparsemax_tie_rows_are_ties():
    """The hand-made rows really have a zero output at the threshold (so the kink tests test kinks)."""
    a, _ = kink_inputs("sparsemax", torch.float64)
    z = SparsemaxProblem().activation(a)
    tau = ((a - z) * (z > 0)).sum(-1, keepdim=True) / (z > 0).sum(-1, keepdim=True)
    ties = (z == 0) & (a == tau)
    assert ties[:4].any(-1).all(), ties


def test_sparsemax_dim_argument():
    a = torch.randn(2, 5, 3, dtype=torch.float64)
    g = torch.randn(2, 5, 3, dtype=torch.float64)
    p1, p_last = SparsemaxProblem(dim=1), SparsemaxProblem()
    z1 = p1.activation(a)
    torch.testing.assert_close(z1, p_last.activation(a.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(grad_input(p1, Implicit(), a, g),
                               grad_input(p_last, Implicit(), a.transpose(1, 2), g.transpose(1, 2)).transpose(1, 2))


# -- Implicit -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_implicit_gradcheck_away_from_kinks(name):
    a, _ = smooth_inputs(name, torch.float64)
    a = a[:2, :4].clone().requires_grad_(True)
    problem = PROBLEMS[name]()
    assert torch.autograd.gradcheck(lambda x: Implicit().apply(problem, (x,)).z, (a,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", PIECEWISE_LINEAR)
def test_implicit_at_kinks_equals_tiny_beta_contrastive(name):
    a, g = kink_inputs(name, torch.float64)
    assert distance_to_kink(name, a) == 0.0
    problem = PROBLEMS[name]()
    gi = grad_input(problem, Implicit(), a, g)
    gc = grad_input(problem, Contrastive(beta=1e-7), a, g)
    # exact for β below the distance of the non-kink coordinates (≥ 0.1); rounding: eps·|a|/β ≈ 1e-9
    torch.testing.assert_close(gi, gc, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", PIECEWISE_LINEAR)
def test_implicit_at_kinks_equals_cvxpy_difference_quotient(name, dtype, device):
    """−∇_a equals the difference quotient of cvxpy-solved nudged problems at exact kinks.

    ``(ẑ_β − z*)/β`` with β = 1e-2 is exact for the piecewise-linear maps here (every non-kink
    coordinate is ≥ 0.1 from a kink and |g| ≤ 1), but z* is degenerate, so the reference error is
    ATOL_DEGENERATE/β = 3e-4. ``(ẑ_{2β} − ẑ_β)/β`` is the same slope from two non-degenerate
    solves: error 2·ATOL/β = 2e-6.
    """
    a, g = kink_inputs(name, dtype)
    gi = grad_input(PROBLEMS[name](), Implicit(), a.to(device), g.to(device)).double().cpu().numpy()
    beta = 1e-2
    dz_free = _cached_quotient_reference(name, beta, 0.0)
    np.testing.assert_allclose(gi, -dz_free, atol=ATOL_DEGENERATE / beta, rtol=0)
    dz_shift = _cached_quotient_reference(name, beta, beta)
    np.testing.assert_allclose(gi, -dz_shift, atol=2 * ATOL[name] / beta, rtol=0)
    assert np.abs(gi).max() > 0.1  # not trivially zero


def test_relu_one_sided_rule_at_zero(dtype, device):
    """ReLU at a = 0 passes g iff g < 0 (``docs/guide/modes.md``); g where a > 0, 0 where a < 0."""
    a = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, -1.0, -1.0], dtype=dtype, device=device)
    g = torch.tensor([-2.0, 3.0, 0.0, -2.0, 3.0, -2.0, 3.0], dtype=dtype, device=device)
    gi = grad_input(ReLUProblem(), Implicit(), a, g)
    expected = torch.tensor([-2.0, 0.0, 0.0, -2.0, 3.0, 0.0, 0.0], dtype=dtype, device=device)
    assert torch.equal(gi, expected)


@pytest.mark.parametrize("lo, hi", [(LO, HI), (-1.0, 1.0), (0.0, 1.0)])
def test_box_one_sided_rule_at_both_bounds(lo, hi, dtype, device):
    """At a = lo only g < 0 passes (z moves up, into the box); at a = hi only g > 0."""
    mid = (lo + hi) / 2
    a = torch.tensor([lo, lo, hi, hi, mid, mid, lo - 1, hi + 1], dtype=dtype, device=device)
    g = torch.tensor([-2.0, 3.0, -2.0, 3.0, -2.0, 3.0, -2.0, 3.0], dtype=dtype, device=device)
    gi = grad_input(BoxProblem(lo, hi), Implicit(), a, g)
    expected = torch.tensor([-2.0, 0.0, 0.0, 3.0, -2.0, 3.0, 0.0, 0.0], dtype=dtype, device=device)
    assert torch.equal(gi, expected)
    # and the cvxpy difference quotient agrees (exact: every other point is ≥ 0.5 from a bound)
    # (shifted quotient: two non-degenerate solves, error ≤ 2·ATOL/β = 2e-6; exact slope since all
    # other points are ≥ 0.25 from a bound and 2β|g| ≤ 0.12)
    dz = nudged_difference_quotient("box", a.double().cpu().numpy(), g.double().cpu().numpy(), 1e-2,
                                    base_beta=1e-2, lo=lo, hi=hi)
    np.testing.assert_allclose(-dz, expected.double().cpu().numpy(), atol=2 * ATOL["box"] / 1e-2)


def test_sparsemax_weakly_active_by_cvxpy_backward_qp(dtype, device):
    """At ties the implicit tangent solves the backward QP on the simplex (weakly active
    coordinates may only enter the support); compared with that QP solved by cvxpy."""
    gen = torch.Generator().manual_seed(3)
    a, _ = kink_inputs("sparsemax", torch.float64)
    g = torch.randn(4, *a.shape, generator=gen, dtype=torch.float64)
    a_rep = a.expand(4, *a.shape).reshape(-1, a.shape[-1])
    g = g.reshape(-1, a.shape[-1])
    dz = simplex_backward_qp_reference(a_rep.numpy(), g.numpy())
    gi = grad_input(SparsemaxProblem(), Implicit(), a_rep.to(dtype=dtype, device=device),
                    g.to(dtype=dtype, device=device))
    tol = 1e-7 if dtype == torch.float64 else 2e-6  # QP accuracy ~1e-9; float32 rounding
    np.testing.assert_allclose(gi.double().cpu().numpy(), -dz, atol=tol, rtol=0)
    # the test exercises both outcomes at ties: some weakly active coordinates enter, some stay 0
    z = SparsemaxProblem().activation(a_rep)
    tau = ((a_rep - z) * (z > 0)).sum(-1, keepdim=True) / (z > 0).sum(-1, keepdim=True)
    ties = (z == 0) & (a_rep == tau)
    entered = ties & (torch.from_numpy(dz).abs() > 1e-6)
    assert entered.any() and (ties & ~entered).any()
    # and the classic (two-sided, support-only) Jacobian would be wrong at some of them
    support = z > 0
    classic = torch.where(support, g - (g * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True), 0)
    assert not np.allclose(classic.numpy(), -dz, atol=1e-4)


# -- Contrastive / Symmetric: the formulas of §3.3 ----------------------------------------------------
def _closed_form(name):
    return {
        "relu": torch.relu,
        "box": lambda x: torch.clamp(x, LO, HI),
        "sparsemax": SparsemaxProblem().activation,  # checked against cvxpy above
        "softmax": lambda x: torch.softmax(x, dim=-1),
    }[name]


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("beta", [0.05, 5.0])
def test_contrastive_and_symmetric_formulas(name, beta, dtype, device):
    a, g = kink_inputs(name, dtype)
    a, g = a.to(device), g.to(device)
    f = _closed_form(name)
    problem = PROBLEMS[name]()
    gc = grad_input(problem, Contrastive(beta), a, g)
    gs = grad_input(problem, Symmetric(beta), a, g)
    torch.testing.assert_close(gc, (f(a) - f(a - beta * g)) / beta, **TOL[dtype])
    torch.testing.assert_close(gs, (f(a + beta * g) - f(a - beta * g)) / (2 * beta), **TOL[dtype])
    # a large β really is a finite difference, not the derivative (the test can fail)
    if beta == 5.0:
        assert not torch.allclose(gc, grad_input(problem, Implicit(), a, g), atol=1e-3)


def _fit_slope(betas, errors):
    return np.polyfit(np.log(betas), np.log(errors), 1)[0]


def test_softmax_contrastive_rate_one_symmetric_rate_two():
    """Away from kinks (softmax is smooth) the bias is O(β) one-sided and O(β²) symmetric."""
    a, g = smooth_inputs("softmax", torch.float64)
    a = 2 * a
    problem = SoftmaxProblem()
    gi = grad_input(problem, Implicit(), a, g)
    betas = np.logspace(-3.5, -1.0, 6)
    err_c = [(grad_input(problem, Contrastive(b), a, g) - gi).abs().max().item() for b in betas]
    err_s = [(grad_input(problem, Symmetric(b), a, g) - gi).abs().max().item() for b in betas]
    slope_c, slope_s = _fit_slope(betas, err_c), _fit_slope(betas, err_s)
    assert abs(slope_c - 1) < 0.3, (slope_c, err_c)
    assert abs(slope_s - 2) < 0.3, (slope_s, err_s)
    assert err_s[0] < err_c[0]


@pytest.mark.parametrize("name", PIECEWISE_LINEAR)
def test_piecewise_linear_contrastive_exact_below_distance_to_kink(name):
    """For piecewise-linear activations the nudged solution stays on the same linear piece while
    β·|g| is below the distance to the next kink, so both contrastive modes equal Implicit exactly."""
    a, g = smooth_inputs(name, torch.float64)
    dist = distance_to_kink(name, a)
    assert dist >= 0.05
    problem = PROBLEMS[name]()
    gi = grad_input(problem, Implicit(), a, g)
    # sparsemax: the threshold itself moves by ≤ β·max|g|, so a coordinate moves by ≤ 2β·max|g|
    beta_max = dist / (2 * g.abs().max().item())
    for beta in (beta_max / 2, beta_max / 20, 1e-6):
        torch.testing.assert_close(grad_input(problem, Contrastive(beta), a, g), gi, atol=1e-9, rtol=0)
        torch.testing.assert_close(grad_input(problem, Symmetric(beta), a, g), gi, atol=1e-9, rtol=0)
    # far above the distance they differ
    assert not torch.allclose(grad_input(problem, Contrastive(50 * beta_max), a, g), gi, atol=1e-6)


def _random_tie_rows(n_rows=40, n=6, seed=0):
    """Rows with 1–3 support coordinates and 1–2 coordinates set to the (non-dyadic) threshold τ,
    so that the forward's rounding leaves some ties at a tiny positive z_i instead of 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        k, w = rng.integers(1, 4), rng.integers(1, 3)
        z, tau = rng.dirichlet(np.ones(k)), rng.normal()
        a = tau - 1.0 - rng.random(n)
        a[:k], a[k:k + w] = tau + z, tau
        rows.append(rng.permutation(a))
    return np.array(rows), rng.normal(size=(n_rows, n))


def test_sparsemax_rounded_ties_follow_the_one_sided_rule(dtype):
    """Regression: ties that the forward rounds to z_i ≈ 1e-17 > 0 were treated as strongly in the
    support (two-sided Jacobian), disagreeing with the backward QP and with Contrastive(β → 0⁺)."""
    A, G = _random_tie_rows()
    dz = simplex_backward_qp_reference(A, G)
    a = torch.tensor(A, dtype=dtype)
    z = SparsemaxProblem().activation(a)
    if dtype == torch.float64:
        assert bool(((z > 0) & (z < 1e-12)).any()), "no rounded tie: the regression is not exercised"
    gi = grad_input(SparsemaxProblem(), Implicit(), a, torch.tensor(G, dtype=dtype))
    tol = 1e-7 if dtype == torch.float64 else 1e-5  # QP accuracy / float32 rounding (|a| ≲ 4)
    np.testing.assert_allclose(gi.double().numpy(), -dz, atol=tol, rtol=0)
    if dtype == torch.float64:
        gc = grad_input(SparsemaxProblem(), Contrastive(1e-7), a, torch.tensor(G))
        torch.testing.assert_close(gi, gc, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_fused_implicit_vjp_equals_generic_tangent_path(name, dtype, device):
    """A problem may override ``implicit_vjp`` with a fused formula (ReLU does, for speed); it must
    equal the generic path ``−directional_derivative(a, z, −g)`` exactly (up to the sign of 0) at ±0,
    subnormal and huge inputs and g = 0 (this guards micro-optimisations of the hot path)."""
    from declarative.activations.base import ActivationProblem

    problem = PROBLEMS[name]()
    specials = torch.tensor([0.0, -0.0, 1e-310, -1e-310, 1e-30, -1e-30, 1e30, -1e30, LO, HI],
                            dtype=torch.float64)
    a = torch.cat([specials, torch.randn(22, dtype=torch.float64)]).reshape(4, 8).to(dtype=dtype, device=device)
    g = torch.cat([torch.tensor([-1.0, 1.0, 0.0, -0.0], dtype=torch.float64).repeat(2),
                   torch.randn(24, dtype=torch.float64)]).reshape(4, 8).to(dtype=dtype, device=device)
    a[2, :4] = 0.0  # kinks meeting every sign of g
    if name in ("sparsemax", "softmax"):
        a = a.clamp(-50, 50)
    sol = problem.solve((a,))
    fused = problem.implicit_vjp(sol, (a,), g, (True,))[0]
    generic = ActivationProblem.implicit_vjp(problem, sol, (a,), g, (True,))[0]
    torch.testing.assert_close(fused, generic, rtol=0, atol=0)


@pytest.mark.parametrize("name", PIECEWISE_LINEAR)
def test_symmetric_at_kinks_averages_the_one_sided_derivatives(name):
    """With D(u) = f'(a; u) the one-sided derivative, Implicit gives −D(−g) and, as β → 0⁺,
    Symmetric gives ½[D(g) − D(−g)] = ½[Implicit(g) − Implicit(−g)]: at a kink it averages the two
    sides instead of choosing the one of Implicit (e.g. ReLU at 0 passes g/2 for either sign)."""
    a, g = kink_inputs(name, torch.float64)
    problem = PROBLEMS[name]()
    expected = 0.5 * (grad_input(problem, Implicit(), a, g) - grad_input(problem, Implicit(), a, -g))
    gs = grad_input(problem, Symmetric(1e-7), a, g)
    torch.testing.assert_close(gs, expected, atol=1e-7, rtol=0)  # rounding eps·|a|/β ≈ 1e-9
    assert not torch.allclose(gs, grad_input(problem, Implicit(), a, g), atol=1e-3)
    if name == "relu":
        at0 = a == 0
        torch.testing.assert_close(gs[at0], g[at0] / 2, atol=1e-7, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [float("-inf"), -1e9])
def test_sparsemax_masked_entries_keep_the_support_jacobian(dtype, masked):
    """A masked entry (−inf or −1e9, as in masked attention) must not widen the weak-activity band:
    the implicit gradient is that of the support, here ∂z₁/∂a = (−½, ½, 0) (it was 0)."""
    a = torch.tensor([[1.0, 0.15, masked]], dtype=dtype)
    g = torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype)
    gi = grad_input(SparsemaxProblem(), Implicit(), a, g)
    torch.testing.assert_close(gi, torch.tensor([[-0.5, 0.5, 0.0]], dtype=dtype), atol=1e-6, rtol=0)
