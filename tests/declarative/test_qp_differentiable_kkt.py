"""Second derivatives through a QP (``create_graph=True``; ``declarative.qp.differentiable_kkt``).

Each checks the derivative of the gradient against central differences of the gradient itself
(the solution map is piecewise smooth: away from a change of active set, differences of 1e-6 are
exact to about 1e-8), or ``torch.autograd.gradgradcheck``. Before the KKT system on the active set
was re-expressed in torch ops, the multipliers and the factorisations were constants for autograd:
the derivatives of ∇_Q, ∇_G and ∇_A came out wrong without a warning (by 18-50 % and one sign)."""

import warnings

import pytest
import torch

import layers
from contrastive import EquilibriumProp
from declarative import solve_qp
from declarative.reference.qp import degenerate_qp, random_qp

F64 = dict(dtype=torch.float64)
NAMES = ("Q", "q", "G", "h", "A", "b")


def _gradient(data, i, x, loss, create_graph=False, **kw):
    """∇ of ``loss(z)`` with respect to the data's ``i``-th tensor, placed at ``x`` (``Q``
    symmetrised, so that a perturbation of ``Q`` is a QP's)."""
    d = list(data)
    d[i] = x
    if i == 0:
        d[0] = 0.5 * (x + x.transpose(-1, -2))
    z = solve_qp(*d, **kw).z
    return torch.autograd.grad(loss(z), x, create_graph=create_graph)[0]


def _second_derivative_and_differences(data, i, loss, eps=1e-6, **kw):
    """``⟨V, ∂(⟨∇, V⟩)⟩`` by double backward, and by central differences of ``⟨∇, V⟩`` along ``V``."""
    x0 = data[i]
    V = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), **F64)
    x = x0.clone().requires_grad_(True)
    (hv,) = torch.autograd.grad((_gradient(data, i, x, loss, True, **kw) * V).sum(), x)
    plus, minus = ((_gradient(data, i, (x0 + s * eps * V).requires_grad_(True), loss, **kw) * V).sum()
                   for s in (1, -1))
    return (hv * V).sum(), (plus - minus) / (2 * eps)


@pytest.mark.parametrize("B", [None, 1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_implicit_second_derivatives_equal_differences_of_the_gradient(B, name):
    """Every parameter, unbatched (the active-set path at one problem) and batched (the
    interior-point path); a loss quadratic in z, so that the cotangent depends on θ too."""
    data = list(random_qp(B, 4, 5, 1, seed=1))
    W = torch.randn(data[1].shape, generator=torch.Generator().manual_seed(5), **F64)
    an, fd = _second_derivative_and_differences(data, NAMES.index(name), lambda z: (W * z ** 2).sum())
    torch.testing.assert_close(an, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B", [None, 3])
@pytest.mark.parametrize("mode", ["contrastive", "symmetric", "equilibrium"])
@pytest.mark.parametrize("name", ["Q", "G", "A"])
def test_contrastive_second_derivatives_are_those_of_the_surrogate(B, mode, name):
    """The contrastive modes' gradient is a finite-β surrogate; its own derivative (nudged
    solutions re-expressed on their active sets) equals differences of the surrogate. A loss linear
    in z: a quadratic one would also differentiate z through the surrogate (its O(β) bias)."""
    data = list(random_qp(B, 4, 5, 1, seed=1))
    W = torch.randn(data[1].shape, generator=torch.Generator().manual_seed(5), **F64)
    kw = dict(mode=EquilibriumProp(1e-2)) if mode == "equilibrium" else dict(mode=mode, beta=1e-2)
    an, fd = _second_derivative_and_differences(data, NAMES.index(name), lambda z: (W * z).sum(), **kw)
    torch.testing.assert_close(an, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B", [1, 3])
def test_gradgradcheck_of_every_parameter(B, device):
    """All six parameters at once: the mixed second derivatives and those with respect to the
    cotangent too."""
    data = [t.to(device).requires_grad_(True) for t in random_qp(B, 4, 5, 2, seed=2)]

    def f(Q, q, G, h, A, b):
        return solve_qp(0.5 * (Q + Q.transpose(-1, -2)), q, G, h, A, b).z
    assert torch.autograd.gradgradcheck(f, data)


def test_float32_second_derivatives_agree_with_float64():
    data = random_qp(3, 4, 5, 1, seed=3)
    W = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), **F64)

    def hvp(dtype, i):
        d = [t.to(dtype) for t in data]
        x = d[i].clone().requires_grad_(True)
        g = _gradient(d, i, x, lambda z: (W.to(dtype) * z ** 2).sum(), create_graph=True)
        return torch.autograd.grad(g.sum(), x)[0].double()
    for i in (0, 2, 4):
        exact = hvp(torch.float64, i)
        torch.testing.assert_close(hvp(torch.float32, i), exact, rtol=0, atol=1e-5 * exact.abs().max().item())


def test_a_weakly_active_element_gets_zero_second_derivatives_and_a_warning():
    """Element 0: the unconstrained minimiser lies on its constraint (λ = 0, slack 0, a kink of
    the solution map); element 1: the constraint strongly active. Element 0's second derivatives
    are zero with a warning naming it (its tangent, from the backward QP, is a constant); its
    gradient, and element 1's second derivatives, are exact (equal to element 1 solved alone)."""
    Q = torch.eye(2, **F64)
    q = torch.tensor([[-1.0, 0.5], [-3.0, 0.5]], **F64)
    G = torch.tensor([[1.0, 0.0]], **F64)
    h = torch.tensor([1.0], **F64)

    def run(q_, create_graph):
        G_ = G.clone().requires_grad_(True)
        z = solve_qp(Q, q_, G_, h).z
        (gG,) = torch.autograd.grad((z ** 2).sum(), G_, create_graph=create_graph)
        return G_, gG
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a first-order use of a graph-building backward: no warning
        G_, gG = run(q, True)
    with pytest.warns(RuntimeWarning, match=r"weakly active.*batch indices \[0\]"):
        (hvp,) = torch.autograd.grad(gG.sum(), G_)   # the second derivative: the warning
    _, first = run(q, False)
    torch.testing.assert_close(gG.detach(), first)
    G1, g1 = run(q[1:], True)
    (hvp1,) = torch.autograd.grad(g1.sum(), G1)
    torch.testing.assert_close(hvp, hvp1)


def test_cvxpy_layer_second_derivatives_equal_differences_of_the_gradient():
    cp = pytest.importorskip("cvxpy")
    x = cp.Variable(3)
    P, c, h = cp.Parameter((2, 3)), cp.Parameter(3), cp.Parameter(2)
    layer = layers.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x) + c @ x), [P @ x <= h]), [P, c, h], [x])
    gen = torch.Generator().manual_seed(0)
    Pv, cv, hv = torch.randn(4, 2, 3, generator=gen, **F64), torch.randn(4, 3, generator=gen, **F64), \
        torch.full((4, 2), 0.1, **F64)

    def grad_of(Pt, create_graph=False):
        (z,) = layer(Pt, cv, hv)
        return torch.autograd.grad((z ** 3).sum(), Pt, create_graph=create_graph)[0]
    V = torch.randn(Pv.shape, generator=gen, **F64)
    Pr = Pv.clone().requires_grad_(True)
    an = (torch.autograd.grad((grad_of(Pr, True) * V).sum(), Pr)[0] * V).sum()
    eps = 1e-6
    fd = ((grad_of((Pv + eps * V).requires_grad_(True)) - grad_of((Pv - eps * V).requires_grad_(True))) * V).sum() / (2 * eps)
    torch.testing.assert_close(an, fd, rtol=1e-6, atol=1e-8)


def test_a_singular_kkt_system_gives_zero_second_derivatives_not_an_error_or_nan():
    """Equality rows repeated (``A`` of rank ``p`` in ``2p`` rows): the KKT system on the active
    set is singular. The elements get zero second derivatives (a loss linear in z) and a warning;
    before, the backward of the differentiable solve raised ``linalg.solve: singular`` (implicit)
    or returned NaN (contrastive), and a NaN through a shared parameter reaches every element."""
    Q, q, G, h, A, b = random_qp(3, 4, 5, 1, seed=1)
    A2, b2 = torch.cat([A, A], -2), torch.cat([b, b], -1)
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), **F64)
    for kw in (dict(), dict(mode="contrastive", beta=1e-2)):
        x = G.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((solve_qp(Q, q, x, h, A2, b2, **kw).z * w).sum(), x, create_graph=True)
        with pytest.warns(RuntimeWarning, match="singular KKT system"):
            (hv,) = torch.autograd.grad((g ** 2).sum(), x)
        assert (hv == 0).all()


def test_an_unbounded_element_does_not_break_the_others_second_derivatives():
    """A shared singular ``Q``; element 1 is unbounded (DUAL_INFEASIBLE, ``check=False``): its
    zero derivatives do not stop element 0's, which equal those of element 0 solved alone."""
    Q0 = torch.diag(torch.tensor([1.0, 0.0], **F64))
    q = torch.tensor([[1.0, -1.0], [1.0, 1.0]], **F64)
    G = torch.tensor([[0.0, 1.0]], **F64)
    h = torch.tensor([2.0], **F64)
    w = torch.tensor([1.0, 2.0], **F64)

    def hvp(q_):
        Q = Q0.clone().requires_grad_(True)
        sol = solve_qp(Q, q_, G, h, check=False)
        (g,) = torch.autograd.grad(((sol.z[0] * w) ** 2).sum(), Q, create_graph=True)
        return sol.status, torch.autograd.grad((g ** 2).sum(), Q)[0]
    status, hv = hvp(q)
    assert status.tolist() == [0, int(solve_qp(Q0, q[1], G, h, check=False).status)] and int(status[1]) != 0
    torch.testing.assert_close(hv, hvp(q[:1])[1])
    assert hv.abs().max() > 0


@pytest.mark.parametrize("B", [2, 3])
def test_several_weakly_active_elements_get_zero_second_derivatives(B):
    """Every element with weakly active rows (``degenerate_qp``): their tangents come from the
    backward QP, which is now solved as data, and their solution maps' second-order terms are zero
    (zero second derivatives for a loss linear in z); before, autograd raised "modified by an
    inplace operation" from inside it whenever the cotangent depended on θ."""
    Q, q, G, h = degenerate_qp(B)[:4]
    x = G.clone().requires_grad_(True)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), **F64)
    (g,) = torch.autograd.grad((solve_qp(Q, q, x, h).z * w).sum(), x, create_graph=True)
    with pytest.warns(RuntimeWarning, match="weakly active"):
        (hv,) = torch.autograd.grad((g ** 2).sum(), x)
    assert (hv == 0).all()


def test_first_order_grad_under_torch_func_does_not_warn():
    """``torch.func.grad`` runs every backward as one that builds a graph; a first-order use with
    weakly active elements (zero second-order terms) gives autograd's gradient and no warning —
    the warning waits for a derivative of that gradient."""
    Q, q, G, h = degenerate_qp(3)[:4]
    f = lambda x: (solve_qp(Q, q, x, h).z ** 2).sum()   # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = torch.func.grad(f)(G)
    x = G.clone().requires_grad_(True)
    torch.testing.assert_close(g, torch.autograd.grad(f(x), x)[0], rtol=0, atol=0)


def test_dropped_second_derivatives_are_zero_with_respect_to_every_parameter():
    """All elements weakly active and a loss linear in z: the gradient with respect to ``G`` has
    no second-order terms left, and its derivative with respect to ``h`` (another input) is zero
    — before, autograd said ``h`` was not used in the graph."""
    Q, q, G, h = degenerate_qp(2)[:4]
    G_, h_ = G.clone().requires_grad_(True), h.clone().requires_grad_(True)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), **F64)
    (gG,) = torch.autograd.grad((solve_qp(Q, q, G_, h_).z * w).sum(), G_, create_graph=True)
    with pytest.warns(RuntimeWarning, match="weakly active"):
        dG, dh = torch.autograd.grad(gG.sum(), (G_, h_))
    assert (dG == 0).all() and (dh == 0).all()


def test_at_a_weakly_active_constraint_the_derivative_through_the_cotangent_is_kept():
    """Element 0 has its unconstrained minimiser on its constraint ``z₁ ≤ 1``; along ``q₂`` the
    solution map is smooth (``z₂ = −q₂``), and ``ℓ = ‖z‖²`` has ``∂²ℓ/∂q₂² = 2`` — through the
    cotangent ``g = 2z`` and the backward QP's tangent, linear in ``g`` on its own active set.
    Before, that element's whole derivative was dropped (0 with a warning)."""
    Q, G, h = torch.eye(2, **F64), torch.tensor([[1.0, 0.0]], **F64), torch.tensor([1.0], **F64)
    q0 = torch.tensor([[-1.0, 0.5], [-3.0, 0.5]], **F64)

    def grad_q(q_, create_graph=False):
        q_ = q_.clone().requires_grad_(True)
        return q_, torch.autograd.grad((solve_qp(Q, q_, G, h).z ** 2).sum(), q_, create_graph=create_graph)[0]
    q, g = grad_q(q0, True)
    with pytest.warns(RuntimeWarning, match=r"weakly active.*batch indices \[0\]"):
        (d2,) = torch.autograd.grad(g[:, 1].sum(), q)
    e = torch.tensor([0.0, 1e-6], **F64)
    fd = (grad_q(q0 + e)[1][:, 1] - grad_q(q0 - e)[1][:, 1]) / 2e-6
    torch.testing.assert_close(d2[:, 1], fd, rtol=1e-6, atol=1e-8)
    assert abs(d2[0, 1].item() - 2.0) < 1e-9


@pytest.mark.parametrize("k, c", [(1.0, 1.0), (1.0, 1e-7), (1e8, 1.0)])
def test_derivative_through_the_cotangent_at_weakly_active_rows_is_scale_free(k, c):
    """``degenerate_qp`` (weakly active rows), loss ``c·Σ w·z``, data ``Q, q`` scaled by ``k``:
    ∂⟨Σ∇, 1⟩/∂w against central differences in w. With thresholds that had an absolute floor, a
    small cotangent (c = 1e-7) or a large objective (k = 1e8, equilibrated: the cotangent reaches
    the backward QP scaled down) picked the backward QP's active set wrong and gave 5.81 against
    0.923, without a warning."""
    Q0, q0, G, h = degenerate_qp(1)[:4]
    gen = torch.Generator().manual_seed(1)
    w0, U = torch.randn(q0.shape, generator=gen, **F64), torch.randn(q0.shape, generator=gen, **F64)

    def total(w, create_graph):
        ps = [t.clone().requires_grad_(True) for t in (Q0 * k, q0 * k, G, h)]
        grads = torch.autograd.grad((c * w * solve_qp(*ps).z).sum(), ps, create_graph=create_graph)
        return sum(a.sum() for a in grads)
    w = w0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # (the weakly active rows' dropped second-order terms)
        an = (torch.autograd.grad(total(w, True), w)[0] * U).sum() / c
    fd = (total(w0 + 1e-6 * U, False) - total(w0 - 1e-6 * U, False)) / 2e-6 / c
    torch.testing.assert_close(an, fd, rtol=1e-6, atol=1e-8)


def test_nested_torch_func_grad_at_a_weakly_active_row_keeps_the_cotangent_derivative():
    """Under ``torch.func`` the cotangent reads ``requires_grad = False``; the derivative through
    it was dropped there (0.0 against −0.518 by differences, no warning)."""
    Q, q0, G, h = degenerate_qp(1)[:4]
    w0 = torch.randn(q0.shape, generator=torch.Generator().manual_seed(2), **F64)

    def inner(w):
        return torch.func.grad(lambda q_: (w * solve_qp(Q, q_, G, h).z).sum())(q0).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = torch.func.grad(inner)(w0)
    U = torch.randn(w0.shape, generator=torch.Generator().manual_seed(3), **F64)
    fd = (inner(w0 + 1e-6 * U) - inner(w0 - 1e-6 * U)) / 2e-6
    torch.testing.assert_close((d * U).sum(), fd, rtol=1e-6, atol=1e-8)
